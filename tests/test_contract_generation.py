"""The `transformers` generation and vocabulary contract of OPT-Tri's generating heads, written as our own
equivalents of `GenerationTesterMixin` / `ModelTesterMixin` checks (transformers ships those mixins only in its source
tree; see the closing note of issue 13 for the checks transformers' BLIP/Whisper tests skip and why we skip the same).

Generating heads: captioning/ASR (`OptTriForConditionalGeneration`), text-to-image (`OptTriForTextToImage`) and
text-to-audio (`OptTriForTextToAudio`). Covered: `generate()` with attention masks in every decoding mode transformers
5 ships (greedy, sampling with a seed, beam search, beam sampling, prompt-lookup and assisted decoding), continuing
from a returned cache, left padding and batching, determinism in eval, save/load, hidden states and attentions
(decoder self- and cross-attention, and the encoder's through `encoder_outputs`), eager against SDPA on every output,
`resize_token_embeddings` then save/reload on every head, the generation plumbing (`prepare_inputs_for_generation`,
`shift_labels`, the deprecated `past_key_values=` name), the decoder configs, and clear errors for bad prompts.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_batch, tiny_config
from modeling_opt_tri import (
    OptTriConfig,
    OptTriForPreTraining,
    OptTriForTextToAudio,
    OptTriForTextToImage,
    OptTriModel,
)
from modeling_opt_tri.configuration_opt_tri import OptTriTextDecoderConfig
from modeling_opt_tri.modeling_opt_tri import (
    OptTriAudioModel,
    OptTriForConditionalGeneration,
    OptTriForPairReasoning,
    OptTriForQuestionAnswering,
    OptTriForRetrieval,
    OptTriForSequenceClassification,
)

GEOMETRY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
IMAGE = dict(codebook_size=16, grid_size=2, **GEOMETRY)  # 4 codes per image
AUDIO = dict(codebook_size=12, num_codes=6, **GEOMETRY)  # at most 6 codes per clip
BOS, EOS, PAD = 2, 3, 0  # tiny_config's text decoder ids
HEADS = ("caption", "image", "audio")
CLASSES = {"caption": OptTriForConditionalGeneration, "image": OptTriForTextToImage, "audio": OptTriForTextToAudio}


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(attn: str = "sdpa", **overrides) -> OptTriConfig:
    kwargs = dict(image_decoder_config=dict(IMAGE), audio_decoder_config=dict(AUDIO), num_labels=3)
    kwargs.update(overrides)
    config = tiny_config(**kwargs)
    config._attn_implementation = attn
    return config


def _model(head: str, attn: str = "sdpa", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return CLASSES[head](_config(attn, **overrides)).eval()


def _conditioning(head: str, batch: int = 3) -> dict[str, torch.Tensor]:
    """The conditioning inputs: an image and a clip for captioning/ASR, a text prompt for the code heads."""
    inputs = tiny_batch(batch)
    if head == "caption":
        return {k: inputs[k] for k in ("pixel_values", "input_features", "audio_attention_mask")}
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


def _decoder_prompts(batch: int = 3, length: int = 4, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (batch, length), generator=g)
    ids[:, 0] = BOS
    return ids


def _teacher_forcing_kwargs(head: str, model, batch: int = 3) -> dict[str, torch.Tensor]:
    """One forward pass's decoder inputs: a prompt (captioning) or a few codes (code heads)."""
    if head == "caption":
        return {"input_ids": _decoder_prompts(batch)}
    dc = model.decoder_config
    ids = torch.randint(0, dc.codebook_size, (batch, 4), generator=torch.Generator().manual_seed(2))
    ids[:, 0] = dc.bos_token_id
    return {"decoder_input_ids": ids}


def _generate(model, head: str, conditioning: dict, **kwargs):
    """`generate` of any generating head; returns the decoder ids `(B', length)`."""
    if head == "caption":
        out = model.generate(**conditioning, **kwargs)
        return out if torch.is_tensor(out) else out.sequences
    kwargs.setdefault("do_sample", False)
    return model.generate(**conditioning, **kwargs).sequences


