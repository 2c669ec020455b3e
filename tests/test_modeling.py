"""OptTriConfig / OptTriModel / OptTriForPreTraining: configs, saving and loading, modality subsets, masking of
missing modalities and padding, attention implementations, gradient checkpointing, unimodal initialisation, errors."""

from __future__ import annotations

import copy
import itertools
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers.utils import ModelOutput
from transformers import (
    ASTConfig,
    ASTModel,
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    BertConfig,
    BertModel,
    ViTConfig,
    ViTModel,
)

from conftest import tiny_batch, tiny_config
from modeling_opt_tri import OptTriConfig, OptTriForPreTraining, OptTriModel
from modeling_opt_tri.configuration_opt_tri import OptTriFusionConfig
from modeling_opt_tri.modeling_opt_tri import OptTriLayer


MODALITY_KEYS = {
    "text": ("input_ids", "attention_mask"),
    "image": ("pixel_values", "image_mask"),
    "audio": ("input_features", "audio_attention_mask"),
}
#: The Hub files modeling_opt_tri.py reaches by relative import travel with it (save_pretrained copies them).
MODELING_HELPERS = {
    f"modeling_opt_tri_{part}.py"
    for part in (
        "outputs", "layers", "inputs", "fusion", "losses", "masking", "phases", "decoders", "generation", "conversion", "hub",
        "tuning", "towers",
    )
}
SAVED_FILES = {"config.json", "model.safetensors", "configuration_opt_tri.py", "modeling_opt_tri.py", "README.md",
               *MODELING_HELPERS}


pytestmark = pytest.mark.usefixtures("one_thread")


def _subset(batch, modalities):
    return {key: batch[key] for m in modalities for key in MODALITY_KEYS[m]}


def _assert_outputs_equal(a, b, exact=True, atol=0.0):
    assert list(a.keys()) == list(b.keys())
    compared = 0
    for key in a.keys():
        x, y = a[key], b[key]
        if isinstance(x, ModelOutput):  # a tower's own output: compare its fields too
            compared += _assert_outputs_equal(x, y, exact, atol)
            continue
        xs, ys = (x, y) if isinstance(x, tuple) else ((x,), (y,))
        assert len(xs) == len(ys), key
        for u, v in zip(xs, ys):
            if torch.is_tensor(u):
                if exact:
                    assert torch.equal(u, v), f"{key} differs"
                else:
                    assert u.shape == v.shape and torch.allclose(u, v, atol=atol, rtol=0), (
                        f"{key} differs by {(u.float() - v.float()).abs().max().item():.3g}"
                    )
                compared += 1
            else:
                assert u == v, key
    return compared


def _model(cls=OptTriModel, **overrides):
    torch.manual_seed(0)
    return cls(tiny_config(**overrides)).eval()


# ----------------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------------


def test_config_round_trip(tmp_path, config):
    config.save_pretrained(tmp_path)
    reloaded = OptTriConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    auto = AutoConfig.from_pretrained(tmp_path)
    assert type(auto) is OptTriConfig
    assert {k: v for k, v in auto.to_dict().items() if k != "_name_or_path"} == {
        k: v for k, v in config.to_dict().items() if k != "_name_or_path"
    }
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "opt_tri"
    assert saved["cross_modal_config"]["hidden_size"] == 48
    assert saved["vision_config"]["model_type"] == "vit"
    assert reloaded.num_image_patches == 16
    assert reloaded.objectives == config.objectives and reloaded.objectives is not config.objectives


