"""
The `transformers` model contract, checked on every non-generating OPT-Tri head: our own version of the checks of
`ModelTesterMixin` (transformers' `tests/test_modeling_common.py`) that apply to a tri-modal encoder, with the
per-tower outputs of FLAVA / BLIP.

Covered for OptTriModel, OptTriAudioModel, OptTriForPreTraining, OptTriForSequenceClassification,
OptTriForQuestionAnswering, OptTriForRetrieval and OptTriForPairReasoning: determinism in eval, save/load equality,
batching equivalence (a batch against each row alone), hidden states and attentions (counts, shapes, per tower,
selected layers, `return_dict=False`), eager against SDPA on every output, run-time `set_attn_implementation`,
the feature getters, `_no_split_modules`, and one training step with gradient checkpointing that gives every
parameter a gradient (or lists why not).

Checks of the mixin left out, and the CLIP / FLAVA test that skips the same check (read in the transformers
repository's tests/models/{clip,flava}; the 5.25 source release ships only tests/test_modeling_common.py):
- `inputs_embeds` (test_inputs_embeds, test_inputs_embeds_matches_input_ids): no single embedding matrix feeds a
  tri-modal model. CLIPModelTest: "Inputs_embeds is tested in individual model tests"; FlavaModelTest: "tested in
  individual model tests".
- `retain_grad` of hidden states / attentions (test_retain_grad_hidden_states_attentions). CLIPModelTest:
  "Retain_grad is tested in individual model tests"; FlavaModelTest: "tested in individual model tests".
- resizing embeddings, pruning, head masking: `test_resize_embeddings = False`, `test_pruning = False`,
  `test_head_masking = False` in CLIPModelTest and FlavaModelTest (token-embedding resizing of the heads with a
  decoder is covered by tests/test_contract_generation.py).
- torchscript tracing: FlavaForPreTrainingTest sets `test_torchscript = False`.
- flash attention, compile, model parallelism, disk/CPU offload, tensor-parallel plans: GPU- or accelerator-only
  mixin tests (`require_torch_gpu` / `require_flash_attn` / multi-GPU), not run on this CPU-only suite.
"""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AttentionInterface
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from conftest import tiny_batch, tiny_config
from modeling_opt_tri import (
    OptTriAudioModel,
    OptTriForPairReasoning,
    OptTriForPreTraining,
    OptTriForQuestionAnswering,
    OptTriForRetrieval,
    OptTriForSequenceClassification,
    OptTriModel,
)
from modeling_opt_tri.modeling_opt_tri import eager_attention_forward

HEADS = ["model", "audio", "pretraining", "classification", "qa", "retrieval", "pair"]
TEXT_LAYERS = VISION_LAYERS = AUDIO_LAYERS = FUSION_LAYERS = 2  # tiny_config


pytestmark = pytest.mark.usefixtures("one_thread")


def _build(head: str, **config_overrides):
    torch.manual_seed(0)
    config = tiny_config(**config_overrides)
    if head == "model":
        return OptTriModel(config)
    if head == "audio":
        return OptTriAudioModel(config.audio_config)
    if head == "pretraining":
        return OptTriForPreTraining(config)
    if head in ("classification", "qa"):
        config.num_labels = 3
        return (OptTriForSequenceClassification if head == "classification" else OptTriForQuestionAnswering)(config)
    if head == "retrieval":
        return OptTriForRetrieval(config)
    return OptTriForPairReasoning(config)


def _inputs(head: str, batch: int = 4, with_labels: bool = True) -> dict:
    data = tiny_batch(batch=batch)
    if head == "audio":
        return {"input_features": data["input_features"], "audio_attention_mask": data["audio_attention_mask"]}
    labels = torch.arange(batch) % 3
    if head in ("classification", "qa"):
        return {**data, "labels": labels} if with_labels else data
    if head == "retrieval":
        return {**data, "return_loss": True}
    if head == "pair":
        g = torch.Generator().manual_seed(1)
        pair = {
            "input_ids": data["input_ids"], "attention_mask": data["attention_mask"],
            "pixel_values": torch.randn(batch, 2, 3, 32, 32, generator=g),
        }
        return {**pair, "labels": labels % 2} if with_labels else pair
    return data


