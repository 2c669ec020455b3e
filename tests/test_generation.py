"""Text decoder and generate(): cached == uncached greedy, beam search, sampling, save/load, DTR wiring."""

from __future__ import annotations

import torch

from conftest import tiny_batch, tiny_config
from modeling_opt_tri import OptTriForPreTraining
from modeling_opt_tri.modeling_opt_tri import OptTriForConditionalGeneration

DECODER = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=40, bos_token_id=2, eos_token_id=3, pad_token_id=0)


def _model(seed: int = 0) -> OptTriForConditionalGeneration:
    torch.manual_seed(seed)
    return OptTriForConditionalGeneration(tiny_config(text_decoder_config=DECODER)).eval()


def test_config_text_decoder_and_get_text_config():
    config = tiny_config(text_decoder_config=DECODER)
    assert config.get_text_config(decoder=True) is config.text_decoder_config
    assert config.get_text_config() is config.text_config
    try:
        tiny_config(text_decoder_config=dict(DECODER, vocab_size=99))
    except ValueError as error:
        assert "vocab_size" in str(error)
    else:
        raise AssertionError("a decoder vocabulary different from the encoder's must be rejected")


def test_cached_generate_equals_uncached_greedy_decode():
    model = _model()
    batch = tiny_batch()
    cached = model.generate(pixel_values=batch["pixel_values"], max_new_tokens=12, do_sample=False)
    uncached = model.generate(pixel_values=batch["pixel_values"], max_new_tokens=12, do_sample=False, use_cache=False)
    ids = torch.full((4, 1), 2)
    for _ in range(cached.shape[1] - 1):  # a manual greedy loop without any cache
        logits = model(input_ids=ids, pixel_values=batch["pixel_values"], use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, ids)


def test_beam_search_sampling_and_audio_conditioning():
    model = _model()
    batch = tiny_batch()
    beams = model.generate(input_features=batch["input_features"], audio_attention_mask=batch["audio_attention_mask"],
                           max_new_tokens=6, num_beams=3, num_return_sequences=2)
    assert beams.shape[0] == 8 and beams[:, 0].eq(2).all()
    torch.manual_seed(1)
    a = model.generate(pixel_values=batch["pixel_values"], max_new_tokens=6, do_sample=True, top_k=5, top_p=0.9)
    torch.manual_seed(1)
    b = model.generate(pixel_values=batch["pixel_values"], max_new_tokens=6, do_sample=True, top_k=5, top_p=0.9)
    assert torch.equal(a, b)  # same seed, same samples


def test_teacher_forcing_loss_ignores_padding_and_trains():
    model = _model()
    model.train()
    batch = tiny_batch()
    labels = torch.randint(5, 100, (4, 8))
    labels[0, 5:] = -100
    out = model(pixel_values=batch["pixel_values"], labels=labels)
    assert torch.isfinite(out.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = model(pixel_values=batch["pixel_values"], labels=labels).loss
        first = float(loss) if first is None else first
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert float(loss) < first * 0.5
    model.eval()
    generated = model.generate(pixel_values=batch["pixel_values"], max_new_tokens=8, do_sample=False)
    # the memorised captions come back greedily
    assert (generated[1:, 1:9] == labels[1:, :8]).float().mean() > 0.6


def test_save_load_round_trip_and_load_from_pretraining_checkpoint(tmp_path):
    model = _model()
    batch = tiny_batch()
    model.save_pretrained(tmp_path / "gen")
    loaded = OptTriForConditionalGeneration.from_pretrained(tmp_path / "gen").eval()
    kwargs = dict(pixel_values=batch["pixel_values"], max_new_tokens=8, do_sample=False)
    assert torch.equal(model.generate(**kwargs), loaded.generate(**kwargs))
    torch.manual_seed(0)
    pretraining = OptTriForPreTraining(tiny_config(text_decoder_config=DECODER))
    pretraining.save_pretrained(tmp_path / "pre")
    from_pre = OptTriForConditionalGeneration.from_pretrained(tmp_path / "pre")
    assert torch.equal(from_pre.lm_head.weight, pretraining.lm_head.weight)
    assert torch.equal(from_pre.text_decoder.embed_tokens.weight, pretraining.text_decoder.embed_tokens.weight)


def test_dtr_reconstructs_text_only_when_text_is_dropped():
    torch.manual_seed(0)
    model = OptTriForPreTraining(tiny_config(text_decoder_config=DECODER, modality_mask_probability=0.9))
    computed = 0
    for seed in range(10):  # whether a row's text is dropped is random: over 10 draws of 8 rows some are
        torch.manual_seed(seed)
        out = model(**tiny_batch(8), tasks=["dtr"])
        assert out.mlm_loss is None
        if out.dtr_loss is not None:
            assert torch.isfinite(out.dtr_loss)
            computed += 1
    assert computed > 0
    # with no other modality the text can never be dropped, so DTR has nothing to do
    text_only = {k: v for k, v in tiny_batch(8).items() if k in ("input_ids", "attention_mask")}
    assert model(**text_only, tasks=["dtr"]).loss is None