# ----------------------------------------------------------------------------------------------------------------------
# generate() with masks in every decoding mode
# ----------------------------------------------------------------------------------------------------------------------

MODES = {
    "greedy": dict(do_sample=False),
    "sample": dict(do_sample=True, top_k=5, seed=0),
    "beam_search": dict(do_sample=False, num_beams=2),
    "beam_sample": dict(do_sample=True, num_beams=2, seed=0),
}


def _caption_mode_kwargs(mode: str) -> dict:
    kwargs = dict(MODES[mode])
    seed = kwargs.pop("seed", None)
    if seed is not None:
        torch.manual_seed(seed)
    return kwargs


@pytest.mark.parametrize("mode", list(MODES))
def test_caption_generate_with_a_mask_in_every_mode(mode):
    model = _model("caption")
    cond = _conditioning("caption")
    prompts = _decoder_prompts(3, 2)
    mask = torch.ones_like(prompts)
    with_mask = model.generate(**cond, input_ids=prompts, attention_mask=mask, max_new_tokens=4,
                               **_caption_mode_kwargs(mode))
    without = model.generate(**cond, input_ids=prompts, max_new_tokens=4, **_caption_mode_kwargs(mode))
    assert torch.equal(with_mask, without)  # an all-ones mask changes nothing (the seed is re-set for sampling)
    assert torch.equal(with_mask[:, :2], prompts) and with_mask.shape[1] <= 6
    if mode == "greedy":  # against a plain greedy loop over forward()
        ids = prompts
        for _ in range(with_mask.shape[1] - 2):
            logits = model(**cond, input_ids=ids, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
        finished = (ids[:, 2:] == EOS).cumsum(-1) > 0  # after EOS, generate pads
        finished = torch.cat([torch.zeros_like(finished[:, :1]), finished[:, :-1]], 1)
        assert torch.equal(with_mask[:, 2:].masked_fill(finished, 0), ids[:, 2:].masked_fill(finished, 0))


@pytest.mark.parametrize("head", ["image", "audio"])
@pytest.mark.parametrize("mode", list(MODES))
def test_code_generate_with_a_mask_in_every_mode(head, mode):
    model = _model(head)
    cond = _conditioning(head)
    kwargs = dict(MODES[mode])
    out = model.generate(**cond, **kwargs)
    again = model.generate(**cond, **kwargs)
    assert torch.equal(out.sequences, again.sequences)  # greedy, beams and seeded sampling repeat exactly
    dc = model.decoder_config
    assert int(out.codes.max()) < dc.codebook_size and bool((out.sequences[:, 0] == dc.bos_token_id).all())
    padded = dict(cond, attention_mask=cond["attention_mask"].clone())
    padded["attention_mask"][0, -3:] = 0  # the mask reaches the text encoder: a shorter prompt, other codes
    assert model.generate(**padded, **kwargs).sequences.shape[0] == out.sequences.shape[0]


def test_beam_search_returns_its_best_beams_with_their_scores():
    """With `length_penalty=0` a beam's score is the sum of its tokens' log-probabilities: rescore by teacher forcing."""
    model = _model("caption")
    cond = _conditioning("caption", 2)
    out = model.generate(**cond, max_new_tokens=4, num_beams=3, num_return_sequences=2, length_penalty=0.0,
                         return_dict_in_generate=True, output_scores=True, eos_token_id=None)
    sequences = out.sequences
    assert sequences.shape == (4, 5) and not torch.equal(sequences[0], sequences[1])
    expanded = {k: v.repeat_interleave(2, 0) for k, v in cond.items()}
    logits = model(**expanded, input_ids=sequences[:, :-1], use_cache=False).logits
    logprobs = logits.float().log_softmax(-1).gather(-1, sequences[:, 1:, None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(out.sequences_scores, logprobs, atol=1e-4, rtol=1e-4)
    assert bool((out.sequences_scores[0::2] >= out.sequences_scores[1::2]).all())


@pytest.mark.parametrize("decoding", ["prompt_lookup", "assisted"])
def test_prompt_lookup_and_assisted_decoding_match_greedy(decoding):
    model = _model("caption")
    cond = _conditioning("caption", 1)  # transformers' speculative decoding takes one row
    prompt = torch.tensor([[BOS, 7, 8, 7, 8]])
    greedy = model.generate(**cond, input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                            do_sample=False)
    extra = dict(prompt_lookup_num_tokens=2) if decoding == "prompt_lookup" else dict(assistant_model=_model("caption"))
    fast = model.generate(**cond, input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                          do_sample=False, **extra)
    assert torch.equal(fast, greedy)
    torch.manual_seed(0)  # speculative sampling: the prompt is kept and the length respected
    sampled = model.generate(**cond, input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                             do_sample=True, top_k=5, **extra)
    assert torch.equal(sampled[:, :5], prompt) and 5 < sampled.shape[1] <= 11


@pytest.mark.parametrize("head", ["image", "audio"])
def test_code_heads_prompt_lookup_matches_greedy(head):
    model = _model(head)
    cond = _conditioning(head, 1)
    greedy = model.generate(**cond, do_sample=False).sequences
    assert torch.equal(model.generate(**cond, do_sample=False, prompt_lookup_num_tokens=2).sequences, greedy)
    with pytest.raises(ValueError, match="assistant_model is not supported"):
        model.generate(**cond, do_sample=False, assistant_model=model)


# ----------------------------------------------------------------------------------------------------------------------
# The cache, left padding, batching
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS)
def test_forward_continued_from_a_cache_equals_a_fresh_run(head):
    model = _model(head)
    cond = _conditioning(head)
    decoder = _teacher_forcing_kwargs(head, model)
    (name, ids), = decoder.items()
    fresh = model(**cond, **{name: ids}, use_cache=False).logits
    first = model(**cond, **{name: ids[:, :2]}, use_cache=True)
    second = model(**cond, **{name: ids[:, 2:]}, cache=first.cache)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), fresh, atol=1e-5, rtol=1e-5)


