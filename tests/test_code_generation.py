"""Image and audio code decoders (`OptTriForTextToImage`, `OptTriForTextToAudio`): config, teacher forcing, cached ==
uncached greedy decoding, seeded sampling, top-k/top-p, decoding through the VQ tokenizers, save/load, the Auto
classes, the remote-code path and the errors for bad inputs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForMultimodalLM, AutoModelForTextToWaveform

from conftest import run_without_our_package, tiny_batch, tiny_config
from modeling_opt_tri import (
    OptTriCodeDecoderConfig,
    OptTriConfig,
    OptTriForPreTraining,
    OptTriForTextToAudio,
    OptTriForTextToImage,
)
from modeling_opt_tri.configuration_opt_tri_vq import OptTriAudioVQConfig, OptTriImageVQConfig
from modeling_opt_tri.modeling_opt_tri_vq import OptTriAudioVQModel, OptTriImageVQModel

GEOMETRY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
IMAGE = dict(codebook_size=16, grid_size=4, **GEOMETRY)  # 16 codes per image, 16 + 3 ids
AUDIO = dict(codebook_size=12, num_codes=10, **GEOMETRY)  # at most 10 codes per clip, 12 + 3 ids


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**overrides) -> OptTriConfig:
    return tiny_config(image_decoder_config=dict(IMAGE), audio_decoder_config=dict(AUDIO), **overrides)


def _image_model(seed: int = 0) -> OptTriForTextToImage:
    torch.manual_seed(seed)
    return OptTriForTextToImage(_config()).eval()


def _audio_model(seed: int = 0) -> OptTriForTextToAudio:
    torch.manual_seed(seed)
    return OptTriForTextToAudio(_config()).eval()


def _text(batch: int = 4) -> dict[str, torch.Tensor]:
    inputs = tiny_batch(batch)
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


def _image_tokenizer(**overrides) -> OptTriImageVQModel:
    kwargs = dict(image_size=16, downsample=4, codebook_size=16, embedding_dim=8, hidden_channels=8,
                  channel_multipliers=[1, 1], num_res_blocks=1)
    kwargs.update(overrides)
    torch.manual_seed(0)
    return OptTriImageVQModel(OptTriImageVQConfig(**kwargs)).eval()


def _favour(model, token_id: int, score: float) -> None:
    """Make the logit of `token_id` about `score * hidden_size` at every position: the final LayerNorm's output gets
    a constant component of 1 (its bias), and the head row of `token_id` reads only that component."""
    with torch.no_grad():
        model.code_decoder.layer_norm.bias.fill_(1.0)
        model.code_head.weight[token_id] = score


def _audio_tokenizer(**overrides) -> OptTriAudioVQModel:
    kwargs = dict(num_mel_bins=16, frames_per_code=2, codebook_size=12, embedding_dim=8, hidden_channels=16,
                  num_res_blocks=1, sampling_rate=8000, n_fft=128, hop_length=64, griffin_lim_iters=4,
                  mel_inversion_iters=4)
    kwargs.update(overrides)
    torch.manual_seed(0)
    return OptTriAudioVQModel(OptTriAudioVQConfig(**kwargs)).eval()


# ----------------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------------


def test_config_defaults_special_ids_and_round_trip():
    config = OptTriConfig()
    image, audio = config.image_decoder_config, config.audio_decoder_config
    assert (image.modality, image.codebook_size, image.grid_size, image.num_codes) == ("image", 8192, 28, 784)
    assert (image.bos_token_id, image.eos_token_id, image.pad_token_id, image.vocab_size) == (8192, 8193, 8194, 8195)
    assert image.max_position_embeddings == 785 and image.hidden_size == config.cross_modal_config.hidden_size
    assert (audio.modality, audio.codebook_size, audio.num_codes, audio.grid_size) == ("audio", 1024, 256, None)
    small = _config()
    assert small.image_decoder_config.num_codes == 16 and small.audio_decoder_config.vocab_size == 15
    again = OptTriConfig.from_dict(small.to_dict())
    for name in ("image_decoder_config", "audio_decoder_config"):
        assert getattr(again, name).to_dict() == getattr(small, name).to_dict()
    # a config.json written before the code decoders existed loads with the defaults
    old = small.to_dict()
    del old["image_decoder_config"], old["audio_decoder_config"]
    legacy = OptTriConfig.from_dict(old)
    assert legacy.image_decoder_config.grid_size == 32 // 8  # vision image_size / 8
    assert legacy.audio_decoder_config.num_codes == 64 * 4 // 4  # audio positions * patch_frames / 4
    assert legacy.image_decoder_config.hidden_size == legacy.cross_modal_config.hidden_size
    # the attention implementation reaches the code decoders (they are sub-configs)
    small._attn_implementation = "eager"
    assert small.image_decoder_config._attn_implementation == "eager"


def test_the_tiny_preset_matches_the_tiny_tokenizers():
    config = OptTriConfig.from_pretrained(os.path.join(os.path.dirname(__file__), "..", "configuration", "tiny"))
    assert config.image_decoder_config.codebook_size == 512 and config.image_decoder_config.grid_size == 8
    assert config.audio_decoder_config.codebook_size == 256 and config.audio_decoder_config.num_codes == 64


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(modality="video"), "modality"),
        (dict(num_attention_heads=5), "divisible"),
        (dict(grid_size=4, num_codes=15), "grid_size"),
        (dict(num_codes=15), "square"),
        (dict(codebook_size=1), "at least 2"),
        (dict(codebook_size="16"), "positive int"),
        (dict(grid_size=4, max_position_embeddings=16), "num_codes \\+ 1"),
        (dict(codebook_size=16, vocab_size=16), "vocab_size"),
        (dict(codebook_size=16, bos_token_id=0), "bos_token_id"),
        (dict(modality="audio", grid_size=4), "grid_size is for images"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OptTriCodeDecoderConfig(**dict(dict(hidden_size=32, num_attention_heads=2), **kwargs))


def test_composite_config_checks_the_modality():
    with pytest.raises(ValueError, match="must be 'image'"):
        tiny_config(image_decoder_config=dict(AUDIO, modality="audio"))
    with pytest.raises(ValueError, match="modality='audio'"):
        tiny_config(audio_decoder_config=OptTriCodeDecoderConfig(**IMAGE))
    with pytest.raises(TypeError, match="dict or an OptTriCodeDecoderConfig"):
        tiny_config(image_decoder_config=[1, 2])


# ----------------------------------------------------------------------------------------------------------------------
# Teacher forcing
# ----------------------------------------------------------------------------------------------------------------------


def _overfit(model, labels, steps: int, **labels_kwargs) -> tuple[float, float]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    text = _text(labels.shape[0])
    first = last = None
    for _ in range(steps):
        loss = model(**text, labels=labels, **labels_kwargs).loss
        first = loss.item() if first is None else first
        last = loss.item()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return first, last


def test_image_teacher_forcing_loss_falls_and_greedy_decoding_recalls_the_codes():
    model = _image_model()
    labels = torch.randint(0, 16, (4, 4, 4), generator=torch.Generator().manual_seed(1))
    out = model(**_text(), labels=labels)
    assert out.logits.shape == (4, 16, 19) and torch.isfinite(out.loss)
    # flat raster-order labels are the same as the grid
    assert torch.allclose(model(**_text(), labels=labels.flatten(1)).loss, out.loss)
    first, last = _overfit(model, labels, steps=60)
    assert last < first * 0.3, (first, last)
    generated = model.generate(**_text(), do_sample=False)
    assert (generated.codes == labels).float().mean() > 0.9
    assert generated.codes_mask.bool().all()


def test_audio_teacher_forcing_learns_lengths_and_the_end_code():
    model = _audio_model()
    codes = torch.randint(0, 12, (4, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 3:] = 0  # clip 1 has 3 codes, clip 3 has 5
    mask[3, 5:] = 0
    out = model(**_text(), labels=codes, labels_mask=mask)
    assert out.logits.shape == (4, 7, 15)  # the 6 codes and the end code
    # labels_mask 0 is the same as -100
    assert torch.allclose(model(**_text(), labels=codes.masked_fill(mask == 0, -100)).loss, out.loss)
    first, last = _overfit(model, codes, steps=80, labels_mask=mask)
    assert last < first * 0.3, (first, last)
    generated = model.generate(**_text(), do_sample=False)
    assert generated.codes_mask.sum(-1).tolist() == [6, 3, 6, 5]
    assert generated.codes.shape == (4, 6)  # the longest clip
    assert torch.equal(generated.codes * generated.codes_mask, codes * mask)
    assert generated.sequences[1, 4] == model.config.audio_decoder_config.eos_token_id


# ----------------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------------


def _manual_greedy(model, text, steps: int) -> torch.Tensor:
    """Greedy decoding with plain forward calls and no cache, over the real codes (and the end code for audio)."""
    dc = model.decoder_config
    ids = torch.full((text["input_ids"].shape[0], 1), dc.bos_token_id)
    for _ in range(steps):
        logits = model(**text, decoder_input_ids=ids, use_cache=False).logits[:, -1]
        allowed = dc.codebook_size + (1 if dc.modality == "audio" else 0)
        ids = torch.cat([ids, logits[:, :allowed].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_cached_generate_equals_uncached_greedy_decode(modality):
    model = _image_model() if modality == "image" else _audio_model()
    text = _text()
    cached = model.generate(**text, do_sample=False)
    uncached = model.generate(**text, do_sample=False, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    manual = _manual_greedy(model, text, cached.sequences.shape[1] - 1)
    if modality == "image":
        assert torch.equal(cached.sequences, manual)
        assert cached.codes.shape == (4, 4, 4)
    else:  # rows that ended are padded in `generate`, but agree up to and including their end code
        eos = model.config.audio_decoder_config.eos_token_id
        for row in range(4):
            ended = (manual[row] == eos).nonzero()
            stop = int(ended[0]) + 1 if len(ended) else manual.shape[1]
            assert torch.equal(cached.sequences[row, :stop], manual[row, :stop])


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone(modality):
    model = _image_model() if modality == "image" else _audio_model()
    text = _text()
    state = torch.get_rng_state()
    a = model.generate(**text, seed=7, temperature=1.5)
    b = model.generate(**text, seed=7, temperature=1.5)
    c = model.generate(**text, seed=8, temperature=1.5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.sequences, b.sequences)
    assert not torch.equal(a.sequences, c.sequences)
    # seed=None samples from the global RNG, as torch does
    torch.manual_seed(3)
    d = model.generate(**text)
    torch.manual_seed(3)
    assert torch.equal(d.sequences, model.generate(**text).sequences)


def test_top_k_1_and_tiny_top_p_equal_greedy_and_samples_repeat_per_input():
    model = _image_model()
    text = _text()
    greedy = model.generate(**text, do_sample=False).codes
    assert torch.equal(model.generate(**text, top_k=1, seed=0).codes, greedy)
    assert torch.equal(model.generate(**text, top_p=1e-6, seed=1).codes, greedy)
    assert torch.equal(model.generate(**text, do_sample=False, num_return_sequences=2).codes, greedy.repeat_interleave(2, 0))
    sampled = model.generate(**text, top_k=3, top_p=0.9, seed=0, num_return_sequences=3).codes
    assert sampled.shape == (12, 4, 4)


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_special_ids_are_never_emitted_as_codes(modality):
    model = _image_model() if modality == "image" else _audio_model()
    dc = model.decoder_config
    _favour(model, dc.bos_token_id, 10.0)  # BOS and PAD are by far the most likely ids
    _favour(model, dc.pad_token_id, 10.0)
    start = torch.full((4, 1), dc.bos_token_id)
    assert model(**_text(), decoder_input_ids=start).logits[..., dc.bos_token_id].min() > 100
    for kwargs in (dict(do_sample=False), dict(seed=0, temperature=5.0)):
        out = model.generate(**_text(), **kwargs)
        assert int(out.codes.max()) < dc.codebook_size and int(out.codes.min()) >= 0
        generated = out.sequences[:, 1:]
        assert not bool((generated == dc.bos_token_id).any())
        if modality == "image":
            assert int(generated.max()) < dc.codebook_size


def test_audio_length_limits():
    model = _audio_model()
    dc = model.config.audio_decoder_config
    _favour(model, dc.eos_token_id, 10.0)  # the end code is by far the most likely id
    out = model.generate(**_text(), do_sample=False, min_new_codes=3)
    assert out.codes_mask.sum(-1).tolist() == [3, 3, 3, 3] and out.codes.shape == (4, 3)
    _favour(model, dc.eos_token_id, -10.0)  # the end code never comes
    out = model.generate(**_text(), do_sample=False, max_new_codes=5)
    assert out.codes.shape == (4, 5) and out.codes_mask.bool().all()


def test_generate_images_returns_pil_images_of_the_tokenizer_size():
    model = _image_model()
    tokenizer = _image_tokenizer()
    images = model.generate_images(**_text(2), image_tokenizer=tokenizer, seed=0, top_k=5)
    assert len(images) == 2 and all(isinstance(image, Image.Image) for image in images)
    assert all(image.size == (16, 16) and image.mode == "RGB" for image in images)
    images, out = model.generate_images(**_text(2), image_tokenizer=tokenizer, seed=0, top_k=5, return_codes=True)
    expected = tokenizer.to_pil(tokenizer.decode(out.codes))
    assert [np.asarray(a).tolist() for a in images] == [np.asarray(b).tolist() for b in expected]


def test_generate_audio_returns_float32_waveforms_and_the_rate():
    model = _audio_model()
    tokenizer = _audio_tokenizer()
    waveforms, rate, out = model.generate_audio(**_text(2), audio_tokenizer=tokenizer, seed=0, return_codes=True)
    assert rate == 8000 and len(waveforms) == 2
    frames = out.codes_mask.sum(-1) * tokenizer.config.frames_per_code
    for waveform, count in zip(waveforms, frames.tolist()):
        assert isinstance(waveform, np.ndarray) and waveform.dtype == np.float32 and waveform.ndim == 1
        assert len(waveform) == (count - 1) * tokenizer.config.hop_length and np.isfinite(waveform).all()
    again, _ = model.generate_audio(**_text(2), audio_tokenizer=tokenizer, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(waveforms, again))
    assert int(out.codes_mask.sum(-1).min()) >= 2  # the fewest codes (3 frames) this tokenizer's STFT can analyse
    with pytest.raises(ValueError, match="too short for Griffin-Lim"):
        model.generate_audio(**_text(2), audio_tokenizer=tokenizer, min_new_codes=1)


def test_other_conditioning_modalities():
    model = _audio_model()
    inputs = tiny_batch(2)
    out = model.generate(pixel_values=inputs["pixel_values"], seed=0)  # image-to-audio
    assert out.codes.shape[0] == 2
    loss = _image_model()(input_features=inputs["input_features"], audio_attention_mask=inputs["audio_attention_mask"],
                          labels=torch.zeros(2, 16, dtype=torch.long)).loss
    assert torch.isfinite(loss)


# ----------------------------------------------------------------------------------------------------------------------
# Save / load / Auto classes / remote code
# ----------------------------------------------------------------------------------------------------------------------


def test_save_load_round_trip_and_auto_classes(tmp_path):
    labels = torch.randint(0, 16, (4, 16), generator=torch.Generator().manual_seed(0))
    for model, auto, name in ((_image_model(), AutoModelForMultimodalLM, "image"),
                              (_audio_model(), AutoModelForTextToWaveform, "audio")):
        labels = labels if name == "image" else labels[:, :6] % 12
        model.save_pretrained(tmp_path / name)
        auto_map = json.loads((tmp_path / name / "config.json").read_text())["auto_map"]
        assert auto_map["AutoModelForMultimodalLM"] == "modeling_opt_tri.OptTriForTextToImage"
        assert auto_map["AutoModelForTextToWaveform"] == "modeling_opt_tri.OptTriForTextToAudio"
        loaded = type(model).from_pretrained(tmp_path / name).eval()
        by_auto = auto.from_pretrained(tmp_path / name).eval()
        assert type(by_auto) is type(model)
        expected = model(**_text(), labels=labels).logits
        assert torch.equal(loaded(**_text(), labels=labels).logits, expected)
        assert torch.equal(by_auto(**_text(), labels=labels).logits, expected)
        assert torch.equal(loaded.generate(**_text(), seed=0).sequences, model.generate(**_text(), seed=0).sequences)


def test_a_pretraining_checkpoint_loads_into_the_code_generators(tmp_path):
    torch.manual_seed(0)
    pretraining = OptTriForPreTraining(_config())
    pretraining.save_pretrained(tmp_path)
    model = OptTriForTextToImage.from_pretrained(tmp_path)
    source = pretraining.opt_tri.state_dict()
    for key, value in model.opt_tri.state_dict().items():
        assert torch.equal(value, source[key]), key


@pytest.mark.slow
def test_trust_remote_code_in_a_fresh_process(tmp_path):
    image, audio = _image_model(), _audio_model()
    image.save_pretrained(tmp_path / "image")
    audio.save_pretrained(tmp_path / "audio")
    text = _text()
    torch.save(text, tmp_path / "inputs.pt")
    body = (
        f"""
        import torch
        from transformers import AutoModelForMultimodalLM, AutoModelForTextToWaveform
        torch.set_num_threads(1)
        text = torch.load({str(tmp_path / "inputs.pt")!r})
        image = AutoModelForMultimodalLM.from_pretrained({str(tmp_path / "image")!r}, trust_remote_code=True).eval()
        audio = AutoModelForTextToWaveform.from_pretrained({str(tmp_path / "audio")!r}, trust_remote_code=True).eval()
        assert type(image).__module__.startswith("transformers_modules."), type(image).__module__
        assert type(audio).__module__.startswith("transformers_modules."), type(audio).__module__
        torch.save(
            {{
                "image": image.generate(**text, seed=0).codes,
                "audio": audio.generate(**text, seed=0).sequences,
                "logits": image(**text, labels=torch.zeros(4, 16, dtype=torch.long)).logits,
                "classes": [type(image).__name__, type(audio).__name__],
            }},
            {str(tmp_path / "outputs.pt")!r},
        )
        """
    )
    outputs = run_without_our_package(body, tmp_path)
    assert outputs["classes"] == ["OptTriForTextToImage", "OptTriForTextToAudio"]
    assert torch.equal(outputs["image"], image.generate(**text, seed=0).codes)
    assert torch.equal(outputs["audio"], audio.generate(**text, seed=0).sequences)
    assert torch.equal(outputs["logits"], image(**text, labels=torch.zeros(4, 16, dtype=torch.long)).logits)


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------


def test_errors_for_bad_inputs():
    image, audio = _image_model(), _audio_model()
    text = _text()
    with pytest.raises(ValueError, match="Nothing to condition"):
        image.generate()
    with pytest.raises(ValueError, match="Pass labels"):
        image(**text)
    with pytest.raises(ValueError, match=r"codes in \[0, 16\)"):
        image(**text, labels=torch.full((4, 16), 16))
    with pytest.raises(ValueError, match="has 16 codes"):
        image(**text, labels=torch.zeros(4, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="code grid"):
        image(**text, labels=torch.zeros(4, 2, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        image(**text, labels=torch.zeros(4, 16))
    with pytest.raises(ValueError, match="batch size"):
        image(**text, labels=torch.zeros(3, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="not both"):
        image(**text, labels=torch.zeros(4, 16, dtype=torch.long), decoder_input_ids=torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="right-padded"):
        audio(**text, labels=torch.tensor([[1, -100, 2]] * 4))
    with pytest.raises(ValueError, match="more than audio_decoder_config.num_codes"):
        audio(**text, labels=torch.zeros(4, 11, dtype=torch.long))
    with pytest.raises(ValueError, match="labels_mask must have shape"):
        audio(**text, labels=torch.zeros(4, 3, dtype=torch.long), labels_mask=torch.ones(4, 2))
    for kwargs, message in (
        (dict(temperature=0), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p"),
        (dict(seed=1.5), "seed"), (dict(num_return_sequences=0), "num_return_sequences"),
        (dict(max_new_codes=5), "always has 16 codes"),
    ):
        with pytest.raises(ValueError, match=message):
            image.generate(**text, **kwargs)
    with pytest.raises(ValueError, match="max_new_codes"):
        audio.generate(**text, max_new_codes=11)
    with pytest.raises(ValueError, match="min_new_codes"):
        audio.generate(**text, max_new_codes=3, min_new_codes=4)
    with pytest.raises(ValueError, match="has 32 codes but the image decoder writes 16"):
        image.generate_images(**text, image_tokenizer=_image_tokenizer(codebook_size=32))
    with pytest.raises(ValueError, match="8 x 8 code grid"):
        image.generate_images(**text, image_tokenizer=_image_tokenizer(image_size=32))
    with pytest.raises(TypeError, match="OptTriImageVQModel"):
        image.generate_images(**text, image_tokenizer=_audio_tokenizer())
    with pytest.raises(ValueError, match="has 16 codes but the audio decoder writes 12"):
        audio.generate_audio(**text, audio_tokenizer=_audio_tokenizer(codebook_size=16))
    with pytest.raises(ValueError, match=r"\['max_new_tokens'\] cannot be set.*max_new_codes"):
        image.generate(**text, max_new_tokens=3)


# ----------------------------------------------------------------------------------------------------------------------
# examples/generate.py
# ----------------------------------------------------------------------------------------------------------------------

GENERATE_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "examples", "generate.py")


def _load_generate_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("opt_tri_generate_example", GENERATE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generate_script_help():
    result = subprocess.run([sys.executable, GENERATE_SCRIPT, "--help"], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    for command in ("caption", "transcribe", "draw", "speak"):
        assert command in result.stdout


@pytest.mark.slow
def test_generate_script_end_to_end(tmp_path, capsys):
    import soundfile

    from modeling_opt_tri import OptTriFeatureExtractor, OptTriImageProcessor, OptTriProcessor
    from modeling_opt_tri.modeling_opt_tri import OptTriForConditionalGeneration
    from modeling_opt_tri.tokenizer_training import build_wordpiece_tokenizer

    corpus = ["a red circle above a blue square", "a green triangle left of a yellow circle", "one two three"]
    processor = OptTriProcessor(
        image_processor=OptTriImageProcessor(image_size=32),
        feature_extractor=OptTriFeatureExtractor(feature_size=16),
        tokenizer=build_wordpiece_tokenizer(corpus, vocab_size=100),
    )
    torch.manual_seed(0)
    folders = {}
    for name, model in (("captioner", OptTriForConditionalGeneration(_config())), ("drawer", _image_model()),
                        ("speaker", _audio_model())):
        folders[name] = tmp_path / name
        model.save_pretrained(folders[name])
        processor.save_pretrained(folders[name])
    _image_tokenizer().save_pretrained(tmp_path / "image_vq")
    _audio_tokenizer(sampling_rate=16000, n_fft=400, hop_length=160).save_pretrained(tmp_path / "audio_vq")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "scene.png")
    soundfile.write(tmp_path / "clip.wav", (0.3 * np.sin(np.arange(4000) / 8000 * 2 * np.pi * 440)).astype(np.float32), 8000)

    script = _load_generate_script()
    common = ["--num_threads", "1"]
    captions = script.main(["caption", "--model", str(folders["captioner"]), "--image", str(tmp_path / "scene.png"),
                            "--max_new_tokens", "5", *common])
    assert len(captions) == 1 and isinstance(captions[0]["text"], str)
    transcripts = script.main(["transcribe", "--model", str(folders["captioner"]), "--audio", str(tmp_path / "clip.wav"),
                               "--max_new_tokens", "5", *common])
    assert len(transcripts) == 1 and isinstance(transcripts[0]["text"], str)
    drawn = script.main(["draw", "--model", str(folders["drawer"]), "--image_tokenizer", str(tmp_path / "image_vq"),
                         "--text", "a red circle", "a blue square", "--num_images", "2", "--top_k", "5",
                         "--output_dir", str(tmp_path / "drawn"), *common])
    assert [(r["text"], r["sample"]) for r in drawn] == [("a red circle", 0), ("a red circle", 1),
                                                         ("a blue square", 0), ("a blue square", 1)]
    for record in drawn:
        with Image.open(record["file"]) as image:
            assert image.size == (16, 16) and image.format == "PNG"
    spoken = script.main(["speak", "--model", str(folders["speaker"]), "--audio_tokenizer", str(tmp_path / "audio_vq"),
                          "--text", "a green triangle", "--output_dir", str(tmp_path / "spoken"), *common])
    assert len(spoken) == 1 and spoken[0]["sampling_rate"] == 16000
    waveform, rate = soundfile.read(spoken[0]["file"], dtype="float32")
    assert rate == 16000 and waveform.ndim == 1 and len(waveform) > 0 and np.isfinite(waveform).all()
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(printed) == 1 + 1 + 4 + 1
    with pytest.raises(SystemExit, match="not a checkpoint folder"):
        script.main(["draw", "--model", str(tmp_path / "missing"), "--image_tokenizer", str(tmp_path / "image_vq"),
                     "--text", "x"])


# ----------------------------------------------------------------------------------------------------------------------
# examples/finetune_text_to_image.py and examples/evaluate_text_to_image.py
# ----------------------------------------------------------------------------------------------------------------------


def _load_example(name: str):
    import importlib.util

    examples = os.path.join(os.path.dirname(__file__), "..", "examples")
    sys.path.insert(0, examples)  # finetune_text_to_image imports evaluate_text_to_image
    try:
        spec = importlib.util.spec_from_file_location(f"opt_tri_example_{name}", os.path.join(examples, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(examples)
    return module


def test_the_colour_statistic_reads_real_shapeworld_images():
    evaluate = _load_example("evaluate_text_to_image")
    scenes = evaluate.heldout_scenes(60, 64)
    targets = [evaluate.prompt_color(row["text"]) for row in scenes]
    assert sorted(set(targets)) == sorted(evaluate.COLORS) and targets.count("red") == 10
    assert [evaluate.dominant_color(row["image"]) for row in scenes] == targets
    assert evaluate.dominant_color(Image.new("RGB", (64, 64), (40, 40, 45))) is None  # background only
    with pytest.raises(ValueError, match="exactly one colour"):
        evaluate.prompt_color("a red circle and a blue square")


@pytest.mark.slow
def test_finetune_text_to_image_runs_end_to_end(tmp_path):
    finetune = _load_example("finetune_text_to_image")
    tokenizer = _image_tokenizer(image_size=64, downsample=8, codebook_size=32, channel_multipliers=[1, 1, 1])
    tokenizer.save_pretrained(tmp_path / "vq")
    report = finetune.main([
        "--image_tokenizer", str(tmp_path / "vq"), "--output_dir", str(tmp_path / "out"), "--num_train_rows", "16",
        "--batch_size", "8", "--max_steps", "3", "--log_every", "1", "--eval_prompts", "6", "--num_threads", "1",
    ])
    assert report["steps"] == 3 and report["evaluation"]["num_prompts"] == 6
    assert report["evaluation"]["real_image_color_accuracy"] == 1.0
    model = OptTriForTextToImage.from_pretrained(tmp_path / "out")
    assert model.config.image_decoder_config.codebook_size == 32 and model.config.image_decoder_config.grid_size == 8
    assert (tmp_path / "out" / "generated_grid.png").is_file()


# ----------------------------------------------------------------------------------------------------------------------
# examples/finetune_text_to_audio.py and examples/evaluate_text_to_audio.py
# ----------------------------------------------------------------------------------------------------------------------


def test_the_pitch_statistic_reads_real_shapeworld_clips():
    evaluate = _load_example("evaluate_text_to_audio")
    scenes = evaluate.heldout_scenes(60, 64)
    targets = [evaluate.prompt_color(row["text"]) for row in scenes]
    clips = [row["audio"]["array"] for row in scenes]
    assert [evaluate.dominant_pitch_color(clip, 16000) for clip in clips] == targets  # every shape's timbre included
    assert evaluate.dominant_pitch_color(np.zeros(8000, dtype=np.float32), 16000) is None  # silence
    t = np.arange(8000) / 16000
    assert evaluate.dominant_pitch_color(0.3 * np.sin(2 * np.pi * 742.0 * 1.05 * t), 16000) == "yellow"  # within 8%


@pytest.mark.slow
def test_finetune_text_to_audio_runs_end_to_end(tmp_path):
    finetune = _load_example("finetune_text_to_audio")
    tokenizer = _audio_tokenizer(num_mel_bins=32, frames_per_code=4, codebook_size=24, sampling_rate=16000, n_fft=400,
                                 hop_length=160, mel_mean=-4.27, mel_std=4.57)
    tokenizer.save_pretrained(tmp_path / "vq")
    report = finetune.main([
        "--audio_tokenizer", str(tmp_path / "vq"), "--output_dir", str(tmp_path / "out"), "--num_train_rows", "16",
        "--batch_size", "8", "--max_steps", "3", "--log_every", "1", "--eval_prompts", "6", "--num_threads", "1",
    ])
    assert report["steps"] == 3 and report["evaluation"]["num_prompts"] == 6
    assert report["evaluation"]["real_audio_pitch_accuracy"] == 1.0
    assert [json.loads(line)["step"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    model = OptTriForTextToAudio.from_pretrained(tmp_path / "out")
    assert model.config.audio_decoder_config.codebook_size == 24  # resized from the preset's 256 to the tokenizer
    assert sorted(p.name for p in (tmp_path / "out").glob("generated_*.wav")) == sorted(
        f"generated_{c}.wav" for c in ("red", "green", "blue", "yellow", "purple", "orange")
    )


@pytest.mark.slow
def test_text_to_image_and_text_to_audio_fine_tune_on_a_users_own_columns(tmp_path):
    """Parquet with the user's column names (`caption`/`jpg` with `Image()`, `transcript`/`wav` with `Audio()` on real
    FSDD speech): both scripts train, report the code loss of the held-out rows and name the split; a wrong column
    names the real ones."""
    import datasets

    from conftest import require_fsdd
    from data_fixtures import DIGITS, fsdd_recordings
    from modeling_opt_tri.data import build_synthetic_dataset

    pairs = build_synthetic_dataset(24, seed=0, split="train", max_shapes=1).select_columns(["text", "image"])
    pairs.rename_columns({"text": "caption", "image": "jpg"}).to_parquet(str(tmp_path / "pairs.parquet"))
    clips = fsdd_recordings(require_fsdd(), 24)
    speech = datasets.Dataset.from_dict(
        {"transcript": [f"the digit {DIGITS[int(p.name[0])]}" for p in clips],
         "wav": [{"bytes": p.read_bytes(), "path": p.name} for p in clips]},
    ).cast_column("wav", datasets.Audio(decode=False))  # a cast, not an encode: no torchcodec
    speech.to_parquet(str(tmp_path / "speech.parquet"))
    image_vq = _image_tokenizer(image_size=64, downsample=8, codebook_size=32, channel_multipliers=[1, 1, 1])
    image_vq.save_pretrained(tmp_path / "image_vq")
    audio_vq = _audio_tokenizer(num_mel_bins=32, frames_per_code=4, codebook_size=24, sampling_rate=16000, n_fft=400,
                                hop_length=160, mel_mean=-4.27, mel_std=4.57)
    audio_vq.save_pretrained(tmp_path / "audio_vq")
    common = ["--num_train_rows", "16", "--batch_size", "4", "--max_steps", "2", "--log_every", "1",
              "--num_threads", "1", "--eval_rows", "8"]
    runs = {
        "finetune_text_to_image": ["--image_tokenizer", str(tmp_path / "image_vq"), "--dataset",
                                   str(tmp_path / "pairs.parquet"), "--text_column", "caption", "--image_column"],
        "finetune_text_to_audio": ["--audio_tokenizer", str(tmp_path / "audio_vq"), "--dataset",
                                   str(tmp_path / "speech.parquet"), "--text_column", "transcript", "--audio_column"],
    }
    for name, (real, columns) in zip(runs, (("jpg", ["caption", "jpg"]), ("wav", ["transcript", "wav"]))):
        finetune = _load_example(name)
        report = finetune.main([*runs[name], real, "--output_dir", str(tmp_path / name), *common])
        assert report["steps"] == 2 and report["eval_split"] == "train (held-out 20% of its rows)"
        assert 1 <= report["eval_rows"] <= 8 and 0 < report["eval_loss"] < 2 * report["uniform_loss"]
        assert "evaluation" not in report  # the colour measurement is ShapeWorld's own
        with pytest.raises(ValueError, match=re.escape(f"has no column 'png'; its columns are {columns!r}")):
            finetune.main([*runs[name], "png", "--output_dir", str(tmp_path / "wrong"), *common])


def test_a_tokenizer_that_does_not_fit_the_processor_is_refused(tmp_path):
    finetune = _load_example("finetune_text_to_audio")
    tokenizer = _audio_tokenizer(num_mel_bins=32, frames_per_code=4, codebook_size=24)  # 8 kHz, n_fft 128
    tokenizer.save_pretrained(tmp_path / "vq")
    with pytest.raises(ValueError, match="sampling_rate=8000"):
        finetune.main(["--audio_tokenizer", str(tmp_path / "vq"), "--output_dir", str(tmp_path / "out"),
                       "--max_steps", "1", "--skip_eval"])