def _tensors(output, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of an output, nested outputs and tuples included, by a dotted name."""
    found = {}
    items = output.items() if isinstance(output, (ModelOutput, dict)) else enumerate(output)
    for key, value in items:
        name = f"{prefix}{key}"
        if torch.is_tensor(value):
            found[name] = value
        elif isinstance(value, (ModelOutput, dict, tuple, list)):
            found.update(_tensors(value, name + "."))
    return found


def _assert_same(a: dict, b: dict, atol: float = 0.0, skip=()):
    assert a.keys() == b.keys(), a.keys() ^ b.keys()
    compared = 0
    for name in a:
        if any(re.search(pattern, name) for pattern in skip):
            continue
        x, y = a[name].float(), b[name].float()
        assert x.shape == y.shape, name
        if atol == 0.0:
            assert torch.equal(x, y), f"{name} differs by {(x - y).abs().max():.3g}"
        else:
            torch.testing.assert_close(x, y, atol=atol, rtol=1e-4, msg=name)
        compared += 1
    assert compared > 0
    return compared


def _run(model, inputs, **kwargs):
    with torch.no_grad():
        return model(**inputs, **kwargs)


# ---- determinism, save / load ------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS)
def test_eval_outputs_are_deterministic(head):
    """Two identical calls in eval() agree exactly (the pre-training masks and the ITM negatives included)."""
    model = _build(head).eval()
    inputs = _inputs(head)
    _assert_same(_tensors(_run(model, inputs)), _tensors(_run(model, inputs)))


@pytest.mark.parametrize("head", ["pretraining", "retrieval"])
def test_a_generator_makes_random_draws_reproducible_in_both_modes(head):
    """`generator` drives every random draw: the same seed gives the same outputs in train() and eval() (dropout
    off), different seeds give different losses, and eval() leaves torch's global RNG alone."""
    model = _build(head)
    for module in model.modules():  # train mode without dropout: only the generator's draws are random
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    inputs = _inputs(head)

    def call(seed):
        return _tensors(_run(model, inputs, generator=torch.Generator().manual_seed(seed)))

    model.train()
    _assert_same(call(1), call(1))
    model.eval()
    _assert_same(call(1), call(1))
    assert not torch.equal(call(1)["loss"], call(2)["loss"]), "the seed changes nothing: no random draw"
    state = torch.get_rng_state()
    _run(model, inputs)
    assert torch.equal(torch.get_rng_state(), state), "an eval() forward consumed the global RNG"


@pytest.mark.parametrize("head", HEADS)
def test_save_and_load_give_identical_outputs(head, tmp_path):
    model = _build(head).eval()
    inputs = _inputs(head)
    expected = _tensors(_run(model, inputs))
    model.save_pretrained(tmp_path)
    reloaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    _assert_same(expected, _tensors(_run(reloaded.eval(), inputs)), atol=1e-6)  # loaded tensors' layout: ~1e-8


@pytest.mark.parametrize("head", ["classification", "qa", "retrieval", "pair"])
def test_checkpoints_with_the_modules_a_head_no_longer_builds_load_quietly(head, tmp_path):
    """A checkpoint of the head written when it still built every base module (mask tokens, projections, the audio
    tower) loads without missing or unexpected keys, and the outputs do not depend on the dropped weights."""
    from safetensors.torch import load_file, save_file

    model = _build(head).eval()
    model.save_pretrained(tmp_path)
    full = OptTriModel(model.config).state_dict()
    state = load_file(tmp_path / "model.safetensors")
    old_only = {f"opt_tri.{k}": v for k, v in full.items() if f"opt_tri.{k}" not in state}
    assert old_only, "this head builds every base module"
    save_file({**state, **old_only}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    reloaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    inputs = _inputs(head)
    _assert_same(_tensors(_run(model, inputs)), _tensors(_run(reloaded.eval(), inputs)))


# ---- batching --------------------------------------------------------------------------------------------------


def _per_row(head: str, output) -> dict[str, torch.Tensor]:
    """The outputs that belong to one row, with the batch first. Losses are batch statistics, and the (B, B)
    retrieval logits compare a row with the others, so only their diagonal belongs to a row."""
    if head == "retrieval":
        return {"diag": output.logits_per_query.diagonal()[:, None], "q": output.query_embeds, "g": output.gallery_embeds}
    if head == "pretraining":
        return {k: output[k] for k in ("text_embeds", "image_embeds", "audio_embeds")}
    if head in ("classification", "qa", "pair"):
        return {"logits": output.logits}
    return {k: v for k, v in _tensors(output).items() if v.ndim >= 2 and k != "modality_ids"}


@pytest.mark.parametrize("head", HEADS)
def test_batching_equivalence(head):
    """The outputs of a row do not depend on the other rows of its batch (ModelTesterMixin's batching check)."""
    model = _build(head).eval()
    inputs = _inputs(head, with_labels=False)
    inputs.pop("return_loss", None)
    batched = _per_row(head, _run(model, inputs))
    for row in range(4):
        alone = {k: v[row : row + 1] if torch.is_tensor(v) and v.ndim and v.shape[0] == 4 else v for k, v in inputs.items()}
        single = _per_row(head, _run(model, alone))
        _assert_same({k: v[row : row + 1] for k, v in batched.items()}, single, atol=1e-5)


# ---- hidden states and attentions -------------------------------------------------------------------------------

#: per head: the towers it reports, {field: (number of layers, hidden size, number of heads)}
TOWERS = {
    "model": ("text_outputs", "image_outputs", "audio_outputs", "cross_modal_outputs"),
    "pretraining": ("text_outputs", "image_outputs", "audio_outputs", "cross_modal_outputs"),
    "classification": ("text_outputs", "image_outputs", "audio_outputs", "cross_modal_outputs"),
    "qa": ("text_outputs", "image_outputs", "audio_outputs", "cross_modal_outputs"),
    "retrieval": ("text_outputs", "image_outputs"),
    "pair": ("text_outputs", "image_outputs", "cross_modal_outputs"),
}
SIZES = {"text_outputs": (2, 32, 2), "image_outputs": (2, 32, 2), "audio_outputs": (2, 32, 2),
         "cross_modal_outputs": (2, 48, 4)}


def _towers(head, output) -> dict[str, ModelOutput]:
    if head == "audio":
        return {"audio_outputs": output}
    return {name: output[name] for name in TOWERS[head]}


@pytest.mark.parametrize("head", HEADS)
def test_hidden_states_and_attentions_of_every_tower(head):
    model = _build(head, attn_implementation="eager").eval()
    inputs = _inputs(head)
    plain = _run(model, inputs)
    output = _run(model, inputs, output_hidden_states=True, output_attentions=True)
    towers = _towers(head, output)
    for name, tower in towers.items():
        assert tower is not None, name
        layers, hidden, heads = SIZES[name]
        length = tower.last_hidden_state.shape[1]
        rows = tower.last_hidden_state.shape[0]
        assert len(tower.hidden_states) == layers + 1 and len(tower.attentions) == layers, name
        assert all(h.shape == (rows, length, hidden) for h in tower.hidden_states), name
        assert all(a.shape == (rows, heads, length, length) for a in tower.attentions), name
        assert torch.allclose(tower.attentions[0].sum(-1), torch.ones(()), atol=1e-5), name  # softmax rows
    full, default = _tensors(output), _tensors(plain)
    _assert_same(default, {k: full[k] for k in default}, atol=1e-5)  # asking for more changes no default output
    if head != "audio":
        assert all(plain.get(name) is None for name in TOWERS[head]), "tower outputs returned unasked"
    if head in ("model", "classification", "qa", "pair"):  # the cross-modal fields these outputs already had
        assert len(output.hidden_states) == FUSION_LAYERS + 1 and len(output.attentions) == FUSION_LAYERS
        assert output.hidden_states[-1] is output.cross_modal_outputs.hidden_states[-1]


@pytest.mark.parametrize("head", HEADS)
def test_output_hidden_states_selects_layers(head):
    """`output_hidden_states=[0, -1]` keeps those states (equal to the full run's) and `None` elsewhere, as
    transformers >= 5 does; a bad index raises a ValueError naming the argument."""
    model = _build(head).eval()
    inputs = _inputs(head)
    full = _towers(head, _run(model, inputs, output_hidden_states=True))
    picked = _towers(head, _run(model, inputs, output_hidden_states=[0, -1]))
    for name, tower in picked.items():
        states, reference = tower.hidden_states, full[name].hidden_states
        assert len(states) == len(reference), name
        kept = [i for i, h in enumerate(states) if h is not None]
        assert kept == [0, len(states) - 1], (name, kept)
        for i in kept:
            assert torch.equal(states[i], reference[i]), name
    if head in ("model", "audio"):
        with pytest.raises(ValueError, match="output_hidden_states"):
            _run(model, inputs, output_hidden_states=[7])


@pytest.mark.parametrize("head", HEADS)
def test_return_dict_false_gives_the_same_tensors(head):
    model = _build(head, attn_implementation="eager").eval()
    inputs = _inputs(head)
    kwargs = dict(output_hidden_states=True, output_attentions=True)
    as_dict = _run(model, inputs, **kwargs)
    as_tuple = _run(model, inputs, return_dict=False, **kwargs)
    assert isinstance(as_tuple, tuple)
    flat_dict = [v for v in _tensors(as_dict).values()]
    flat_tuple = [v for v in _tensors(as_tuple).values()]
    assert len(flat_dict) == len(flat_tuple)
    assert all(torch.equal(a, b) for a, b in zip(flat_dict, flat_tuple))


# ---- attention implementations ------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS)
def test_eager_and_sdpa_agree_on_every_output(head):
    """Every output (the per-tower hidden states included) agrees between SDPA and eager attention. Attention
    weights are left out: SDPA does not compute them (transformers' test_eager_matches_sdpa_inference compares
    hidden states and logits only)."""
    model = _build(head, attn_implementation="sdpa").eval()
    inputs = _inputs(head)
    sdpa = _tensors(_run(model, inputs, output_hidden_states=True))
    model.set_attn_implementation("eager")
    eager = _tensors(_run(model, inputs, output_hidden_states=True))
    _assert_same(sdpa, eager, atol=1e-5)


@pytest.mark.parametrize("head", HEADS)
def test_set_attn_implementation_switches_every_attention_at_run_time(head):
    """After `set_attn_implementation`, every attention module of a built model (the towers, the audio and
    cross-modal encoders) calls the newly chosen function."""
    calls = []

    def counting_attention(module, *args, **kwargs):
        calls.append(type(module).__name__)
        return eager_attention_forward(module, *args, **kwargs)

    AttentionInterface.register("opt_tri_counting", counting_attention)
    model = _build(head, attn_implementation="sdpa").eval()
    inputs = _inputs(head)
    _run(model, inputs)
    assert not calls
    model.set_attn_implementation("opt_tri_counting")
    _run(model, inputs)
    assert "OptTriAttention" in calls
    if head != "audio":  # the text and vision towers (transformers' BERT and ViT) switch too
        assert any(name.startswith("Bert") for name in calls) and any(name.startswith("ViT") for name in calls), calls
    audio_attention = model if head == "audio" else getattr(model.base_model, "audio_model", None)
    if audio_attention is not None:
        layers = audio_attention.encoder.layers
        assert all(layer.self_attn.config._attn_implementation == "opt_tri_counting" for layer in layers)
    calls.clear()
    model.set_attn_implementation("sdpa")
    _run(model, inputs)
    assert not calls


def test_set_attn_implementation_reaches_the_decoder_attention():
    model = _build("pretraining", attn_implementation="sdpa").train()
    seen = []

    def counting_attention(module, *args, **kwargs):
        seen.append(type(module).__name__)
        return eager_attention_forward(module, *args, **kwargs)

    AttentionInterface.register("opt_tri_counting_decoder", counting_attention)
    model.set_attn_implementation("opt_tri_counting_decoder")
    model.config.modality_mask_probability = 1.0  # the image is token-masked (kept); text dropped: DTR
    out = _run(model, _inputs("pretraining"), tasks=["mrfr", "dtr"], generator=torch.Generator().manual_seed(0))
    assert out.dtr_loss is not None and "OptTriDecoderAttention" in seen


@pytest.mark.parametrize("head", HEADS)
def test_no_split_modules_are_the_blocks_the_model_contains(head):
    model = _build(head)
    built = {type(m).__name__ for m in model.modules()}
    assert model._no_split_modules <= built, model._no_split_modules - built
    assert "OptTriLayer" in model._no_split_modules
    if head != "audio":
        assert {"BertLayer", "ViTLayer"} <= model._no_split_modules
    if head == "pretraining":
        assert "OptTriDecoderLayer" in model._no_split_modules


@pytest.mark.parametrize("name", ["OptTriForConditionalGeneration", "OptTriForTextToImage", "OptTriForTextToAudio"])
def test_no_split_modules_of_the_generating_heads_include_the_decoder_layer(name):
    import modeling_opt_tri

    torch.manual_seed(0)
    model = getattr(modeling_opt_tri, name)(tiny_config())
    built = {type(m).__name__ for m in model.modules()}
    assert "OptTriDecoderLayer" in model._no_split_modules and model._no_split_modules <= built
    assert "RobertaLayer" not in model._no_split_modules


# ---- feature getters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["model", "retrieval"])
def test_feature_getters_follow_the_clip_api(head):
    """`get_*_features` return a `BaseModelOutputWithPooling` whose `pooler_output` is the embedding the model uses
    (`forward`'s `*_embeds`), honour `output_hidden_states` / `output_attentions`, and give a tuple with
    `return_dict=False`."""
    model = _build(head, attn_implementation="eager").eval()
    data = tiny_batch()
    base = model.base_model
    forward = _run(base, data)
    calls = {
        "text": lambda **kw: model.get_text_features(data["input_ids"], data["attention_mask"], **kw),
        "image": lambda **kw: model.get_image_features(data["pixel_values"], **kw),
        "audio": lambda **kw: model.get_audio_features(data["input_features"], data["audio_attention_mask"], **kw),
    }
    for modality, call in calls.items():
        with torch.no_grad():
            out = call()
            full = call(output_hidden_states=True, output_attentions=True)
            as_tuple = call(return_dict=False)
        assert isinstance(out, BaseModelOutputWithPooling), modality
        torch.testing.assert_close(out.pooler_output, forward[f"{modality}_embeds"], atol=1e-6, rtol=0)
        torch.testing.assert_close(out.pooler_output.norm(dim=-1), torch.ones(4), atol=1e-5, rtol=0)
        assert out.hidden_states is None and out.attentions is None, modality
        assert len(full.hidden_states) == 3 and len(full.attentions) == 2, modality
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], out.pooler_output), modality