def test_generate_continued_from_a_returned_cache_equals_a_fresh_run():
    model = _model("caption")
    cond = _conditioning("caption")
    prompts = _decoder_prompts(3, 3)
    mask = torch.ones_like(prompts)
    mask[0, :2] = 0  # a left-padded row too
    prompts[0, :2] = PAD
    prompts[0, 2] = BOS
    kwargs = dict(do_sample=False, return_dict_in_generate=True, output_scores=True, eos_token_id=None)
    fresh = model.generate(**cond, input_ids=prompts, attention_mask=mask, max_new_tokens=6, **kwargs)
    part = model.generate(**cond, input_ids=prompts, attention_mask=mask, max_new_tokens=3, **kwargs)
    mask = torch.cat([mask, torch.ones(3, 3, dtype=torch.long)], 1)
    rest = model.generate(**cond, input_ids=part.sequences, attention_mask=mask, cache=part.cache,
                          max_new_tokens=3, **kwargs)
    assert torch.equal(rest.sequences, fresh.sequences)
    torch.testing.assert_close(torch.stack(part.scores + rest.scores), torch.stack(fresh.scores), atol=1e-5, rtol=1e-5)


def _left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(attn):
    model = _model("caption", attn)
    cond = _conditioning("caption")
    prompts = [[BOS, 11, 12, 13, 14], [BOS, 21], [BOS, 31, 32]]
    ids, mask = _left_pad(prompts)
    batched = model.generate(**cond, input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                             eos_token_id=None)
    logits = model(**cond, input_ids=ids, attention_mask=mask).logits[:, -1]
    for row, prompt in enumerate(prompts):
        alone_cond = {k: v[row : row + 1] for k, v in cond.items()}
        alone = model.generate(**alone_cond, input_ids=torch.tensor([prompt]), max_new_tokens=5, do_sample=False,
                               eos_token_id=None)
        assert torch.equal(batched[row, -alone.shape[1]:], alone[0])
        alone_logits = model(**alone_cond, input_ids=torch.tensor([prompt])).logits[0, -1]
        torch.testing.assert_close(logits[row], alone_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["image", "audio"])