def test_config_fusion_config_is_an_input_alias_only(tmp_path):
    """transformers >= 5.24 treats `config.fusion_config` as its own kernel-fusion setting in from_pretrained."""
    config = tiny_config()
    assert not hasattr(config, "fusion_config")
    assert "fusion_config" not in config.to_dict()
    assert isinstance(config.cross_modal_config, OptTriFusionConfig)
    assert config.cross_modal_config.hidden_size == 48
    fusion = dict(hidden_size=40, num_hidden_layers=1, num_attention_heads=4, intermediate_size=80)
    via_alias = OptTriConfig(fusion_config=fusion)
    assert not hasattr(via_alias, "fusion_config")
    direct = OptTriConfig(cross_modal_config=fusion)
    assert via_alias.cross_modal_config.to_dict() == direct.cross_modal_config.to_dict()
    legacy = config.to_dict()
    legacy["fusion_config"] = legacy.pop("cross_modal_config")
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    assert OptTriConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    with pytest.raises(ValueError, match="not both"):
        OptTriConfig(cross_modal_config=fusion, fusion_config=fusion)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(cross_modal_config=dict(hidden_size=50, num_attention_heads=4)),
            r"hidden_size \(50\) must be divisible by num_attention_heads \(4\)",
        ),
        (
            dict(audio_config=dict(num_mel_bins=16, hidden_size=30, num_attention_heads=4)),
            r"OptTriAudioConfig.*hidden_size \(30\).*divisible",
        ),
        (
            dict(vision_config=dict(model_type="vit", image_size=30, patch_size=8, hidden_size=32,
                                    num_attention_heads=2)),
            r"image_size \(30\) must be divisible by patch_size \(8\)",
        ),
        (dict(objectives={"mlm": 1.0, "mim": 1.0}), r"Unknown pre-training objectives \['mim'\]"),
        (dict(objectives={"mlm": -1.0}), r"objectives\['mlm'\] must be a non-negative number"),
        (dict(masking_policy="sometimes"), r"masking_policy must be 'conditional' or 'joint', got 'sometimes'"),
        (dict(mlm_probability=1.5), r"mlm_probability must be a float in \[0, 1\), got 1.5"),
        (dict(modality_mask_probability=-0.1), r"modality_mask_probability must be a float in \[0, 1\)"),
        (dict(mam_probability="0.15"), r"mam_probability must be a float"),
        (dict(mask_token_id=100), r"mask_token_id/special_token_ids must be ids in \[0, 100\)"),
        (dict(projection_dim=0), r"projection_dim must be a positive int"),
        (dict(mac_temperature=0.0), r"mac_temperature must be positive"),
    ],
)
def test_config_validation_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


# ----------------------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------------------


def _saved_folder_is_clean(folder):
    files = set(os.listdir(folder))
    assert files == SAVED_FILES, f"unexpected files in the saved folder: {sorted(files ^ SAVED_FILES)}"
    for name in files:
        head = (folder / name).read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", f"{name} looks like a pickle / torch.save zip"
    load_file(folder / "model.safetensors")  # a real safetensors file
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoConfig"] == "configuration_opt_tri.OptTriConfig"
    assert config["auto_map"]["AutoModel"] == "modeling_opt_tri.OptTriModel"
    assert config["auto_map"]["AutoModelForPreTraining"] == "modeling_opt_tri.OptTriForPreTraining"


