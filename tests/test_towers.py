"""Towers from pretrained `transformers` encoders (issue 16, items 1, 2 and 4): the acceptance matrix.

Tiny random checkpoints of every supported family are built here and saved locally (no download), some of them as
composite or head checkpoints (`CLIPModel`, `SiglipModel`, `Dinov2ForImageClassification`,
`ASTForAudioClassification`, `Wav2Vec2ForCTC`, `WavLMForSequenceClassification`, `WhisperForConditionalGeneration`).
Every vision family is paired with our audio encoder, every audio family with ViT. For each pair:
`from_unimodal_pretrained` copies the tower weights exactly; the 7 modality subsets run; one pre-training step with
every objective gives finite losses and a gradient on every trainable tower parameter; a masked token's own stem
output cannot reach the cross-modal state at its position (gradient exactly zero), and for non-overlapping stems
changing its input changes nothing; save/load is equal; and one fresh process without our package loads every saved
folder through trust_remote_code with bit-identical outputs.
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import pytest
import torch
from transformers import (
    ASTConfig,
    ASTForAudioClassification,
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    Dinov2Config,
    Dinov2ForImageClassification,
    HubertConfig,
    HubertModel,
    SiglipConfig,
    SiglipModel,
    ViTConfig,
    ViTModel,
    Wav2Vec2Config,
    Wav2Vec2ForCTC,
    WavLMConfig,
    WavLMForSequenceClassification,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from conftest import run_without_our_package
from modeling_opt_tri import (
    OptTriAudioConfig, OptTriAudioModel, OptTriConfig, OptTriForPreTraining, OptTriForRetrieval, OptTriModel,
)

pytestmark = pytest.mark.usefixtures("one_thread_module")

G = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
IMAGE = dict(image_size=32, patch_size=8, num_channels=3)
TEXT = dict(vocab_size=100, bos_token_id=1, eos_token_id=2, **G)  # CLIP / SigLIP text towers
AST = dict(num_mel_bins=16, max_length=32, patch_size=4, frequency_stride=4, time_stride=4)  # a 4 x 8 patch grid
WAV = dict(conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
           num_conv_pos_embedding_groups=2, vocab_size=12, **G)
WHISPER = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
               encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=16,
               max_target_positions=16, vocab_size=60, pad_token_id=0, bos_token_id=1, eos_token_id=2,
               decoder_start_token_id=1)

#: family -> (how its checkpoint is made, the prefix of the tower inside it)
VISION = {
    "vit": (lambda: ViTModel(ViTConfig(**IMAGE, **G)), ""),
    "clip": (lambda: CLIPModel(CLIPConfig(text_config=TEXT, vision_config=dict(**IMAGE, **G), projection_dim=16)),
             "vision_model."),
    "siglip": (lambda: SiglipModel(SiglipConfig(text_config=TEXT, vision_config=dict(**IMAGE, **G))), "vision_model."),
    "dinov2": (lambda: Dinov2ForImageClassification(Dinov2Config(**IMAGE, **G, num_labels=3)), "dinov2."),
}
AUDIO = {
    "ours": (lambda: OptTriAudioModel(OptTriAudioConfig(num_mel_bins=16, max_position_embeddings=32, **G)), ""),
    "ast": (lambda: ASTForAudioClassification(ASTConfig(**AST, num_labels=3, **G)), "audio_spectrogram_transformer."),
    "wav2vec2": (lambda: Wav2Vec2ForCTC(Wav2Vec2Config(**WAV)), "wav2vec2."),
    "hubert": (lambda: HubertModel(HubertConfig(**WAV)), ""),
    "wavlm": (lambda: WavLMForSequenceClassification(WavLMConfig(**WAV, num_labels=3)), "wavlm."),
    "whisper": (lambda: WhisperForConditionalGeneration(WhisperConfig(**WHISPER)), "model.encoder."),
}
PAIRS = [(v, "ours") for v in VISION] + [("vit", a) for a in AUDIO if a != "ours"]
OBJECTIVES = (
    "mlm", "mrfr", "mafr", "mac", "contrastive", "itm", "tri_matching", "wra", "dtr", "mrc", "mrc_kl", "dir", "dar",
)
B = 4


def _config() -> OptTriConfig:
    return OptTriConfig(
        text_config=dict(vocab_size=100, max_position_embeddings=32, **G),
        vision_config=dict(model_type="vit", **IMAGE, **G),
        audio_config=dict(num_mel_bins=16, max_position_embeddings=32, **G),
        cross_modal_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        text_decoder_config=dict(vocab_size=100, max_position_embeddings=24, bos_token_id=2, eos_token_id=3,
                                 pad_token_id=0, **G),
        image_decoder_config=dict(codebook_size=16, grid_size=4, **G),
        audio_decoder_config=dict(codebook_size=12, num_codes=10, **G),
        projection_dim=16, mask_token_id=4, special_token_ids=[0, 1, 2, 3], masking_policy="joint",
        objectives=dict.fromkeys(OBJECTIVES, 1.0),
    )


def _audio_inputs(family: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    """The family's audio input as `OptTriProcessor` gives it (docs/PROCESSORS.md), some of it padding."""
    if family in ("wav2vec2", "hubert", "wavlm"):
        mask = torch.ones(B, 1200, dtype=torch.long)
        mask[2, 700:] = 0
        return {"input_values": torch.randn(B, 1200, generator=g) * mask, "audio_attention_mask": mask,
                "audio_mask": torch.ones(B, dtype=torch.long)}
    if family == "ast":
        return {"input_features": torch.randn(B, 32, 16, generator=g), "audio_mask": torch.ones(B, dtype=torch.long)}
    frames = 32 if family == "whisper" else 24
    mask = torch.ones(B, frames, dtype=torch.long)
    mask[2, frames // 2:] = 0
    return {"input_features": torch.randn(B, 16, frames, generator=g), "audio_attention_mask": mask}


def _batch(audio_family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 100, (B, 8), generator=g)
    input_ids[:, 0] = 2
    attention_mask = torch.ones(B, 8, dtype=torch.long)
    attention_mask[1, 5:] = 0
    return {
        "input_ids": input_ids, "attention_mask": attention_mask,
        "pixel_values": torch.randn(B, 3, 32, 32, generator=g), "image_mask": torch.ones(B, dtype=torch.long),
        **_audio_inputs(audio_family, g),
    }


def _codes() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "image_codes": torch.randint(16, (B, 4, 4), generator=g),
        "image_code_probs": torch.softmax(torch.randn(B, 4, 4, 16, generator=g), dim=-1),
        "audio_codes": torch.randint(12, (B, 8), generator=g),
    }