def test_code_heads_batch_generates_what_each_prompt_generates_alone(head):
    model = _model(head)
    cond = _conditioning(head)
    batched = model.generate(**cond, do_sample=False).sequences
    for row in range(3):
        alone = model.generate(**{k: v[row : row + 1] for k, v in cond.items()}, do_sample=False).sequences
        assert torch.equal(batched[row, : alone.shape[1]], alone[0])


# ----------------------------------------------------------------------------------------------------------------------
# Determinism, save/load, outputs, eager vs SDPA
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS)
def test_eval_is_deterministic_with_dropout_configured(head):
    dropout = dict(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    overrides = {"text_decoder_config": dict(tiny_config().text_decoder_config.to_dict(), **dropout)}
    if head != "caption":
        overrides[f"{head}_decoder_config"] = dict(IMAGE if head == "image" else AUDIO, **dropout)
    model = _model(head, **overrides)
    cond = _conditioning(head)
    decoder = _teacher_forcing_kwargs(head, model)
    assert torch.equal(model(**cond, **decoder).logits, model(**cond, **decoder).logits)
    seeded = dict(do_sample=True, seed=5) if head != "caption" else dict(do_sample=False, max_new_tokens=4)
    assert torch.equal(_generate(model, head, cond, **seeded), _generate(model, head, cond, **seeded))
    model.train()  # the dropout is real: training-mode calls differ
    assert not torch.equal(model(**cond, **decoder).logits, model(**cond, **decoder).logits)


@pytest.mark.parametrize("head", HEADS)
def test_save_load_gives_the_same_outputs_and_generations(head, tmp_path):
    model = _model(head)
    cond = _conditioning(head)
    decoder = _teacher_forcing_kwargs(head, model)
    model.save_pretrained(tmp_path)
    loaded = CLASSES[head].from_pretrained(tmp_path).eval()
    assert torch.equal(model(**cond, **decoder).logits, loaded(**cond, **decoder).logits)
    kwargs = dict(max_new_tokens=4) if head == "caption" else dict(do_sample=True, seed=3)
    assert torch.equal(_generate(model, head, cond, **kwargs), _generate(loaded, head, cond, **kwargs))


def _layers(model, head: str) -> int:
    return model.config.text_decoder_config.num_hidden_layers if head == "caption" else model.decoder_config.num_hidden_layers


@pytest.mark.parametrize("head", HEADS)
@torch.no_grad()
def test_hidden_states_and_attentions_of_decoder_and_encoder(head):
    model = _model(head)
    cond = _conditioning(head)
    decoder = _teacher_forcing_kwargs(head, model)
    out = model(**cond, **decoder, output_hidden_states=True, output_attentions=True)
    n, layers, batch = 4, _layers(model, head), 3
    states = out.encoder_hidden_states.shape[1]
    assert len(out.hidden_states) == layers + 1 and all(h.shape == (batch, n, 32) for h in out.hidden_states)
    assert len(out.attentions) == layers and all(a.shape == (batch, 2, n, n) for a in out.attentions)
    assert len(out.cross_attentions) == layers and all(a.shape == (batch, 2, n, states) for a in out.cross_attentions)
    for weights in out.attentions + out.cross_attentions:  # probabilities over the keys
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    causal = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
    assert all(float(a[..., causal].abs().max()) == 0.0 for a in out.attentions)
    cross_mask = out.encoder_states_mask[:, None, None, :] == 0
    with pytest.warns(FutureWarning, match="encoder_states_mask"):  # the old name of the output's mask, for one release
        assert out.encoder_attention_mask is out.encoder_states_mask
    assert all(float(a.masked_select(cross_mask.expand_as(a)).abs().max()) == 0.0 for a in out.cross_attentions)
    enc = out.encoder_outputs  # the encoder side, as OptTriModel returns it
    fusion_layers = model.config.cross_modal_config.num_hidden_layers
    assert len(enc.hidden_states) == fusion_layers + 1 and len(enc.attentions) == fusion_layers
    assert torch.equal(enc.last_hidden_state, out.encoder_hidden_states)
    plain = model(**cond, **decoder)
    assert plain.hidden_states is None and plain.attentions is None and plain.encoder_outputs.hidden_states is None
    torch.testing.assert_close(plain.logits, out.logits)  # asking for weights (eager) changes no output
    picked = model(**cond, **decoder, output_hidden_states=[0, -1]).hidden_states
    # as the encoders (and transformers): the full length, `None` where not selected
    assert len(picked) == len(out.hidden_states) and all(h is None for h in picked[1:-1])
    torch.testing.assert_close(picked[0], out.hidden_states[0])
    torch.testing.assert_close(picked[-1], out.hidden_states[-1])
    for index in (0, -1):  # a single index, as transformers accepts
        single = model(**cond, **decoder, output_hidden_states=index).hidden_states
        assert single is not None and len(single) == len(out.hidden_states)
        torch.testing.assert_close(single[index], out.hidden_states[index])
    with pytest.raises(ValueError, match="output_hidden_states must be a bool or indices"):
        model(**cond, **decoder, output_hidden_states=[len(out.hidden_states)])
    as_tuple = model(**cond, **decoder, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], plain.logits)


