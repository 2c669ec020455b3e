"""`transformers` pipelines on OPT-Tri checkpoints (see docs/PIPELINES.md for the tasks that cannot take one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import run_without_our_package, tiny_batch, tiny_config
from modeling_opt_tri import (
    OptTriFeatureExtractor,
    OptTriForConditionalGeneration,
    OptTriForPreTraining,
    OptTriForRetrieval,
    OptTriImageProcessor,
    OptTriProcessor,
)
from modeling_opt_tri.tokenizer_training import build_wordpiece_tokenizer

CORPUS = ["a red circle", "a blue square", "this is a photo of a red thing", "this is a sound of rain", "a dog"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A pre-training checkpoint with its processor, as examples/pretrain.py writes final/."""
    folder = tmp_path_factory.mktemp("pipeline_checkpoint")
    tokenizer = build_wordpiece_tokenizer(CORPUS, vocab_size=100)
    processor = OptTriProcessor(
        image_processor=OptTriImageProcessor(image_size=32), feature_extractor=OptTriFeatureExtractor(feature_size=16),
        tokenizer=tokenizer,
    )
    torch.manual_seed(0)
    OptTriForPreTraining(tiny_config()).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _tiny_processor() -> OptTriProcessor:
    return OptTriProcessor(
        image_processor=OptTriImageProcessor(image_size=32), feature_extractor=OptTriFeatureExtractor(feature_size=16),
        tokenizer=build_wordpiece_tokenizer(CORPUS, vocab_size=100),
    )