_MODALITY_KEYS = {"text": ("input_ids", "attention_mask"), "image": ("pixel_values", "image_mask")}


def _subset(batch: dict, modalities: tuple[str, ...]) -> dict:
    keys = [k for m in modalities for k in _MODALITY_KEYS.get(m, ())]
    if "audio" in modalities:
        keys += [k for k in batch if k not in _MODALITY_KEYS["text"] + _MODALITY_KEYS["image"]]
    return {k: batch[k] for k in keys}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Every tiny checkpoint, saved: name -> (folder, the tower's state dict in the source)."""
    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    made = {"text:bert": (BertModel(BertConfig(vocab_size=100, max_position_embeddings=32, **G)), "")}
    made.update({f"vision:{k}": (make(), prefix) for k, (make, prefix) in VISION.items()})
    made.update({f"audio:{k}": (make(), prefix) for k, (make, prefix) in AUDIO.items()})
    result = {}
    for name, (model, prefix) in made.items():
        folder = root / name.replace(":", "_")
        model.save_pretrained(folder)
        state = {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
        result[name] = (folder, state)
    return result


def _build(folders, vision: str, audio: str) -> OptTriForPreTraining:
    return OptTriForPreTraining.from_unimodal_pretrained(
        text=str(folders["text:bert"][0]), vision=str(folders[f"vision:{vision}"][0]),
        audio=str(folders[f"audio:{audio}"][0]), config=_config(),
    )


def _assert_tower_equals_source(tower: torch.nn.Module, source: dict, name: str) -> None:
    ours = {k.removeprefix("vision_model."): v for k, v in tower.state_dict().items()}  # CLIP/SigLIP: either way
    skipped = ("pooler.", "masked_spec_embed", "mask_token")
    compared = [k for k in source if not k.startswith(skipped) and not k.endswith(skipped)]
    compared = [k for k in compared if "pooler" not in k or k in ours]
    missing = [k for k in compared if k not in ours]
    assert not missing, f"{name}: source weights without a tower weight: {missing[:5]}"
    for key in compared:
        assert torch.equal(ours[key], source[key]), f"{name}: {key}"
    assert len(compared) > 8, name


def _masked_state_gradients(model: OptTriModel, vision: str, audio: str, batch: dict) -> None:
    """A masked token's own stem output cannot reach the cross-modal state at its position: with a zero probe added
    at the stem output (before the masking), that state's gradient w.r.t. the probe at its own token is exactly
    zero (and the probe reaches the output elsewhere)."""
    for modality in ("image", "audio"):
        adapter = model.vision_adapter if modality == "image" else model.audio_adapter
        tower = model.vision_model if modality == "image" else model.audio_model
        if modality == "image":
            tokens = model.config.num_image_patches
        else:
            features = batch.get("input_features", batch.get("input_values"))
            tokens = model.audio_token_mask(features, batch.get("audio_attention_mask")).shape[1] - 1
        masked = torch.zeros(B, tokens, dtype=torch.bool)
        masked[:, 1] = True
        masked[0, 3] = True
        probe = {}

        def add_probe(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            probe["p"] = torch.zeros_like(hidden, requires_grad=True)
            hidden = hidden + probe["p"]
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        stem = adapter.stem(tower)
        handle = stem.register_forward_hook(add_probe)
        try:
            out = model(**batch, **{f"{modality}_bool_masked_pos": masked})
        finally:
            handle.remove()
        start = 1 + batch["input_ids"].shape[1] + (0 if modality == "image" else 1 + model.config.num_image_patches)
        state = out.last_hidden_state[0, start + 1 + 3]  # sample 0, masked token 3 (after the part's own [CLS])
        weights = torch.randn(state.shape, generator=torch.Generator().manual_seed(0))  # (the sum of a LayerNorm
        (grad,) = torch.autograd.grad((state * weights).sum(), probe["p"])  # output with unit weight is constant)
        conv = isinstance(stem, (torch.nn.Conv1d, torch.nn.Conv2d))  # (B, D, *grid), else (B, N, D)
        own = grad[0].flatten(1)[:, 3] if conv else grad[0, 3]
        assert torch.count_nonzero(own) == 0, f"{vision}/{audio}: the {modality} masked token's stem output leaks"
        assert torch.count_nonzero(grad) > 0, "the probe must reach the output at all"


def _non_overlapping_change(model: OptTriModel, batch: dict, modality: str) -> None:
    """With stride == kernel stems (every vision family here, ours and AST audio): change the input under masked
    token 1 only; in eval mode the whole output is unchanged (and unmasked, it changes)."""
    tokens = {"image": model.config.num_image_patches, "audio": 32 if "audio_mask" in batch else 6}[modality]
    masked = torch.zeros(B, tokens, dtype=torch.bool)
    masked[:, 1] = True
    changed = dict(batch)
    if modality == "image":  # patch 1: row 0, columns 8-15
        changed["pixel_values"] = batch["pixel_values"].clone()
        changed["pixel_values"][:, :, 0:8, 8:16] += 3.0
    elif "audio_mask" in batch:  # AST token 1: frequency patch 0, time patch 1 of (B, time, frequency)
        changed["input_features"] = batch["input_features"].clone()
        changed["input_features"][:, 4:8, 0:4] += 3.0
    else:  # ours, token 1: frames 4-7
        changed["input_features"] = batch["input_features"].clone()
        changed["input_features"][:, :, 4:8] += 3.0
    name = f"{modality}_bool_masked_pos"
    with torch.no_grad():
        a = model(**batch, **{name: masked}).last_hidden_state
        b = model(**changed, **{name: masked}).last_hidden_state
        c = model(**changed).last_hidden_state
    assert torch.equal(a, b), modality
    assert not torch.equal(a, c)


@pytest.fixture(scope="module")
def saved(folders, tmp_path_factory) -> dict:
    """Build, check and save every pair; returns name -> (folder, inputs, outputs) for the fresh-process test."""
    root = tmp_path_factory.mktemp("saved")
    return {"root": root, "pairs": {}}


@pytest.mark.parametrize(("vision", "audio"), PAIRS, ids=[f"{v}-{a}" for v, a in PAIRS])
def test_tower_pair(folders, saved, vision, audio):
    torch.manual_seed(0)
    model = _build(folders, vision, audio)
    base = model.opt_tri
    _assert_tower_equals_source(base.vision_model, folders[f"vision:{vision}"][1], vision)
    _assert_tower_equals_source(base.audio_model, folders[f"audio:{audio}"][1], audio)
    _assert_tower_equals_source(base.text_model, folders["text:bert"][1], "bert")
    batch = _batch(audio)

    model.train()
    out = model(**batch, **_codes(), generator=torch.Generator().manual_seed(0))
    losses = out.losses()
    assert set(losses) >= set(OBJECTIVES) - {"dtr", "dir", "dar"}, sorted(losses)
    assert all(math.isfinite(float(v)) for v in losses.values()), losses
    out.loss.backward()
    towers = {"text_model": base.text_model, "vision_model": base.vision_model, "audio_model": base.audio_model}
    for tower_name, tower in towers.items():
        without = [n for n, p in tower.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
        assert not without, f"{vision}/{audio}: {tower_name} parameters without a gradient: {without[:6]}"
    model.zero_grad()

    model.eval()
    _masked_state_gradients(base, vision, audio, batch)
    if audio == "ours":
        _non_overlapping_change(base, batch, "image")
    if audio in ("ours", "ast") and vision == "vit":
        _non_overlapping_change(base, batch, "audio")
    with torch.no_grad():
        for r in range(1, 4):
            for modalities in itertools.combinations(("text", "image", "audio"), r):
                hidden = base(**_subset(batch, modalities)).last_hidden_state
                assert torch.isfinite(hidden).all(), (vision, audio, modalities)
        expected = base(**batch).last_hidden_state

    folder = saved["root"] / f"{vision}-{audio}"
    model.save_pretrained(folder)
    reloaded = OptTriModel.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).last_hidden_state, expected), f"{vision}/{audio}: save/load"
    torch.save({"batch": batch, "expected": expected}, folder / "inputs.pt")
    saved["pairs"][f"{vision}-{audio}"] = folder


def test_every_pair_loads_through_remote_code_in_one_fresh_process(saved, tmp_path):
    """One subprocess, without our package, loads every saved folder with trust_remote_code (bit-identical)."""
    if len(saved["pairs"]) != len(PAIRS):
        pytest.skip("a pair test failed; its folder was not saved")
    body = f"""
    import torch
    from pathlib import Path
    from transformers import AutoModel
    results = {{}}
    for name in {sorted(saved['pairs'])!r}:
        folder = Path({str(saved['root'])!r}) / name
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        data = torch.load(folder / "inputs.pt")
        with torch.no_grad():
            hidden = model(**data["batch"]).last_hidden_state
        results[name] = (type(model).__name__, bool(torch.equal(hidden, data["expected"])))
    torch.save(results, {str(tmp_path / 'outputs.pt')!r})
    """
    results = run_without_our_package(body, tmp_path)
    assert results == {name: ("OptTriModel", True) for name in saved["pairs"]}


def test_unsupported_family_names_the_supported_ones(folders):
    with pytest.raises(ValueError, match=r"'bert' config; OPT-Tri's vision tower supports the families \['clip_vision"):
        OptTriModel.from_unimodal_pretrained(vision=str(folders["text:bert"][0]), config=_config())
    with pytest.raises(ValueError, match=r"audio tower supports the families \[.*'whisper'\]"):
        config = _config()
        config.audio_config = BertConfig(**G)
        OptTriModel(config)
    config.audio_config = Wav2Vec2Config(**WAV, add_adapter=True)
    with pytest.raises(ValueError, match="add_adapter=True is not supported"):
        OptTriModel(config)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_clip_and_siglip_text_and_vision_towers_of_one_composite_checkpoint(folders, family, caplog):
    """The text and vision towers of one CLIPModel / SiglipModel folder: exact weights, the family's own outputs (the
    text tower's position 0 is its pooled end-of-text state), and CLIP's projections kept (logged) where they match
    ours; SigLIP has none to keep (logged)."""
    folder = str(folders[f"vision:{family}"][0])
    caplog.set_level(logging.INFO, logger="modeling_opt_tri.modeling_opt_tri_conversion")
    model = OptTriModel.from_unimodal_pretrained(text=folder, vision=folder, config=_config()).eval()
    source = (CLIPModel if family == "clip" else SiglipModel).from_pretrained(folder).eval()
    for name in ("text_model", "vision_model"):
        theirs = {k.removeprefix(f"{name}."): v for k, v in source.state_dict().items() if k.startswith(f"{name}.")}
        ours = {k.removeprefix(f"{name}."): v for k, v in getattr(model, name).state_dict().items()}
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    batch = _batch("ours")
    with torch.no_grad():
        states = model.encode_text(batch["input_ids"], batch["attention_mask"])
        text = source.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        image = model.encode_image(batch["pixel_values"])
        vision = source.vision_model(pixel_values=batch["pixel_values"])
    torch.testing.assert_close(states[:, 0], text.pooler_output)
    torch.testing.assert_close(states[:, 1:], text.last_hidden_state[:, 1:])
    torch.testing.assert_close(image[:, 0], vision.pooler_output)
    if family == "clip":
        assert torch.equal(model.text_projection.weight, source.text_projection.weight)
        assert torch.equal(model.image_projection.weight, source.visual_projection.weight)
        assert caplog.text.count("is kept as ours") == 2
    else:
        torch.testing.assert_close(image[:, 1:], vision.last_hidden_state)
        assert caplog.text.count("no projection in the checkpoint matches ours") == 2


def test_a_tower_weight_missing_from_the_checkpoint_raises(folders, tmp_path):
    """No silent re-initialisation: a checkpoint without one of the tower's weights is refused, naming it."""
    from safetensors.torch import load_file, save_file

    source = folders["audio:hubert"][0]
    for name in ("config.json",):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    state = load_file(source / "model.safetensors")
    del state["encoder.layers.0.attention.q_proj.weight"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"audio tower needs: \[.encoder.layers.0.attention.q_proj.weight"):
        OptTriModel.from_unimodal_pretrained(audio=str(tmp_path), config=_config())


def test_processor_output_runs_each_tower_family(folders, tmp_path):
    """`OptTriProcessor.from_unimodal_pretrained` output goes straight into the model for each audio input layout:
    raw waveform (wav2vec2, with a CLIP image processor), AST fbank (with SigLIP's), Whisper log-mel (a model built
    from its config alone, with DINOv2's processor); a row without audio has no audio tokens."""
    from transformers import (
        ASTFeatureExtractor, BertTokenizer, BitImageProcessor, CLIPImageProcessor, SiglipImageProcessor,
        Wav2Vec2FeatureExtractor, WhisperFeatureExtractor,
    )

    from modeling_opt_tri.processing_opt_tri import OptTriProcessor

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle"]))
    tokenizer = BertTokenizer(vocab=str(tmp_path / "vocab.txt"))
    tokenizer.save_pretrained(tmp_path / "text")
    whisper = _config()
    whisper.audio_config = WhisperConfig(**{**WHISPER, "max_source_positions": 50})  # 1 s: 100 frames
    cases = {
        "wav2vec2": (CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                     Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True), "clip"),
        "ast": (SiglipImageProcessor(size={"height": 32, "width": 32}), ASTFeatureExtractor(num_mel_bins=16, max_length=32),
                "siglip"),
        "whisper": (BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                    WhisperFeatureExtractor(feature_size=16, chunk_length=1), "dinov2"),
    }
    t = torch.arange(8000) / 8000
    waves = [torch.sin(2 * torch.pi * 440 * t[:6000]).numpy(), None, torch.sin(2 * torch.pi * 220 * t).numpy()]
    images = [torch.rand(3, 40, 48).mul(255).byte().permute(1, 2, 0).numpy() for _ in range(3)]
    for audio, (image_processor, extractor, vision) in cases.items():
        image_processor.save_pretrained(tmp_path / f"{audio}-vision")
        extractor.save_pretrained(tmp_path / f"{audio}-audio")
        processor = OptTriProcessor.from_unimodal_pretrained(
            text=tmp_path / "text", vision=tmp_path / f"{audio}-vision", audio=tmp_path / f"{audio}-audio"
        )
        inputs = processor(text=["a red circle"] * 3, images=images, audio=waves, sampling_rate=8000)
        if audio == "whisper":
            whisper.vision_config = Dinov2Config(**IMAGE, **G)
            model = OptTriModel(whisper).eval()
        else:
            model = OptTriModel.from_unimodal_pretrained(
                vision=str(folders[f"vision:{vision}"][0]), audio=str(folders[f"audio:{audio}"][0]), config=_config()
            ).eval()
        with torch.no_grad():
            out = model(**inputs)
        assert torch.isfinite(out.last_hidden_state).all(), audio
        assert out.audio_token_mask[1].sum() == 0 and out.audio_token_mask[0].sum() > 1, audio
        if audio == "wav2vec2":  # the frame mask is exactly the family's own
            mask = inputs["audio_attention_mask"]
            own = model.audio_model._get_feature_vector_attention_mask(out.audio_token_mask.shape[1] - 1, mask)
            assert torch.equal(out.audio_token_mask[:, 1:].bool(), own.bool() & inputs["audio_mask"].bool()[:, None])
            embeds, _ = OptTriForRetrieval(model.config).eval().encode("audio", inputs)  # its `encode` reads them too
            assert embeds.shape == (3, model.config.projection_dim) and torch.isfinite(embeds).all()


@pytest.mark.parametrize("audio", list(AUDIO))
def test_retrieval_evaluation_reads_each_audio_family(folders, audio):
    """The evaluation's encoder takes every audio layout the processor gives (`input_values` and `audio_mask` of
    the raw-waveform and AST layouts) and measures all six directions."""
    from modeling_opt_tri.training.evaluation import embed_batches, retrieval_metrics

    model = _build(folders, "vit", audio).eval()
    batch = _batch(audio)
    embeddings = embed_batches(model, [batch], progress=False)
    assert all(len(rows) == B for rows in embeddings.rows.values())
    assert len(retrieval_metrics(embeddings)) == 6


@pytest.mark.parametrize("audio, region", [("whisper", (slice(None), slice(6, 8))), ("wav2vec2", (slice(60, 85),))])
def test_overlapping_audio_stems_keep_a_masked_tokens_target_from_every_token(folders, audio, region):
    """Whisper's kernel-3 convolutions and the wav2vec2 feature encoder overlap: a neighbour of masked token 3 reads
    part of its input. The input its target is computed from (Whisper: mel frames 6-7 of stride 2; wav2vec2 here:
    samples 60-84, the 25-sample window of stride 20) is blanked, so no state of the cross-modal encoder has a
    gradient there (and the rest of the input still reaches them)."""
    model = _build(folders, "vit", audio).opt_tri.eval()
    batch = _batch(audio)
    name = "input_values" if "input_values" in batch else "input_features"
    batch[name] = batch[name].clone().requires_grad_(True)
    features = batch[name]
    tokens = model.audio_token_mask(features, batch.get("audio_attention_mask")).shape[1] - 1
    masked = torch.zeros(B, tokens, dtype=torch.bool)
    masked[0, 3] = True
    out = model(**batch, audio_bool_masked_pos=masked)
    (grad,) = torch.autograd.grad(out.last_hidden_state[0].sum(), features)
    assert torch.count_nonzero(grad[0][region]) == 0, f"{audio}: the masked token's target input reaches the output"
    assert torch.count_nonzero(grad[0]) > 0
    unmasked = model(**batch)
    (grad,) = torch.autograd.grad(unmasked.last_hidden_state[0].sum(), features)
    assert torch.count_nonzero(grad[0][region]) > 0  # without masking that input is read