def test_config_output_flags_and_generate_outputs():
    model = _model("caption", "eager")  # transformers refuses config.output_attentions with SDPA
    model.config.output_attentions = True
    model.config.output_hidden_states = True
    cond = _conditioning("caption")
    out = model(**cond, input_ids=_decoder_prompts())
    assert out.attentions is not None and out.hidden_states is not None
    model.config.output_attentions = model.config.output_hidden_states = False
    generated = model.generate(**cond, max_new_tokens=3, do_sample=False, eos_token_id=None, return_dict_in_generate=True,
                               output_attentions=True, output_hidden_states=True, output_scores=True)
    assert len(generated.attentions) == 3 and len(generated.attentions[0]) == 2  # steps x layers
    assert generated.attentions[1][0].shape == (3, 2, 1, 2)  # one new query over the cache
    assert len(generated.hidden_states[0]) == 3 and len(generated.scores) == 3
    image = _model("image")
    codes = image.generate(**_conditioning("image"), do_sample=False, return_dict_in_generate=True,
                           output_scores=True, output_attentions=True)
    assert len(codes.generate_output.scores) == 4 and len(codes.generate_output.attentions) == 4


@pytest.mark.parametrize("head", HEADS)
def test_eager_and_sdpa_agree_on_every_output(head):
    sdpa = _model(head, "sdpa")
    eager = CLASSES[head](_config("eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    cond = _conditioning(head)
    decoder = _teacher_forcing_kwargs(head, sdpa)
    labels = dict(labels=decoder["input_ids"][:, 1:]) if head == "caption" else {}
    if head == "caption":
        decoder = {"input_ids": decoder["input_ids"][:, :-1]}
    a = sdpa(**cond, **decoder, **labels, output_hidden_states=True)
    b = eager(**cond, **decoder, **labels, output_hidden_states=True)
    for name in ("logits", "encoder_hidden_states"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=1e-5)
    for x, y in zip(a.hidden_states + a.encoder_outputs.hidden_states, b.hidden_states + b.encoder_outputs.hidden_states):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    if labels:
        torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-5)
    kwargs = dict(max_new_tokens=4, do_sample=False) if head == "caption" else dict(do_sample=False)
    assert torch.equal(_generate(sdpa, head, cond, **kwargs), _generate(eager, head, cond, **kwargs))


# ----------------------------------------------------------------------------------------------------------------------
# resize_token_embeddings on every head, then save and reload
# ----------------------------------------------------------------------------------------------------------------------

ALL_HEADS = (
    OptTriModel, OptTriForPreTraining, OptTriForConditionalGeneration, OptTriForTextToImage, OptTriForTextToAudio,
    OptTriForSequenceClassification, OptTriForQuestionAnswering, OptTriForRetrieval, OptTriForPairReasoning,
)


def _text_vocab_modules(model) -> list[torch.nn.Module]:
    """Every module over the text vocabulary that `model` has."""
    found = [model.base_model.get_input_embeddings()]
    for path in ("text_decoder.embed_tokens", "lm_head", "mlm_head.decoder"):
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if module is not None:
            found.append(module)
    return found


def _vocab_rows(module) -> int:
    return module.weight.shape[0]


@pytest.mark.parametrize("cls", ALL_HEADS, ids=lambda c: c.__name__)
def test_resize_token_embeddings_then_save_and_reload(cls, tmp_path):
    torch.manual_seed(0)
    model = cls(_config()).eval()
    before = {id(m): m.weight.detach().clone() for m in _text_vocab_modules(model)}
    code_head = model.get_output_embeddings().weight.clone() if cls in (OptTriForTextToImage, OptTriForTextToAudio) else None
    embeddings_type = type(model.get_input_embeddings())
    returned = model.resize_token_embeddings(110)
    assert returned is model.get_input_embeddings() and type(returned) is embeddings_type and _vocab_rows(returned) == 110
    for module in _text_vocab_modules(model):
        assert _vocab_rows(module) == 110
        assert torch.equal(module.weight[:100], before[id(module)][:100]) if id(module) in before else True
    assert model.config.text_config.vocab_size == model.config.text_decoder_config.vocab_size == 110
    if code_head is not None:  # the code vocabulary is the tokenizer's codebook: not resized
        assert torch.equal(model.get_output_embeddings().weight, code_head)
    ids = tiny_batch(2)["input_ids"]
    ids[:, -2] = 109  # a new token reads through the text encoder and the fusion
    assert torch.isfinite(model.base_model(input_ids=ids).last_hidden_state).all()
    model.save_pretrained(tmp_path)  # raised for captioning (shared tensor) before
    loaded = cls.from_pretrained(tmp_path).eval()  # raised for every head (vocab sizes disagreed) before
    assert loaded.config.text_decoder_config.vocab_size == 110
    reloaded = loaded.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded[name]), name
    shrunk = loaded.resize_token_embeddings(90, pad_to_multiple_of=8)  # 90 -> 96
    assert _vocab_rows(shrunk) == 96 and all(_vocab_rows(m) == 96 for m in _text_vocab_modules(loaded))