def test_generate_continues_a_processor_prompt_without_its_end_token():
    """The processor's `[CLS] text [SEP]` (with token_type_ids, as the image-text-to-text pipeline sends it) is
    continued from `[CLS] text`; token types other than 0 are refused by name."""
    torch.manual_seed(0)
    model = OptTriForConditionalGeneration(tiny_config()).eval()
    inputs = _tiny_processor()(images=[np.zeros((32, 32, 3), dtype=np.uint8)], text=["a red"], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    open_prompt = model.generate(
        pixel_values=inputs["pixel_values"], image_mask=inputs["image_mask"], input_ids=inputs["input_ids"][:, :-1],
        max_new_tokens=3, do_sample=False,
    )
    assert inputs["input_ids"][0, -1] == 3 and torch.equal(out, open_prompt)
    with pytest.raises(ValueError, match="token_type_ids must be all zeros"):
        model.generate(**{**inputs, "token_type_ids": torch.ones_like(inputs["input_ids"])}, max_new_tokens=2)


@pytest.mark.slow
def test_image_text_to_text_pipeline_captions_from_a_folder_without_our_package(tmp_path):
    """`image-text-to-text` (and its old name `image-to-text`) from a captioning folder, with a text prompt and an
    empty one: the text is what the folder's model.generate + tokenizer.decode give for the same image and prompt."""
    folder = tmp_path / "captioner"
    torch.manual_seed(0)
    OptTriForConditionalGeneration(tiny_config()).save_pretrained(folder)
    _tiny_processor().save_pretrained(folder)
    body = f"""
    import numpy as np, torch
    from PIL import Image
    from transformers import pipeline

    image = Image.fromarray(np.full((40, 40, 3), (200, 20, 20), dtype=np.uint8))
    settings = dict(max_new_tokens=6, generate_kwargs=dict(do_sample=False))
    results = {{}}
    for task in ("image-text-to-text", "image-to-text"):
        pipe = pipeline(task, model={str(folder)!r}, trust_remote_code=True)
        for prompt in ("a red", ""):
            text = pipe(image, text=prompt, **settings)[0]["generated_text"]
            inputs = pipe.processor(images=[image], text=[prompt], return_tensors="pt")
            with torch.no_grad():
                ids = pipe.model.generate(**inputs, max_new_tokens=6, do_sample=False)
            results[(task, prompt)] = (text, pipe.processor.tokenizer.decode(ids[0], skip_special_tokens=True))
    torch.save({{"model_class": type(pipe.model).__name__, "results": results}}, "outputs.pt")
    """
    out = run_without_our_package(body, tmp_path)
    assert out["model_class"] == "OptTriForConditionalGeneration"
    for (task, prompt), (text, expected) in out["results"].items():
        assert text == expected and text.startswith(prompt) and len(text) > len(prompt), (task, prompt, text, expected)


def test_retrieval_scores_unpaired_batches_with_clip_style_logits():
    """Without return_loss, Q queries score against G gallery items (what the zero-shot pipelines send), with the
    logits also named per modality; the gallery modality follows the inputs."""
    model = OptTriForRetrieval(tiny_config()).eval()
    data = tiny_batch(batch=3)
    with torch.no_grad():
        out = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"], pixel_values=data["pixel_values"][:1])
        audio = model(input_ids=data["input_ids"], input_features=data["input_features"][:2])
        paired = model(**data)
    assert out.logits_per_text.shape == (3, 1) and torch.equal(out.logits_per_image, out.logits_per_text.t())
    assert torch.equal(out.logits_per_text, out.logits_per_query)
    assert audio.logits_per_audio.shape == (2, 3) and audio.logits_per_image is None
    torch.testing.assert_close(out.logits_per_text[:, 0], paired.logits_per_query[:, 0])
    with pytest.raises(ValueError, match="batch sizes"):
        model(input_ids=data["input_ids"], pixel_values=data["pixel_values"][:1], return_loss=True)


@pytest.mark.slow
def test_pipelines_load_a_checkpoint_folder_without_our_package(checkpoint, tmp_path):
    """feature-extraction and zero-shot-image-classification from the folder, zero-shot-audio-classification from
    the dual encoder instance, in a process where only the folder's remote code is available; the scores are the
    softmax of the dual encoder's logits."""
    body = f"""
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoFeatureExtractor, AutoTokenizer, pipeline
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    folder = {str(checkpoint)!r}
    image = Image.fromarray(np.full((40, 40, 3), (200, 20, 20), dtype=np.uint8))
    labels = ["red", "blue", "dog"]
    zero_shot = pipeline("zero-shot-image-classification", model=folder, trust_remote_code=True)
    image_scores = {{r["label"]: r["score"] for r in zero_shot(image, candidate_labels=labels)}}
    model = zero_shot.model
    texts = zero_shot.tokenizer([f"This is a photo of {{x}}." for x in labels], return_tensors="pt", padding=True)
    pixels = zero_shot.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(**texts, pixel_values=pixels).logits_per_image.softmax(-1)[0]

    features = pipeline("feature-extraction", model=folder, trust_remote_code=True)
    states = np.array(features("a red circle"))
    tokens = features.tokenizer("a red circle", return_tensors="pt")
    with torch.no_grad():
        reference = features.model(**tokens).last_hidden_state

    retrieval = get_class_from_dynamic_module("modeling_opt_tri.OptTriForRetrieval", folder).from_pretrained(folder)
    audio_pipe = pipeline(
        "zero-shot-audio-classification", model=retrieval, tokenizer=AutoTokenizer.from_pretrained(folder),
        feature_extractor=AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True),
    )
    clip = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    audio_scores = {{r["label"]: r["score"] for r in audio_pipe(clip, candidate_labels=["rain", "dog"])}}
    torch.save({{
        "model_class": type(model).__name__, "image_scores": torch.tensor([image_scores[x] for x in labels]),
        "expected": expected, "states": torch.tensor(states), "reference": reference,
        "audio_scores": torch.tensor(list(audio_scores.values())),
    }}, "outputs.pt")
    """
    out = run_without_our_package(body, tmp_path)
    assert out["model_class"] == "OptTriForRetrieval"
    torch.testing.assert_close(out["image_scores"].double(), out["expected"].double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["states"].float(), out["reference"], atol=1e-6, rtol=0)  # the cross-modal states
    assert torch.isclose(out["audio_scores"].sum(), torch.tensor(1.0), atol=1e-5)


def test_zero_shot_audio_from_a_folder_is_refused_with_a_clear_error(checkpoint):
    """The zero-shot audio pipeline loads `AutoModel`, which is the cross-modal OptTriModel: its forward fuses the
    rows of one batch, so one clip against several label texts is refused by name (docs/PIPELINES.md)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(checkpoint)
    data = tiny_batch(batch=2)
    with pytest.raises(ValueError, match="batch sizes of the modalities do not match"):
        model(input_ids=data["input_ids"], input_features=data["input_features"][:1])
    assert np.isfinite(model(input_ids=data["input_ids"]).last_hidden_state.detach().numpy()).all()