def test_feature_getters_refuse_unknown_keyword_arguments():
    """A misspelt or foreign mask name (CLAP's `attention_mask` for audio) raises instead of being ignored, which
    would silently embed the padding."""
    model = _build("model").eval()
    data = tiny_batch()
    with pytest.raises(TypeError, match="attention_mask"):
        model.get_audio_features(data["input_features"], attention_mask=data["audio_attention_mask"])
    with pytest.raises(TypeError, match="attention_masks"):
        model.get_text_features(data["input_ids"], attention_masks=data["attention_mask"])
    with pytest.raises(TypeError, match="image_mask"):
        model.get_image_features(data["pixel_values"], image_mask=data["image_mask"])
    retrieval = _build("retrieval").eval()
    with pytest.raises(TypeError, match="attention_mask"):
        retrieval.get_audio_features(data["input_features"], attention_mask=data["audio_attention_mask"])

# ---- training ---------------------------------------------------------------------------------------------------

#: parameters that one training step of a head with its default objectives leaves without a gradient, and why
NO_GRADIENT = {
    "model": {
        r"embeddings\.mask_token$": "masked modelling only: used when image/audio_bool_masked_pos is given",
        r"^logit_scale$": "the contrastive temperature of the heads that hold this model; its forward has no loss",
    },
    "audio": {r"embeddings\.mask_token$": "masked audio modelling only: used when bool_masked_pos is given"},
    "pretraining": {
        r"^mrc_head\.": "MRC / MRC-kl: weight 0 by default (they need the image tokenizer's codes)",
        r"^image_(decoder|head)\.": "DIR: weight 0 by default (it needs the image tokenizer's codes)",
        r"^audio_(decoder|head)\.": "DAR: weight 0 by default (it needs the audio tokenizer's codes)",
    },
    "classification": {
        r"_projection\.weight$|logit_scale$": "CoOp prompt tuning (enable_prompt_tuning) compares projected "
        "embeddings; it may be switched on after loading, so a pre-trained checkpoint's projections are kept",
    },
}