def test_resize_keeps_the_special_ids_and_refuses_models_without_text():
    model = OptTriForConditionalGeneration(_config())
    with pytest.raises(ValueError, match="uses ids up to 4"):
        model.resize_token_embeddings(4)  # the [MASK] id is 4
    audio = OptTriAudioModel(_config().audio_config)
    with pytest.raises(ValueError, match="no token embeddings"):
        audio.resize_token_embeddings(10)
    assert model.resize_token_embeddings() is model.get_input_embeddings()  # no size: nothing changes


def test_captioning_embedding_getters_and_setters_agree():
    model = _model("caption")
    new = torch.nn.Embedding(100, 32)
    model.set_input_embeddings(new)
    assert model.get_input_embeddings() is new and model.text_decoder.embed_tokens is new
    head = torch.nn.Linear(32, 100, bias=False)
    model.set_output_embeddings(head)
    assert model.get_output_embeddings() is head and model.lm_head is head
    for kind in ("image", "audio"):
        code = _model(kind)
        assert code.get_input_embeddings() is code.opt_tri.get_input_embeddings()  # the text prompt's
        new_head = torch.nn.Linear(32, code.decoder_config.vocab_size, bias=False)
        code.set_output_embeddings(new_head)
        assert code.code_head is new_head


# ----------------------------------------------------------------------------------------------------------------------
# Generation plumbing
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", HEADS)
def test_prepare_inputs_for_generation_passes_every_keyword_on(head):
    model = _model(head)
    ids = torch.full((2, 3), BOS if head == "caption" else model.decoder_config.bos_token_id)
    states = torch.randn(2, 5, 48)
    inputs = model.prepare_inputs_for_generation(
        ids, attention_mask=torch.ones_like(ids), encoder_hidden_states=states, output_attentions=True,
        output_hidden_states=[0], token_type_ids=None, use_cache=False,
    )
    prefix = "" if head == "caption" else "decoder_"
    assert torch.equal(inputs[f"{prefix}input_ids"], ids) and f"{prefix}attention_mask" in inputs
    assert inputs["output_attentions"] is True and inputs["output_hidden_states"] == [0]
    assert inputs["encoder_hidden_states"] is states
    out = model(**inputs)
    assert out.attentions is not None