@pytest.fixture
def no_pickle(monkeypatch):
    """Weights must never load through pickle."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load (pickle) was called while loading a model")

    monkeypatch.setattr(torch, "load", refuse)


def test_save_and_load_model_gives_identical_outputs(tmp_path, batch, no_pickle):
    model = _model(OptTriModel)
    model.save_pretrained(tmp_path)
    _saved_folder_is_clean(tmp_path)
    reloaded = OptTriModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is OptTriModel
    with torch.no_grad():
        expected = model(**batch, output_hidden_states=True)
        got = reloaded(**batch, output_hidden_states=True)
    assert _assert_outputs_equal(expected, got) >= 12


def test_save_and_load_pretraining_model_gives_identical_outputs(tmp_path, batch, no_pickle):
    model = _model(OptTriForPreTraining)
    model.save_pretrained(tmp_path)
    _saved_folder_is_clean(tmp_path)
    for loader in (OptTriForPreTraining, AutoModelForPreTraining):
        reloaded = loader.from_pretrained(tmp_path).eval()
        assert type(reloaded) is OptTriForPreTraining
        with torch.no_grad():
            torch.manual_seed(5)
            expected = model(**batch)
            torch.manual_seed(5)
            got = reloaded(**batch)
        assert expected.loss is not None
        # float rounding only: the masked-token heads run on small gathered matrices, and a one-row CPU matmul may take
        # another kernel path for another buffer alignment (seen: 2e-7 in the MAC loss of identical weights and inputs)
        assert _assert_outputs_equal(expected, got, exact=False, atol=1e-6) >= 10

    # AutoModel on a pre-training checkpoint gives the base model, with identical base outputs
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base) is OptTriModel
    with torch.no_grad():
        _assert_outputs_equal(model.opt_tri(**batch), base(**batch))
    heads = set(model.state_dict()) - {f"opt_tri.{k}" for k in base.state_dict()}
    assert heads and all(not k.startswith("opt_tri.") for k in heads)


# ----------------------------------------------------------------------------------------------------------------------
# Modality subsets, missing modalities, padding
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "modalities", [c for r in (1, 2, 3) for c in itertools.combinations(("text", "image", "audio"), r)], ids="+".join
)
def test_every_modality_subset(modalities, batch):
    model = _model(OptTriModel)
    lengths = {"text": 10, "image": 1 + 16, "audio": 1 + 10}
    with torch.no_grad():
        out = model(**_subset(batch, modalities))
    seq = 1 + sum(lengths[m] for m in modalities)
    assert out.last_hidden_state.shape == (4, seq, 48)
    assert out.pooler_output.shape == (4, 48)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])
    assert out.fusion_attention_mask.shape == (4, seq)
    assert out.modality_ids.shape == (seq,) and out.modality_ids[0] == 0
    start = 1
    for code, m in enumerate(("text", "image", "audio"), start=1):
        embeds = getattr(out, f"{m}_embeds")
        unimodal = getattr(out, f"{m}_last_hidden_state")
        if m in modalities:
            assert embeds.shape == (4, 16)
            assert torch.allclose(embeds.norm(dim=-1), torch.ones(4), atol=1e-5)
            assert unimodal.shape[:2] == (4, lengths[m])
            assert out.modality_slice(m) == slice(start, start + lengths[m])
            assert (out.modality_ids[out.modality_slice(m)] == code).all()
            start += lengths[m]
        else:
            assert embeds is None and unimodal is None
            with pytest.raises(ValueError, match=f"No {m} in this output"):
                out.modality_slice(m)
    assert start == seq
    if "audio" in modalities:
        assert out.audio_token_mask.shape == (4, 11)
        assert out.audio_token_mask[2].tolist() == [1] * 6 + [0] * 5  # row 2: 20 of 40 frames real
    assert torch.isfinite(out.last_hidden_state).all()


def _rows_missing_modalities():
    batch = tiny_batch(batch=4)
    batch["attention_mask"][1] = 0  # row 1 has no text
    batch["image_mask"][2] = 0  # row 2 has no image
    batch["audio_attention_mask"][3] = 0  # row 3 has no audio
    return batch


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_missing_modality_in_a_row_is_masked_out(implementation):
    torch.manual_seed(0)
    model = OptTriModel._from_config(tiny_config(), attn_implementation=implementation).eval()
    batch = _rows_missing_modalities()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        reference = model(**batch).pooler_output
    assert model(**batch).fusion_attention_mask[1, 1:11].sum() == 0

    def changed(row, key):
        other = {k: v.clone() for k, v in batch.items()}
        if key == "input_ids":
            other[key][row] = torch.randint(5, 100, other[key][row].shape, generator=g)
        else:
            other[key][row] = torch.randn(other[key][row].shape, generator=g) * 3
        with torch.no_grad():
            return model(**other).pooler_output

    for missing_row, key in ((1, "input_ids"), (2, "pixel_values"), (3, "input_features")):
        out = changed(missing_row, key)
        assert torch.allclose(out, reference, atol=1e-6, rtol=0), f"row {missing_row}: absent {key} leaked in"
        present_row = 0
        out = changed(present_row, key)
        assert (out[present_row] - reference[present_row]).abs().max() > 1e-3, f"{key} had no effect when present"
        others = [r for r in range(4) if r != present_row]
        assert torch.allclose(out[others], reference[others], atol=1e-6, rtol=0), "rows are not independent"


def test_padding_does_not_change_the_outputs():
    model = _model(OptTriModel)
    batch = tiny_batch(batch=3)
    g = torch.Generator().manual_seed(2)
    padded = dict(batch)
    padded["input_ids"] = torch.cat([batch["input_ids"], torch.zeros(3, 6, dtype=torch.long)], 1)
    padded["attention_mask"] = torch.cat([batch["attention_mask"], torch.zeros(3, 6, dtype=torch.long)], 1)
    # padded frames hold garbage, not zeros: their content must not matter either
    padded["input_features"] = torch.cat([batch["input_features"], torch.randn(3, 16, 16, generator=g)], 2)
    padded["audio_attention_mask"] = torch.cat([batch["audio_attention_mask"], torch.zeros(3, 16, dtype=torch.long)], 1)
    with torch.no_grad():
        a = model(**batch)
        b = model(**padded)
    assert b.last_hidden_state.shape[1] == a.last_hidden_state.shape[1] + 6 + 4
    for key in ("pooler_output", "text_embeds", "image_embeds", "audio_embeds"):
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=0), key
    # the real text and audio positions are unchanged too
    assert torch.allclose(a.last_hidden_state[:, :11], b.last_hidden_state[:, :11], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Attention implementations
# ----------------------------------------------------------------------------------------------------------------------


def test_sdpa_and_eager_agree(monkeypatch):
    cfg = tiny_config()
    torch.manual_seed(0)
    eager = OptTriModel._from_config(copy.deepcopy(cfg), attn_implementation="eager").eval()
    sdpa = OptTriModel._from_config(copy.deepcopy(cfg), attn_implementation="sdpa").eval()
    sdpa.load_state_dict(eager.state_dict())
    assert eager.config.cross_modal_config._attn_implementation == "eager"
    assert sdpa.config.cross_modal_config._attn_implementation == "sdpa"
    batch = _rows_missing_modalities()
    batch["attention_mask"][0, 7:] = 0

    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        out_eager = eager(**batch)
        assert not calls, "the eager model called SDPA"
        out_sdpa = sdpa(**batch)
        assert len(calls) >= 2 + 2 + 2 + 2, "the SDPA model did not use SDPA in every encoder"
    _assert_outputs_equal(out_eager, out_sdpa, exact=False, atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_fuse_selected_equals_the_matching_states_of_fuse(attn):
    """The last cross-modal layer computed at chosen positions / rows only gives exactly those states of `fuse()`."""
    torch.manual_seed(0)
    model = OptTriModel._from_config(tiny_config(), attn_implementation=attn).eval()
    g = torch.Generator().manual_seed(1)
    text = (torch.randn(3, 6, 32, generator=g), torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [0] * 6]))
    image = (torch.randn(3, 17, 32, generator=g), torch.ones(3, 17, dtype=torch.long))
    audio = (torch.randn(3, 9, 32, generator=g), torch.tensor([[1] * 9, [1] * 4 + [0] * 5, [1] * 9]))
    query_index = torch.tensor([[0, 3, 20], [5, 5, 31], [0, 7, 32]])
    with torch.no_grad():
        fused, mask, ids = model.fuse(text, image, audio)
        selected, full, mask2, ids2 = model.fuse_selected(text, image, audio, query_index, torch.tensor([2, 0]))
        cls, none, _, _ = model.fuse_selected(text, image, audio)
    assert selected.shape == (3, 3, 48) and full.shape == (2, 33, 48) and none is None
    assert torch.allclose(selected, fused.gather(1, query_index[:, :, None].expand(-1, -1, 48)), atol=1e-6)
    assert torch.allclose(full, fused[[2, 0]], atol=1e-6)
    assert torch.allclose(cls[:, 0], fused[:, 0], atol=1e-6)
    assert torch.equal(mask, mask2) and torch.equal(ids, ids2)


def test_output_attentions_shape_and_masked_columns():
    torch.manual_seed(0)
    model = OptTriModel._from_config(tiny_config(), attn_implementation="sdpa").eval()
    batch = _rows_missing_modalities()
    batch["attention_mask"][0, 6:] = 0
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
        plain = model(**batch)
    seq = out.last_hidden_state.shape[1]
    assert len(out.attentions) == 2  # one per cross-modal layer
    mask = out.fusion_attention_mask.bool()
    assert not mask[1, 1:11].any() and not mask[2, 11:28].any() and not mask[3, 28:].any()
    assert not mask[0, 7:11].any() and mask[0, :7].all()
    for weights in out.attentions:
        assert weights.shape == (4, 4, seq, seq)
        assert torch.allclose(weights.sum(-1), torch.ones(4, 4, seq), atol=1e-5)
        masked_columns = weights.permute(0, 3, 1, 2)[~mask]  # (masked positions, heads, queries)
        assert masked_columns.numel() > 0 and masked_columns.abs().max() < 1e-6
    # asking for the weights (eager path) does not change the result
    assert torch.allclose(out.pooler_output, plain.pooler_output, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Gradient checkpointing
# ----------------------------------------------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(batch):
    config = tiny_config()
    torch.manual_seed(0)
    plain = OptTriForPreTraining(config).train()
    checkpointed = OptTriForPreTraining(copy.deepcopy(config)).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.gradient_checkpointing_enable()
    layers = [m for m in checkpointed.modules() if isinstance(m, OptTriLayer)]
    assert layers and all(layer.gradient_checkpointing for layer in layers)
    assert not any(m.gradient_checkpointing for m in plain.modules() if isinstance(m, OptTriLayer))

    layer_calls = {"n": 0}

    def count(*_):
        layer_calls["n"] += 1

    for module in checkpointed.modules():
        if isinstance(module, OptTriLayer):  # a child: it runs again when the checkpointed layer is recomputed
            module.self_attn.register_forward_hook(count)

    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(123)  # the masking (and BERT's dropout) draw from torch's global RNG
        out = model(**batch)
        forward_calls = layer_calls["n"]
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (out_a, grads_a), (out_b, grads_b) = results
    assert layer_calls["n"] > forward_calls > 0, "gradient checkpointing did not recompute any layer"
    active = {name for name, weight in config.objectives.items() if weight > 0}
    assert out_a.losses().keys() == out_b.losses().keys()
    assert active - {"dtr"} <= out_a.losses().keys() <= active  # DTR only when a text happens to be dropped
    for name, value in out_a.losses().items():
        assert value == pytest.approx(out_b.losses()[name], abs=1e-6), name
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 100
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=1e-4), name


# ----------------------------------------------------------------------------------------------------------------------
# Initialisation from unimodal checkpoints
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unimodal_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("unimodal")
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(vocab_size=100, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40,
                   max_position_embeddings=64)
    )
    vit = ViTModel(
        ViTConfig(image_size=32, patch_size=8, hidden_size=40, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=48)
    )
    ast = ASTModel(
        ASTConfig(hidden_size=36, num_hidden_layers=3, num_attention_heads=3, intermediate_size=44, num_mel_bins=16,
                  max_length=32, patch_size=4, frequency_stride=4, time_stride=4)
    )
    for name, model in (("bert", bert), ("vit", vit), ("ast", ast)):
        model.save_pretrained(root / name)
    return root, bert.eval(), vit.eval(), ast.eval()


def test_from_unimodal_pretrained_copies_the_encoders(unimodal_checkpoints, tmp_path, batch):
    root, bert, vit, ast = unimodal_checkpoints
    model = OptTriForPreTraining.from_unimodal_pretrained(
        text=str(root / "bert"), vision=str(root / "vit"), audio=str(root / "ast"), config=tiny_config()
    ).eval()
    base = model.opt_tri
    assert (model.config.text_config.hidden_size, model.config.vision_config.hidden_size) == (24, 40)
    assert model.config.audio_config.hidden_size == 36 and model.config.audio_config.num_hidden_layers == 3

    for name, source, target in (("text", bert, base.text_model), ("vision", vit, base.vision_model)):
        target_state = target.state_dict()
        compared = 0
        for key, value in source.state_dict().items():
            if key.startswith("pooler."):
                continue
            assert torch.equal(target_state[key], value), f"{name}: {key}"
            compared += 1
        assert compared > 10

    # AST is a tower of its own (issue 16): its weights are AST's, and it computes what the AST checkpoint computes
    assert base.audio_model.state_dict().keys() == ast.state_dict().keys()
    for key, value in ast.state_dict().items():
        assert torch.equal(base.audio_model.state_dict()[key], value), key
    batch = {**{k: v for k, v in batch.items() if not k.startswith(("input_features", "audio_"))},
             "input_features": torch.randn(4, 32, 16, generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        states, token_mask = base.encode_audio(batch["input_features"])
        theirs = ast(input_values=batch["input_features"])
    assert torch.allclose(states[:, 1:], theirs.last_hidden_state[:, 2:], atol=1e-6)
    assert torch.allclose(states[:, 0], theirs.pooler_output, atol=1e-6) and bool(token_mask.all())

    # the OPT-Tri text encoder computes exactly what the BERT checkpoint computes
    with torch.no_grad():
        ours = base.encode_text(batch["input_ids"], batch["attention_mask"])
        theirs = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        assert torch.allclose(ours[0], theirs[0], atol=1e-6)
        torch.manual_seed(0)
        before = model(**batch)

    # and the result saves and reloads like any OPT-Tri checkpoint
    model.save_pretrained(tmp_path)
    reloaded = OptTriForPreTraining.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.manual_seed(0)
        _assert_outputs_equal(before, reloaded(**batch), exact=False, atol=1e-6)  # float rounding only (see above)


def test_from_unimodal_pretrained_rejects_wrong_checkpoints(unimodal_checkpoints):
    root = unimodal_checkpoints[0]
    with pytest.raises(ValueError, match=r"vision_config is a 'bert' config; OPT-Tri's vision tower supports"):
        OptTriModel.from_unimodal_pretrained(vision=str(root / "bert"), config=tiny_config())
    with pytest.raises(ValueError, match=r"audio_config is a 'bert' config; OPT-Tri's audio tower supports"):
        OptTriModel.from_unimodal_pretrained(audio=str(root / "bert"), config=tiny_config())
    with pytest.raises(ValueError, match=r"audio_config is a 'vit' config"):  # no more ViT-into-audio surgery
        OptTriModel.from_unimodal_pretrained(audio=str(root / "vit"), config=tiny_config())


# ----------------------------------------------------------------------------------------------------------------------
# Input errors
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [OptTriModel, OptTriForPreTraining])
def test_input_errors(cls, batch):
    model = _model(cls)

    def run(**changes):
        inputs = dict(batch)
        inputs.update(changes)
        with torch.no_grad():
            return model(**{k: v for k, v in inputs.items() if v is not None})

    with pytest.raises(ValueError, match="No modality given"):
        model()
    with pytest.raises(ValueError, match="No modality given"):
        model(attention_mask=batch["attention_mask"], image_mask=batch["image_mask"])
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 3, 32, 32\); got \(4, 3, 28, 28\)"):
        run(pixel_values=torch.randn(4, 3, 28, 28))
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 3, 32, 32\); got \(4, 1, 32, 32\)"):
        run(pixel_values=torch.randn(4, 1, 32, 32))
    with pytest.raises(ValueError, match=r"pixel_values must have shape"):
        run(pixel_values=torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="pixel_values must be a floating-point tensor"):
        run(pixel_values=torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"16 mel bins.*got \(4, 20, 40\)"):
        run(input_features=torch.randn(4, 20, 40), audio_attention_mask=torch.ones(4, 40, dtype=torch.long))
    too_long = r"audio is too long: 260 frames give 65 audio tokens.*max_position_embeddings=64"
    with pytest.raises(ValueError, match=too_long):
        run(input_features=torch.randn(4, 16, 260), audio_attention_mask=torch.ones(4, 260, dtype=torch.long))
    run(input_features=torch.randn(4, 16, 256), audio_attention_mask=torch.ones(4, 256, dtype=torch.long))  # the limit
    too_big = batch["input_ids"].clone()
    too_big[0, 3] = 100
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 100\); got values in \[\d+, 100\]"):
        run(input_ids=too_big)
    negative = batch["input_ids"].clone()
    negative[1, 2] = -1
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 100\)"):
        run(input_ids=negative)
    with pytest.raises(ValueError, match=r"batch sizes of the modalities do not match.*'pixel_values': 3"):
        run(pixel_values=torch.randn(3, 3, 32, 32), image_mask=None)
    with pytest.raises(ValueError, match=r"batch sizes of the modalities do not match.*'input_features': 5"):
        run(input_features=torch.randn(5, 16, 40), audio_attention_mask=None)
    if cls is OptTriForPreTraining:
        with pytest.raises(ValueError, match=r"Unknown pre-training tasks \['mim'\]"):
            run(tasks=["mlm", "mim"])