def _without_gradient(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]


def _train_step(head, model, inputs):
    if head == "retrieval":  # the towers of one call are its (query, gallery) pair: run every pair
        for query, gallery in (("text", "image"), ("text", "audio"), ("image", "audio")):
            model(**inputs, query_modality=query, gallery_modality=gallery).loss.backward()
        return
    out = model(**inputs)
    loss = out.loss if getattr(out, "loss", None) is not None else sum(v.float().sum() for v in _tensors(out).values()
                                                                      if v.is_floating_point())
    assert torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("head", HEADS)
def test_a_training_step_with_gradient_checkpointing_reaches_every_parameter(head):
    model = _build(head).train()
    model.gradient_checkpointing_enable()
    _train_step(head, model, _inputs(head))
    allowed = NO_GRADIENT.get(head, {})
    unexplained = [n for n in _without_gradient(model) if not any(re.search(p, n) for p in allowed)]
    assert not unexplained, unexplained
    for pattern, reason in allowed.items():  # every listed exception is real (and still needed)
        assert any(re.search(pattern, n) for n in _without_gradient(model)), (pattern, reason)


def test_every_pretraining_parameter_learns_with_every_objective_on():
    """The parameters the default objectives leave alone belong to the objectives switched off: with every
    objective on (and the VQ codes they need), one step reaches every parameter."""
    from test_losses import _every_objective_inputs

    config, data = _every_objective_inputs()
    config.modality_mask_probability = 1.0  # every decoder gets rows to write (DTR, DIR, DAR)
    torch.manual_seed(0)
    model = OptTriForPreTraining(config).train()
    model.gradient_checkpointing_enable()
    seen = set()
    for seed in range(4):  # conditional masking: one modality per sample; a few draws cover every objective
        model.zero_grad()
        out = model(**data, generator=torch.Generator().manual_seed(seed))
        out.loss.backward()
        seen |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert not [n for n, _ in model.named_parameters() if n not in seen]