def test_captioning_loss_uses_shift_labels():
    model = _model("caption")
    cond = _conditioning("caption")
    ids = _decoder_prompts(3, 5)
    targets = torch.randint(5, 100, (3, 5), generator=torch.Generator().manual_seed(4))
    targets[:, -1] = -100
    out = model(**cond, input_ids=ids, shift_labels=targets)
    expected = F.cross_entropy(out.logits.reshape(-1, 100), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    other = model(**cond, input_ids=ids, labels=torch.full_like(targets, 7), shift_labels=targets)
    torch.testing.assert_close(other.loss, expected)  # transformers' rule: shift_labels win
    with pytest.raises(ValueError, match="targets have shape"):
        model(**cond, input_ids=ids, shift_labels=targets[:, :3])


@pytest.mark.parametrize("head", HEADS)
def test_the_deprecated_past_key_values_name_warns_and_works(head):
    model = _model(head)
    cond = _conditioning(head)
    decoder = _teacher_forcing_kwargs(head, model)
    (name, ids), = decoder.items()
    first = model(**cond, **{name: ids[:, :2]}, use_cache=True)
    expected = model(**cond, **{name: ids}, use_cache=False).logits[:, 2:]
    with pytest.warns(FutureWarning, match="past_key_values.*deprecated"):
        old_name = model(**cond, **{name: ids[:, 2:]}, past_key_values=first.cache)
    torch.testing.assert_close(old_name.logits, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        model(**cond, **{name: ids[:, 2:]}, past_key_values=first.cache, cache=type(first.cache)())
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the current name does not warn
        model(**cond, **{name: ids[:, :2]}, cache=None)


# ----------------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size", [8, 60, 99, 103, 104, 30522])
def test_default_special_ids_fit_any_vocabulary(vocab_size):
    config = OptTriConfig(text_config=dict(vocab_size=vocab_size))  # raised for vocab_size < 104 before
    dc = config.text_decoder_config
    for token_id in (dc.bos_token_id, dc.eos_token_id, dc.pad_token_id, config.mask_token_id, *config.special_token_ids):
        assert 0 <= token_id < vocab_size
    assert len({dc.bos_token_id, dc.eos_token_id, dc.pad_token_id, config.mask_token_id}) == 4
    standalone = OptTriTextDecoderConfig(vocab_size=vocab_size)
    assert 0 <= standalone.bos_token_id < vocab_size and 0 <= standalone.eos_token_id < vocab_size
    if vocab_size > 103:  # BERT's ids where the vocabulary has them
        assert (dc.bos_token_id, dc.eos_token_id, config.mask_token_id) == (101, 102, 103)
    roberta = OptTriConfig(text_config=dict(model_type="roberta", vocab_size=vocab_size + 2, bos_token_id=0,
                                            eos_token_id=2, pad_token_id=1, hidden_size=32, num_attention_heads=2))
    rd = roberta.text_decoder_config  # the text encoder's own ids
    assert (rd.bos_token_id, rd.eos_token_id, rd.pad_token_id) == (0, 2, 1)


def test_composite_config_round_trips_and_each_sub_config_loads_alone(tmp_path):
    from modeling_opt_tri.configuration_opt_tri import OptTriAudioDecoderConfig, OptTriImageDecoderConfig

    config = _config()
    config.save_pretrained(tmp_path)
    loaded = OptTriConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    saved = config.to_dict()
    for key, sub_class in OptTriConfig.sub_configs.items():
        if sub_class.__name__ == "AutoConfig":
            continue
        alone = sub_class.from_pretrained(tmp_path)  # the image decoder's class read the audio decoder's before
        got, want = alone.to_dict(), dict(saved[key])
        got.pop("transformers_version", None)
        want.pop("transformers_version", None)
        assert got == want, key
        assert isinstance(alone, type(getattr(loaded, key)))
        alone.save_pretrained(tmp_path / key)
        assert sub_class.from_pretrained(tmp_path / key).to_dict() == alone.to_dict()
    assert isinstance(loaded.image_decoder_config, OptTriImageDecoderConfig)
    assert isinstance(loaded.audio_decoder_config, OptTriAudioDecoderConfig)
    assert loaded.audio_decoder_config.modality == "audio" and loaded.image_decoder_config.modality == "image"


# ----------------------------------------------------------------------------------------------------------------------
# Bad generation inputs (issue 14, item 15): each a clear ValueError
# ----------------------------------------------------------------------------------------------------------------------


def test_bad_caption_prompts_get_clear_errors():
    model = _model("caption")
    cond = _conditioning("caption")
    cases = (
        (dict(num_beams=0), "num_beams must be a positive int"),
        (dict(num_return_sequences=0), "num_return_sequences must be a positive int"),
        (dict(input_ids=torch.tensor([[BOS, 100]] * 3)), r"outside the decoder vocabulary \[0, 100\)"),
        (dict(input_ids=torch.tensor([[BOS, -1]] * 3)), "outside the decoder vocabulary"),
        (dict(input_ids=torch.full((2, 1), BOS)), "batch size 2 but the conditioning inputs have 3"),
        (dict(input_ids=torch.zeros(3, 0, dtype=torch.long)), "is empty"),
        (dict(input_ids=torch.full((3, 1), BOS), attention_mask=torch.ones(2, 1)), "attention_mask must have shape"),
    )
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            model.generate(**cond, max_new_tokens=2, **kwargs)
    with pytest.raises(ValueError, match="outside the decoder vocabulary"):
        model(**cond, input_ids=torch.tensor([[BOS, 250]] * 3))
    with pytest.raises(ValueError, match="must cover the cached and the new tokens"):
        model(**cond, input_ids=torch.full((3, 2), BOS), attention_mask=torch.ones(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="static .compileable. cache .StaticCache.* is not supported"):
        model.generate(**cond, max_new_tokens=2, cache_implementation="static")


@pytest.mark.parametrize("head", ["image", "audio"])
def test_bad_code_generation_settings_get_clear_errors(head):
    model = _model(head)
    cond = _conditioning(head)
    with pytest.raises(ValueError, match="num_beams must be a positive int"):
        model.generate(**cond, num_beams=0)
    with pytest.raises(ValueError, match=r"input_ids \(the text prompt\) must have shape \(B, L\) with L >= 1"):
        model.generate(input_ids=torch.zeros(3, 0, dtype=torch.long), attention_mask=torch.zeros(3, 0))
    with pytest.raises(ValueError, match="cannot be set for code generation"):
        model.generate(**cond, eos_token_id=1)
    with pytest.raises(ValueError, match="outside the decoder vocabulary"):
        model(**cond, decoder_input_ids=torch.full((3, 1), model.decoder_config.vocab_size))
    with pytest.raises(ValueError, match="batch size 2 but the conditioning inputs have 3"):
        model(**cond, decoder_input_ids=torch.full((2, 1), model.decoder_config.bos_token_id))