def test_masked_modelling_reaches_the_base_models_mask_tokens():
    model = _build("model").train()
    data = tiny_batch()
    out = model(**data, image_bool_masked_pos=torch.ones(4, 16, dtype=torch.bool),
                audio_bool_masked_pos=torch.ones(4, 10, dtype=torch.bool))
    out.last_hidden_state.sum().backward()
    assert model.vision_model.embeddings.mask_token.grad.abs().sum() > 0
    assert model.audio_model.embeddings.mask_token.grad.abs().sum() > 0
    head = _build("qa")
    with pytest.raises(ValueError, match="mask token"):
        head.opt_tri(**data, image_bool_masked_pos=torch.ones(4, 16, dtype=torch.bool))


def test_heads_that_do_not_build_a_module_say_so():
    pair = _build("pair")
    with pytest.raises(ValueError, match="without the audio tower"):
        pair.opt_tri(**tiny_batch())
    with pytest.raises(ValueError, match="without the retrieval projections"):
        _build("qa").opt_tri.get_text_features(tiny_batch()["input_ids"])


def test_fine_tuning_helpers_skip_the_towers_a_head_does_not_build():
    from modeling_opt_tri.training.finetune import freeze_bottom_layers

    frozen = freeze_bottom_layers(_build("pair"), 1)
    assert frozen and {name.split(".")[0] for name in frozen} == {"text_model", "vision_model"}


# ---- further ModelTesterMixin checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS)
def test_gradient_checkpointing_enable_disable(head):
    model = _build(head)
    layers = [m for m in model.modules() if hasattr(m, "gradient_checkpointing") and isinstance(m, torch.nn.Module)
              and type(m).__name__.endswith("Layer")]
    assert layers and not any(m.gradient_checkpointing for m in layers)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and all(m.gradient_checkpointing for m in layers)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing and not any(m.gradient_checkpointing for m in layers)


@pytest.mark.parametrize("head", HEADS)
def test_sub_models_share_the_composite_config(head):
    """Each tower's config is the composite config's sub-config object (test_internal_model_config_and_subconfig_are_same),
    so a change of one (e.g. the attention implementation) reaches the other."""
    model = _build(head)
    if head == "audio":
        assert model.encoder.layers[0].self_attn.config is model.config
        return
    base, config = model.base_model, model.config
    assert base.config is config
    assert base.text_model.config is config.text_config and base.vision_model.config is config.vision_config
    if base.audio_model is not None:
        assert base.audio_model.config is config.audio_config
    assert base.fusion_encoder.layers[0].self_attn.config is config.cross_modal_config


@pytest.mark.parametrize("head", HEADS)
def test_can_be_initialized_on_meta(head):
    config = tiny_config(num_labels=3)
    with torch.device("meta"):
        model = _build(head) if head == "audio" else type(_build(head))(config)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_classifier_loads_with_mismatched_label_count(tmp_path):
    model = _build("classification")
    model.save_pretrained(tmp_path)
    with pytest.raises(Exception, match="size mismatch|ignore_mismatched_sizes"):
        OptTriForSequenceClassification.from_pretrained(tmp_path, num_labels=5)
    reloaded = OptTriForSequenceClassification.from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True)
    assert reloaded.classifier.out_features == 5
    assert torch.equal(reloaded.opt_tri.fusion_cls_token, model.opt_tri.fusion_cls_token)


def test_audio_model_input_embeddings():
    model = _build("audio")
    stem = model.get_input_embeddings()
    assert stem is model.embeddings.patch_embedding and isinstance(stem, torch.nn.Conv1d)
