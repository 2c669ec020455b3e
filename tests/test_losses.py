"""Pre-training losses and masking of OPT-Tri, one by one, then end to end.

Every loss must go down when its prediction moves toward its target, and must ignore padding and positions that
are not being predicted (DESIGN.md section 4: OPT's own losses got sign, negatives and padding wrong).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_batch, tiny_config
from modeling_opt_tri import PRETRAINING_OBJECTIVES, OptTriForPreTraining
from modeling_opt_tri.modeling_opt_tri import (
    MODALITIES,
    TRI_MATCHING_CLASSES,
    codes_by_patch,
    contrastive_loss,
    ipot_transport,
    itm_pairs,
    masked_frame_contrastive_loss,
    masked_regression_loss,
    mlm_loss,
    token_cross_entropy,
    wra_loss,
)
from modeling_opt_tri.modeling_opt_tri_fusion import FusionTokens


TS = torch.linspace(0.0, 1.0, 11)


pytestmark = pytest.mark.usefixtures("one_thread")


def _strictly_decreasing(values, what):
    values = [float(v) for v in values]
    assert all(b < a for a, b in zip(values, values[1:])), f"{what} does not fall monotonically: {values}"


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------------------
# MLM
# ----------------------------------------------------------------------------------------------------------------------


def test_mlm_loss_is_a_deprecated_alias_of_token_cross_entropy():
    logits, labels = torch.randn(2, 5, 11, generator=_gen()), torch.randint(11, (2, 5), generator=_gen(1))
    labels[0, :2] = -100
    with pytest.warns(FutureWarning, match="token_cross_entropy"):
        old = mlm_loss(logits, labels)
    assert torch.equal(old, token_cross_entropy(logits, labels))


def test_token_cross_entropy_falls_toward_target_and_ignores_unmasked():
    g = _gen()
    vocab = 50
    base = torch.randn(3, 7, vocab, generator=g)
    targets = torch.randint(vocab, (3, 7), generator=g)
    masked = torch.rand(3, 7, generator=g) < 0.4
    masked[0, 0] = True
    labels = targets.masked_fill(~masked, -100)
    ideal = 20.0 * F.one_hot(targets, vocab).float()
    losses = [token_cross_entropy((1 - t) * base + t * ideal, labels) for t in TS]
    _strictly_decreasing(losses, "token_cross_entropy")
    assert losses[-1] < 1e-3

    # equals the mean cross-entropy over the masked positions only
    expected = F.cross_entropy(base[masked], targets[masked])
    assert torch.allclose(token_cross_entropy(base, labels), expected)
    # logits at unmasked positions do not matter
    changed = base.clone()
    changed[~masked] = torch.randn(int((~masked).sum()), vocab, generator=g) * 10
    assert torch.equal(token_cross_entropy(changed, labels), token_cross_entropy(base, labels))


# ----------------------------------------------------------------------------------------------------------------------
# MRFR / MAFR (masked regression)
# ----------------------------------------------------------------------------------------------------------------------


def test_masked_regression_loss_falls_toward_target_and_ignores_unmasked():
    g = _gen(1)
    prediction = torch.randn(2, 6, 5, generator=g)
    target = torch.randn(2, 6, 5, generator=g)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, [1, 4]] = True
    mask[1, 2] = True
    losses = [masked_regression_loss((1 - t) * prediction + t * target, target, mask) for t in TS]
    _strictly_decreasing(losses, "masked_regression_loss")
    assert losses[-1] == 0.0
    expected = (prediction - target).pow(2).mean(-1)[mask].mean()
    assert torch.allclose(losses[0], expected)

    prediction2, target2 = prediction.clone(), target.clone()
    prediction2[~mask] = 1e3
    target2[~mask] = -1e3
    assert torch.equal(masked_regression_loss(prediction2, target2, mask), losses[0])
    # nothing masked: zero, not NaN
    assert masked_regression_loss(prediction, target, torch.zeros_like(mask)).item() == 0.0


# ----------------------------------------------------------------------------------------------------------------------
# MAC (masked audio frame contrastive)
# ----------------------------------------------------------------------------------------------------------------------


def _mac_setup(seed=2):
    g = _gen(seed)
    target = torch.randn(3, 6, 8, generator=g)
    prediction = torch.randn(3, 6, 8, generator=g)
    real = torch.zeros(3, 6, dtype=torch.bool)
    real[0, :] = True
    real[1, :4] = True
    real[2, :3] = True
    masked = torch.zeros(3, 6, dtype=torch.bool)
    masked[0, [1, 3]] = True
    masked[1, 2] = True
    return prediction, target, masked, real


def test_mac_falls_toward_true_frame():
    prediction, target, masked, real = _mac_setup()
    losses = [masked_frame_contrastive_loss((1 - t) * prediction + t * target, target, masked, real, 0.1) for t in TS]
    _strictly_decreasing(losses, "masked_frame_contrastive_loss")


def test_mac_positive_is_the_true_frame_and_the_sign_is_right():
    prediction, target, masked, real = _mac_setup()
    masked = torch.zeros_like(masked)
    masked[0, 2] = True  # one query: sample 0, position 2
    to_true, to_other = prediction.clone(), prediction.clone()
    to_true[0, 2] = target[0, 2]
    to_other[0, 2] = target[0, 4]  # another real frame of the same clip
    loss_true = masked_frame_contrastive_loss(to_true, target, masked, real, 0.1)
    loss_other = masked_frame_contrastive_loss(to_other, target, masked, real, 0.1)
    loss_start = masked_frame_contrastive_loss(prediction, target, masked, real, 0.1)
    assert loss_true < loss_start, (loss_true, loss_start)
    assert loss_other > loss_true + 1.0

    # closed form: -log softmax(cos / T) over the real frames of the query's own clip, positive = the true frame
    query = F.normalize(to_true[0, 2], dim=-1)
    candidates = F.normalize(target[0, real[0]], dim=-1)
    expected = -torch.log_softmax(candidates @ query / 0.1, dim=0)[2]
    assert torch.allclose(loss_true, expected, atol=1e-6)


def test_mac_padding_and_other_clips_are_never_candidates():
    prediction, target, masked, real = _mac_setup()
    masked = torch.zeros_like(masked)
    masked[1, 1] = True  # one query in clip 1, which has padding at positions 4, 5
    loss = masked_frame_contrastive_loss(prediction, target, masked, real, 0.1)

    # a padded frame identical to the prediction would be the best candidate if padding were a candidate
    padded = target.clone()
    padded[1, 4] = prediction[1, 1] * 3
    padded[1, 5] = -prediction[1, 1]
    assert torch.equal(masked_frame_contrastive_loss(prediction, padded, masked, real, 0.1), loss)

    # frames of other clips are not negatives either (OPT's negatives crossed sample boundaries)
    other_clips = target.clone()
    other_clips[0] = prediction[1, 1]
    other_clips[2] = -prediction[1, 1]
    assert torch.equal(masked_frame_contrastive_loss(prediction, other_clips, masked, real, 0.1), loss)

    # predictions at positions that are not masked do not count
    unmasked_changed = prediction.clone()
    unmasked_changed[~masked] = 100.0
    assert torch.equal(masked_frame_contrastive_loss(unmasked_changed, target, masked, real, 0.1), loss)

    # nothing masked: a zero that still back-propagates
    zero = masked_frame_contrastive_loss(prediction.requires_grad_(), target, torch.zeros_like(masked), real, 0.1)
    assert zero.item() == 0.0 and zero.requires_grad


# ----------------------------------------------------------------------------------------------------------------------
# Contrastive alignment
# ----------------------------------------------------------------------------------------------------------------------


def test_contrastive_loss_falls_as_pairs_align_and_ignores_invalid_rows():
    g = _gen(3)
    a = torch.eye(6, 8)[torch.randperm(6, generator=g)]  # orthonormal rows: b = a is the best possible alignment
    b0 = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(math.log(10.0))
    valid = torch.tensor([True, True, True, True, False, False])
    losses = [contrastive_loss(a, F.normalize((1 - t) * b0 + t * a, dim=-1), scale, valid) for t in TS]
    _strictly_decreasing(losses, "contrastive_loss")
    # symmetric in its two modalities
    assert torch.allclose(contrastive_loss(a, b0, scale, valid), contrastive_loss(b0, a, scale, valid))

    a2, b2 = a.clone(), b0.clone()
    a2[4:] = b0[:2]  # invalid rows made identical to valid partners: would change the loss if they counted
    b2[4:] = a[:2]
    assert torch.equal(contrastive_loss(a2, b2, scale, valid), contrastive_loss(a, b0, scale, valid))
    expected = contrastive_loss(a[:4], b0[:4], scale, torch.ones(4, dtype=torch.bool))
    assert torch.allclose(contrastive_loss(a, b0, scale, valid), expected)

    one = torch.tensor([True, False, False, False, False, False])
    scale_param = nn.Parameter(scale.clone())
    zero = contrastive_loss(a, b0, scale_param, one)
    assert zero.item() == 0.0 and zero.requires_grad


# ----------------------------------------------------------------------------------------------------------------------
# WRA (IPOT optimal transport)
# ----------------------------------------------------------------------------------------------------------------------


def test_ipot_plan_has_uniform_marginals_over_real_positions():
    g = _gen(4)
    cost = torch.rand(3, 6, 8, generator=g)
    x_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4]).bool()
    y_mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 8]).bool()
    plan = ipot_transport(cost, x_mask, y_mask)
    assert (plan >= 0).all()
    assert torch.allclose(plan.sum((1, 2)), torch.ones(3), atol=1e-4)
    rows, cols = plan.sum(2), plan.sum(1)
    x_expected = x_mask.float() / x_mask.sum(1, keepdim=True)
    y_expected = y_mask.float() / y_mask.sum(1, keepdim=True)
    assert torch.allclose(rows, x_expected, atol=2e-3), rows
    assert torch.allclose(cols, y_expected, atol=2e-3), cols
    # exactly zero on padding
    assert plan[~x_mask].abs().max() == 0.0
    assert plan.transpose(1, 2)[~y_mask].abs().max() == 0.0

    # mass goes where the cost is low: a zero-cost diagonal gets (almost) everything
    square = torch.ones(1, 5, 5) - torch.eye(5)[None]
    ones = torch.ones(1, 5, dtype=torch.bool)
    diagonal = ipot_transport(square, ones, ones).diagonal(dim1=1, dim2=2).sum()
    assert diagonal > 0.95


def test_wra_loss_falls_for_matched_pairs_rises_for_mismatched_and_ignores_padding():
    g = _gen(5)
    x = torch.randn(2, 5, 8, generator=g)
    y0 = torch.randn(2, 5, 8, generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    positive = torch.tensor([True, True])
    pos = [wra_loss(x, mask, (1 - t) * y0 + t * x, mask, positive) for t in TS]
    _strictly_decreasing(pos, "wra_loss (matched)")
    assert abs(float(pos[-1])) < 1e-4  # identical token sets: transport distance 0
    neg = [wra_loss(x, mask, (1 - t) * y0 + t * x, mask, ~positive) for t in TS]
    _strictly_decreasing(neg[::-1], "wra_loss (mismatched), as the pair becomes more alike")
    assert float(neg[0]) < 0  # can be negative: minimising it pushes mismatched pairs apart

    x_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    y_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]).bool()
    loss = wra_loss(x, x_mask, y0, y_mask, positive)
    x2, y2 = x.clone(), y0.clone()
    x2[~x_mask] = 50 * torch.randn(int((~x_mask).sum()), 8, generator=g)
    y2[~y_mask] = x[0, 0]
    assert torch.allclose(wra_loss(x2, x_mask, y2, y_mask, positive), loss, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# ITM and 5-way tri-modal matching: the labels agree with what was actually paired
# ----------------------------------------------------------------------------------------------------------------------


def _identity_states(n, dims=(("text", 3), ("image", 2), ("audio", 2))):
    """Unimodal 'states' whose every feature is the sample index, so a fused batch reveals which samples it mixes."""
    ids = torch.arange(n, dtype=torch.float32)
    return {
        m: (ids[:, None, None].expand(n, length, 4).clone(), torch.ones(n, length, dtype=torch.long))
        for m, length in dims
    }


def _composition_class(t, i, a):
    if t == i == a:
        return 0  # all_match
    if i == a and t != i:
        return 1  # image_audio_match
    if t == i and a != t:
        return 2  # text_image_match
    if t == a and i != t:
        return 3  # text_audio_match
    assert len({t, i, a}) == 3, (t, i, a)
    return 4  # none_match


def _patch_fusion(monkeypatch, model, fake_fuse):
    """Route every cross-modal call of `model` through the fake `fuse`: `fuse_selected`, and `fusion_tokens` /
    `fuse_tokens`, through which the matching objectives read the [CLS] (the fake tokens carry the states as is)."""
    monkeypatch.setattr(model.opt_tri, "fuse", fake_fuse)
    monkeypatch.setattr(model.opt_tri, "fuse_selected", _as_fuse_selected(fake_fuse))
    monkeypatch.setattr(
        model.opt_tri, "fusion_tokens", lambda m, part: FusionTokens(m, part[0], (part[0],) * 3, part[1])
    )

    def fuse_tokens(parts, cls_only=True):
        hidden, mask, _ = fake_fuse(**{part.modality: (part.embeddings, part.mask) for part in parts})
        return (hidden[:, :1] if cls_only else hidden), mask

    monkeypatch.setattr(model.opt_tri, "fuse_tokens", fuse_tokens)


def _as_fuse_selected(fake_fuse):
    """A stand-in for `fuse_selected` (the matching objectives read the [CLS] through it) built on a fake `fuse`."""

    def fuse_selected(text=None, image=None, audio=None, query_index=None, full_rows=None):
        assert query_index is None and full_rows is None  # the [CLS] only
        hidden, mask, ids = fake_fuse(text, image, audio)
        return hidden[:, :1], None, mask, ids

    return fuse_selected


def test_tri_matching_labels_match_the_triples_built(monkeypatch):
    assert TRI_MATCHING_CLASSES == (
        "all_match", "image_audio_match", "text_image_match", "text_audio_match", "none_match"
    )
    torch.manual_seed(0)
    model = OptTriForPreTraining(tiny_config())
    scale = {"value": 0.0}

    def fake_fuse(text=None, image=None, audio=None):
        t, i, a = (part[0][:, 0, 0].long() for part in (text, image, audio))
        classes = torch.tensor([_composition_class(*map(int, triple)) for triple in zip(t, i, a)])
        seen.update(classes.tolist())
        hidden = scale["value"] * F.one_hot(classes, 5).float()[:, None, :]  # fused [CLS] = scaled one-hot logits
        return hidden, None, None

    _patch_fusion(monkeypatch, model, fake_fuse)
    model.tri_matching_head = nn.Identity()
    seen = set()
    for n in (3, 4, 5, 8):
        states = _identity_states(n)
        valid = torch.ones(n, dtype=torch.bool)
        for seed in range(30):
            losses = []
            for s in (0.0, 2.0, 8.0, 30.0) if seed == 0 else (30.0,):
                scale["value"] = s
                torch.manual_seed(seed)
                losses.append(model.tri_matching(states, valid))
            if seed == 0:
                assert torch.allclose(losses[0], torch.tensor(math.log(5.0)))
            _strictly_decreasing(losses, f"tri-matching loss (n={n}, seed={seed})")
            assert losses[-1] < 1e-6, f"a tri-matching label disagrees with its triple (n={n}, seed={seed})"
    assert seen == set(range(5))


@pytest.mark.parametrize("rows_per_sample", [3, 1])
def test_itm_labels_and_hard_negatives(monkeypatch, rows_per_sample):
    torch.manual_seed(0)
    model = OptTriForPreTraining(tiny_config(itm_rows_per_sample=rows_per_sample))
    scale = {"value": 0.0}

    def fake_fuse(text=None, image=None, audio=None):
        parts = [p for p in (text, image, audio) if p is not None]
        assert len(parts) == 2
        match = (parts[0][0][:, 0, 0] == parts[1][0][:, 0, 0]).float()
        logits = scale["value"] * torch.stack([1 - match, match], dim=1)
        return logits[:, None, :], None, None

    _patch_fusion(monkeypatch, model, fake_fuse)
    model.itm_head = nn.Identity()
    n = 5
    states = _identity_states(n)
    g = _gen(6)
    embeds = {m: F.normalize(torch.randn(n, 16, generator=g), dim=-1) for m in MODALITIES}
    valid = torch.tensor([True, True, False, True, True])  # row 2 lacks one modality of the pair
    for a, b in (("text", "image"), ("text", "audio"), ("image", "audio")):
        for seed in range(20):
            losses = []
            for s in (0.0, 2.0, 8.0, 30.0) if seed == 0 else (30.0,):
                scale["value"] = s
                torch.manual_seed(seed)
                itm, wra = model.pair_matching(a, b, states, embeds, valid, want_wra=False)
                assert wra is None
                losses.append(itm)
            _strictly_decreasing(losses, f"ITM loss ({a}-{b}, seed {seed})")
            assert losses[-1] < 1e-6, "an ITM negative is the sample itself, or a positive is mismatched"

    # the hard negatives never use a row outside `valid`
    used = []

    def recording_fuse(text=None, image=None, audio=None):
        parts = [p for p in (text, image, audio) if p is not None]
        used.extend(int(v) for p in parts for v in p[0][:, 0, 0])
        return fake_fuse(text, image, audio)

    _patch_fusion(monkeypatch, model, recording_fuse)
    for seed in range(20):
        torch.manual_seed(seed)
        model.pair_matching("text", "image", states, embeds, valid, want_wra=False)
    assert 2 not in used and set(used) == {0, 1, 3, 4}


def test_itm_pairs_layouts():
    rows = torch.tensor([0, 2, 3, 5, 6, 7])
    neg_a, neg_b = rows.roll(1), rows.roll(-1)
    a, b, labels = itm_pairs(rows, neg_a, neg_b, 3)
    assert torch.equal(a, torch.cat([rows, rows, neg_a])) and torch.equal(b, torch.cat([rows, neg_b, rows]))
    assert labels.tolist() == [1] * 6 + [0] * 12
    torch.manual_seed(0)
    negatives = replaced_b = 0
    trials = 500
    for _ in range(trials):
        a, b, labels = itm_pairs(rows, neg_a, neg_b, 1)
        assert a.shape == b.shape == labels.shape == rows.shape  # one row per sample
        positive = labels == 1
        assert torch.equal(a[positive], rows[positive]) and torch.equal(b[positive], rows[positive])
        side_a, side_b = a != rows, b != rows
        assert torch.equal(side_a | side_b, ~positive) and not (side_a & side_b).any()  # one side replaced
        assert torch.equal(a[side_a], neg_a[side_a]) and torch.equal(b[side_b], neg_b[side_b])
        negatives += int((~positive).sum())
        replaced_b += int(side_b.sum())
    assert abs(negatives / (trials * len(rows)) - 0.5) < 0.03
    assert abs(replaced_b / negatives - 0.5) < 0.04
    with pytest.raises(ValueError, match="1 or 3"):
        itm_pairs(rows, neg_a, neg_b, 2)
    with pytest.raises(ValueError, match="itm_rows_per_sample must be 1 or 3"):
        tiny_config(itm_rows_per_sample=2)


@pytest.mark.parametrize("rows_per_sample", [3, 1])
def test_pretraining_itm_scores_rows_per_sample(monkeypatch, rows_per_sample):
    """The pre-training forward scores `itm_rows_per_sample` cross-modal rows per sample and pair for ITM."""
    torch.manual_seed(0)
    model = OptTriForPreTraining(tiny_config(itm_rows_per_sample=rows_per_sample))
    batch = tiny_batch(6)
    scored = []
    original = model.opt_tri.fuse_tokens

    def recording(parts, cls_only=True):
        if cls_only:  # the [CLS]-only calls: here ITM of text-image (WRA is not asked for)
            assert [part.modality for part in parts] == ["text", "image"]
            scored.append(parts[0].embeddings.shape[0])
        return original(parts, cls_only)

    monkeypatch.setattr(model.opt_tri, "fuse_tokens", recording)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"], tasks=["itm"])
    assert scored == [6 * rows_per_sample] and torch.isfinite(out.itm_loss)
    out.loss.backward()
    assert model.itm_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_itm_negative_sampling_mixes_hard_and_uniform(monkeypatch, fraction):
    """With `itm_hard_negative_fraction` f, a negative is the most similar other row with probability ~f (plus the
    uniform share), and every other row is drawn about equally often otherwise."""
    cfg = tiny_config(itm_rows_per_sample=3)  # the ALBEF layout: positives, then each text's image negative, ...
    cfg.itm_hard_negative_fraction = fraction
    model = OptTriForPreTraining(cfg)
    n = 6
    picked = []

    def recording_fuse(text=None, image=None, audio=None):
        picked.append(image[0][:, 0, 0].long())  # image rows: positives, the hard/uniform negatives, positives
        return torch.zeros(text[0].shape[0], 1, 2), None, None

    _patch_fusion(monkeypatch, model, recording_fuse)
    model.itm_head = nn.Identity()
    # embeddings: row i's nearest other row is i ^ 1 (pairs 0-1, 2-3, 4-5), with a large margin
    base = F.normalize(torch.randn(n // 2, 16, generator=_gen(3)), dim=-1)
    text = base.repeat_interleave(2, 0)
    embeds = {"text": text, "image": text.clone()}
    with torch.no_grad():
        model.opt_tri.logit_scale.fill_(math.log(100.0))
    states = _identity_states(n)
    valid = torch.ones(n, dtype=torch.bool)
    trials = 400
    torch.manual_seed(0)
    for _ in range(trials):
        model.pair_matching("text", "image", states, embeds, valid, want_wra=False)
    negatives = torch.stack([p[n : 2 * n] for p in picked])  # (trials, n): the image negative of each text
    rows = torch.arange(n)
    assert (negatives != rows).all(), "a negative was the sample itself"
    nearest = (negatives == (rows ^ 1)).float().mean().item()
    expected = fraction + (1 - fraction) / (n - 1)
    assert abs(nearest - expected) < 0.05, (fraction, nearest, expected)


# ----------------------------------------------------------------------------------------------------------------------
# Masking
# ----------------------------------------------------------------------------------------------------------------------


def test_mask_text_rate_8010_split_and_never_special_or_padding():
    config = tiny_config()
    model = OptTriForPreTraining(config)
    g = _gen(7)
    batch, length = 1000, 48
    input_ids = torch.randint(5, config.text_config.vocab_size, (batch, length), generator=g)
    input_ids[:, 0] = 2  # [CLS]
    lengths = torch.randint(10, length + 1, (batch,), generator=g)
    attention_mask = (torch.arange(length)[None] < lengths[:, None]).long()
    input_ids[torch.arange(batch), lengths - 1] = 3  # [SEP]
    sprinkle = torch.rand(batch, length, generator=g) < 0.05
    input_ids[sprinkle] = 1  # [UNK] is special too in this config
    input_ids[attention_mask == 0] = 0  # [PAD]
    rows = torch.ones(batch, dtype=torch.bool)
    rows[::5] = False  # rows not chosen for text masking this step

    torch.manual_seed(0)
    masked_ids, labels = model.mask_text(input_ids, attention_mask, rows)
    chosen = labels != -100
    special = torch.isin(input_ids, torch.tensor(config.special_token_ids))
    candidates = attention_mask.bool() & ~special & rows[:, None]

    assert not (chosen & ~candidates).any(), "masked a special token, a padding position or an unchosen row"
    assert torch.equal(masked_ids[~chosen], input_ids[~chosen]), "changed a position that is not a label"
    assert torch.equal(labels[chosen], input_ids[chosen])
    assert chosen[rows].any(1).all()

    rate = chosen.sum().item() / candidates.sum().item()
    assert abs(rate - config.mlm_probability) < 0.01, rate
    n = chosen.sum().item()
    to_mask = (masked_ids[chosen] == config.mask_token_id).float().mean().item()
    unchanged = (masked_ids[chosen] == input_ids[chosen]).float().mean().item()
    random = 1 - to_mask - unchanged
    assert n > 3000
    assert abs(to_mask - 0.8) < 0.03, to_mask
    assert abs(random - 0.1) < 0.025, random
    assert abs(unchanged - 0.1) < 0.025, unchanged


def test_mask_positions_never_picks_padding_and_at_least_one_per_row():
    g = _gen(8)
    batch, n = 300, 12
    real = torch.arange(n)[None] < torch.randint(0, n + 1, (batch,), generator=g)[:, None]  # some rows all padding
    rows = torch.rand(batch, generator=g) < 0.7
    for probability in (0.01, 0.15, 0.6):
        torch.manual_seed(1)
        chosen = OptTriForPreTraining.mask_positions(real, rows, probability)
        assert not (chosen & ~real).any()
        assert not chosen[~rows].any()
        has_candidates = rows & real.any(1)
        assert chosen[has_candidates].any(1).all()
        assert not chosen[rows & ~real.any(1)].any()
    rate = chosen.sum().item() / (real & rows[:, None]).sum().item()
    assert 0.5 < rate < 0.7, rate  # ~0.6, a little more from the one-per-row rule


def _random_presence(batch, seed):
    g = _gen(seed)
    present = {m: torch.rand(batch, generator=g) < 0.7 for m in MODALITIES}
    present["text"][0] = present["image"][0] = present["audio"][0] = False  # a row with nothing eligible
    return present


def test_conditional_masking_masks_exactly_one_modality_per_sample():
    model = OptTriForPreTraining(tiny_config(masking_policy="conditional"))
    present = _random_presence(200, 9)
    wanted = {m: True for m in MODALITIES}
    torch.manual_seed(0)
    picked = model.choose_masked_modalities(present, wanted)
    count = sum(picked[m].long() for m in MODALITIES)
    any_present = torch.stack([present[m] for m in MODALITIES], 1).any(1)
    assert torch.equal(count, any_present.long()), "conditional masking must pick exactly one modality per sample"
    for m in MODALITIES:
        assert not (picked[m] & ~present[m]).any()
        assert picked[m].sum() > 20  # each modality gets its turn
    # an objective that is off is never chosen
    picked = model.choose_masked_modalities(present, {"text": False, "image": True, "audio": True})
    assert not picked["text"].any()
    only_text = present["text"] & ~present["image"] & ~present["audio"]
    assert only_text.any() and not any(picked[m][only_text].any() for m in MODALITIES)


def test_joint_masking_masks_every_present_modality():
    model = OptTriForPreTraining(tiny_config(masking_policy="joint"))
    present = _random_presence(200, 10)
    wanted = {"text": True, "image": False, "audio": True}
    picked = model.choose_masked_modalities(present, wanted)
    for m in MODALITIES:
        assert torch.equal(picked[m], present[m] & wanted[m])


def test_modality_dropping_never_drops_everything_and_keeps_the_masked_modality():
    model = OptTriForPreTraining(tiny_config(masking_policy="conditional"))
    model.config.modality_mask_probability = 0.9
    present = _random_presence(400, 11)
    torch.manual_seed(0)
    keep = model.choose_masked_modalities(present, {m: True for m in MODALITIES})
    kept = model.drop_modalities(present, keep)
    any_present = torch.stack([present[m] for m in MODALITIES], 1).any(1)
    any_kept = torch.stack([kept[m] for m in MODALITIES], 1).any(1)
    assert torch.equal(any_kept, any_present), "a sample lost every modality"
    dropped = 0
    for m in MODALITIES:
        assert not (kept[m] & ~present[m]).any()
        assert torch.equal(kept[m] & keep[m], keep[m]), "the token-masked modality was dropped"
        dropped += (present[m] & ~kept[m]).sum().item()
    others = sum((present[m] & ~keep[m]).sum().item() for m in MODALITIES)
    assert 0.8 * others < dropped <= others  # ~0.9 of the droppable ones

    # with nothing token-masked, dropping still leaves every sample a modality
    nothing = {m: torch.zeros(400, dtype=torch.bool) for m in MODALITIES}
    kept = model.drop_modalities(present, nothing)
    assert torch.equal(torch.stack([kept[m] for m in MODALITIES], 1).any(1), any_present)

    model.config.modality_mask_probability = 0.0
    kept = model.drop_modalities(present, keep)
    assert all(torch.equal(kept[m], present[m]) for m in MODALITIES)


@pytest.mark.parametrize("policy", ["conditional", "joint"])
def test_forward_token_masking_policy(monkeypatch, policy):
    """In a real forward pass, the rows handed to text / image / audio masking follow the policy."""
    model = OptTriForPreTraining(tiny_config(masking_policy=policy)).eval()
    data = tiny_batch(batch=8)
    data["attention_mask"][5] = 0  # row 5 has no text
    data["image_mask"][6] = 0  # row 6 has no image
    data["audio_attention_mask"][7] = 0  # row 7 has no audio
    calls = {}
    original_text, original_positions = model.mask_text, OptTriForPreTraining.mask_positions

    def spy_text(input_ids, attention_mask, rows, generator=None):
        calls["text"] = rows.clone()
        return original_text(input_ids, attention_mask, rows, generator=generator)

    def spy_positions(real, rows, probability, generator=None):
        calls["image" if real.shape[1] == model.config.num_image_patches else "audio"] = rows.clone()
        return original_positions(real, rows, probability, generator=generator)

    monkeypatch.setattr(model, "mask_text", spy_text)
    monkeypatch.setattr(model, "mask_positions", spy_positions)
    for seed in range(5):
        calls.clear()
        with torch.no_grad():
            out = model(**data, tasks=["mlm", "mrfr", "mafr"], generator=torch.Generator().manual_seed(seed))
        rows = {m: calls.get(m, torch.zeros(8, dtype=torch.bool)) for m in MODALITIES}
        present = torch.ones(8, 3, dtype=torch.bool)
        present[5, 0] = present[6, 1] = present[7, 2] = False
        chosen = torch.stack([rows[m] for m in MODALITIES], 1)
        assert not (chosen & ~present).any(), "masked a modality the sample does not have"
        if policy == "conditional":
            assert torch.equal(chosen.sum(1), torch.ones(8, dtype=torch.long))
        else:
            assert torch.equal(chosen, present)
        if out.mlm_labels is not None:
            assert torch.equal((out.mlm_labels != -100).any(1), rows["text"])


# ----------------------------------------------------------------------------------------------------------------------
# Tasks and end-to-end training
# ----------------------------------------------------------------------------------------------------------------------


def test_tasks_select_the_objectives_computed(batch):
    config = tiny_config(masking_policy="joint")  # every present modality token-masked: every objective computed
    model = OptTriForPreTraining(config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(**batch, tasks=["mlm"])
    assert out.losses().keys() == {"mlm"}
    assert torch.equal(out.loss, config.objectives["mlm"] * out.mlm_loss)
    # logits for the masked tokens only
    assert out.mlm_logits.shape == (int((out.mlm_labels != -100).sum()), config.text_config.vocab_size)
    with torch.no_grad():
        out = model(**batch, tasks=["contrastive", "itm"])
    assert out.losses().keys() == {"contrastive", "itm"} and out.mlm_logits is None
    with torch.no_grad():
        out = model(**batch)
    computed = out.losses().keys()
    # every active objective that does not depend on a modality being dropped at random is computed (the VQ-code
    # objectives are off by default: they need a tokenizer's codes)
    active = {name for name, weight in config.objectives.items() if weight > 0}
    assert active == set(PRETRAINING_OBJECTIVES) - {"mrc", "mrc_kl", "dir", "dar"}
    assert active - {"dtr"} <= computed <= active
    expected = sum(config.objectives[k] * getattr(out, f"{k}_loss") for k in computed)
    assert torch.allclose(out.loss, expected)
    # a zero weight switches an objective off by default
    off = OptTriForPreTraining(tiny_config(objectives={"mlm": 1.0, "wra": 0.0})).eval()
    with torch.no_grad():
        assert off(**batch).losses().keys() == {"mlm"}


def _structured_batch(batch=4, frames=40):
    """tiny_batch, but with images whose patches repeat and audio whose tokens share half their mel bins, so that
    masked patches / frames can be inpainted from context; the other half of the audio bins differs per token, so
    that MAC has distinct candidates."""
    data = tiny_batch(batch=batch, frames=frames)
    g = _gen(1)
    patch = torch.randn(batch, 3, 1, 1, 8, 8, generator=g).expand(batch, 3, 4, 4, 8, 8)
    data["pixel_values"] = patch.permute(0, 1, 2, 4, 3, 5).reshape(batch, 3, 32, 32).contiguous()
    tokens = torch.randn(batch, 16, frames // 4, 4, generator=g)
    tokens[:, :8] = tokens[:, :8, :1]
    data["input_features"] = tokens.reshape(batch, 16, frames).contiguous()
    return data


def _evaluate(model, data, tasks=None, seeds=range(5)):
    """Mean of each loss over fixed masking seeds (the same masks before and after training: a paired comparison)."""
    model.eval()
    outs = []
    with torch.no_grad():
        for seed in seeds:
            generator = torch.Generator().manual_seed(10_000 + seed)
            outs.append(model(**data, tasks=tasks, generator=generator).losses())
    model.train()
    return {k: float(np.mean([o[k] for o in outs if k in o])) for k in set().union(*outs)}


def _every_objective_inputs():
    """tiny_config with every objective on (VQ-code ones included) and a batch with codes for them."""
    objectives = {name: 1.0 for name in PRETRAINING_OBJECTIVES}
    objectives["wra"] = 0.1
    config = tiny_config(
        objectives=objectives,
        image_decoder_config=dict(codebook_size=16, grid_size=8),  # 2 x 2 codes under each of the 4 x 4 patches
        audio_decoder_config=dict(codebook_size=16),
    )
    data = _structured_batch()
    g = _gen(5)
    # each image repeats one patch (see _structured_batch), so give each image one code and one soft assignment
    data["image_codes"] = torch.randperm(16, generator=g)[:4, None, None].expand(4, 8, 8).clone()
    data["image_code_probs"] = F.softmax(3 * torch.randn(4, 1, 1, 16, generator=g), -1).expand(4, 8, 8, 16).clone()
    data["audio_codes"] = torch.randint(16, (4, 10), generator=g)  # 40 frames, 4 frames per code
    data["audio_codes_mask"] = data["audio_attention_mask"][:, ::4].clone()
    return config, data


@pytest.mark.parametrize("policy", ["conditional", "joint"])
def test_selected_cross_modal_states_give_the_losses_and_gradients_of_full_ones(monkeypatch, policy):
    """
    Pre-training runs the last cross-modal layer only where a head reads it (the [CLS] for matching, the masked tokens,
    the rows a decoder writes from). Against a reference that runs every position and picks the same states, every
    loss and every gradient agrees, with every objective on and dropped rows present.
    """
    config, data = _every_objective_inputs()
    config.masking_policy = policy
    config.modality_mask_probability = 0.5  # DTR / DIR / DAR rows in most draws
    torch.manual_seed(0)
    model = OptTriForPreTraining(config).train()
    base = model.opt_tri
    calls = []

    def reference(text=None, image=None, audio=None, query_index=None, full_rows=None):
        fused, mask, ids = base.fuse(text, image, audio)
        if query_index is None:
            query_index = torch.zeros(fused.shape[0], 1, dtype=torch.long)
        calls.append(query_index.shape[1] < fused.shape[1])
        selected = fused.gather(1, query_index[:, :, None].expand(-1, -1, fused.shape[-1]))
        return selected, (None if full_rows is None else fused[full_rows]), mask, ids

    def run(seed):
        model.zero_grad()
        torch.manual_seed(seed)
        out = model(**data)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    seen = set()
    for seed in range(4):
        fast, fast_grads = run(seed)
        with monkeypatch.context() as patch:
            patch.setattr(base, "fuse_selected", reference)
            slow, slow_grads = run(seed)
        assert fast.losses().keys() == slow.losses().keys()
        seen |= fast.losses().keys()
        for name, value in fast.losses().items():
            assert math.isclose(value, slow.losses()[name], rel_tol=1e-5, abs_tol=1e-6), (name, value, slow.losses()[name])
        assert fast_grads.keys() == slow_grads.keys()
        for name, grad in fast_grads.items():
            assert torch.allclose(grad, slow_grads[name], atol=1e-5, rtol=1e-4), name
    # joint masking token-masks every present modality, and a token-masked modality is never dropped: no decoding
    expected = set(PRETRAINING_OBJECTIVES) - ({"dtr", "dir", "dar"} if policy == "joint" else set())
    assert seen == expected, seen
    assert any(calls), "no call selected fewer positions than the sequence holds"


@pytest.mark.parametrize("drop_text", [False, True])
def test_each_head_reads_the_cross_modal_states_of_its_own_masked_tokens(monkeypatch, drop_text):
    """
    Trace which cross-modal positions reach each head: a stand-in for `fuse_selected` returns, for every selected
    state, its (row, position), and every decoded row's full states carry the row. The masks drawn by the forward
    are recorded, and the expected positions are worked out from the `[CLS] | text | image | audio` layout alone.
    """
    config, data = _every_objective_inputs()
    config.masking_policy = "joint"  # every present modality token-masked in every row
    model = OptTriForPreTraining(config).eval()
    batch, text_len = data["input_ids"].shape
    data["attention_mask"][3] = 0  # row 3 has no text
    if drop_text:  # DTR needs a dropped text: conditional masking, and always drop what may be dropped
        model.config.masking_policy = "conditional"
        model.config.modality_mask_probability = 1.0
    masks, seen = {}, {}
    original_positions = OptTriForPreTraining.mask_positions

    def spy_positions(real, rows, probability, generator=None):
        chosen = original_positions(real, rows, probability, generator=generator)
        masks["image" if real.shape[1] == model.config.num_image_patches else "audio"] = chosen
        return chosen

    def tracer(text=None, image=None, audio=None, query_index=None, full_rows=None):
        mask = torch.cat([torch.ones(batch, 1, dtype=torch.long)] + [p[1].long() for p in (text, image, audio) if p is not None], 1)
        if query_index is None:
            query_index = torch.zeros(batch, 1, dtype=torch.long)
        selected = torch.zeros(*query_index.shape, 48)
        selected[..., 0] = torch.arange(batch)[:, None].float()
        selected[..., 1] = query_index.float()
        full = None
        if full_rows is not None:
            full = torch.zeros(len(full_rows), mask.shape[1], 48)
            full[..., 0] = full_rows[:, None].float()
        return selected, full, mask, None

    def record(name):
        def hook(module, args, output):
            seen[name] = args[0] if name != "text_decoder" else args[2]
        return hook

    monkeypatch.setattr(model, "mask_positions", spy_positions)
    monkeypatch.setattr(model.opt_tri, "fuse_selected", tracer)
    for name in ("mlm_head", "mrfr_head", "mrc_head", "mafr_head", "mac_head", "text_decoder"):
        getattr(model, name).register_forward_hook(record(name))
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(**data, tasks=["mlm", "mrfr", "mrc", "mafr", "mac", "dtr"])
    image_start = 1 + text_len  # [CLS] | text (with its own [CLS]) | image [CLS] + patches | audio [CLS] + tokens
    audio_start = image_start + 1 + model.config.num_image_patches

    def pairs(states):
        return [(int(r), int(p)) for r, p in states[:, :2].tolist()]

    def expected(mask, start):
        return [(int(r), start + int(p)) for r, p in mask.nonzero().tolist()]

    if out.mlm_labels is not None and (out.mlm_labels != -100).any():
        assert pairs(seen["mlm_head"]) == expected(out.mlm_labels != -100, 1)
    for head in ("mrfr_head", "mrc_head"):
        if "image" in masks and masks["image"].any():
            assert pairs(seen[head]) == expected(masks["image"], image_start + 1), head
    for head in ("mafr_head", "mac_head"):
        if "audio" in masks and masks["audio"].any():
            assert pairs(seen[head]) == expected(masks["audio"], audio_start + 1), head
    if drop_text:  # the text decoder reads the full states of exactly the rows whose text was dropped
        assert out.dtr_loss is not None
        states = seen["text_decoder"]  # (R, S, 48): every state of a decoded row carries its row
        rows = states[:, 0, 0].long()
        assert torch.equal(states[..., 0], rows[:, None].float().expand(-1, states.shape[1]))
        # every present modality that is not token-masked is dropped (p = 1), so the text of exactly the rows with text
        # whose text was not token-masked
        has_text = data["attention_mask"].bool().any(1)
        text_masked = (out.mlm_labels != -100).any(1) if out.mlm_labels is not None else torch.zeros_like(has_text)
        assert rows.tolist() == (has_text & ~text_masked).nonzero().flatten().tolist() and len(rows) >= 1
    else:
        assert "mlm_head" in seen and "mrfr_head" in seen and "mafr_head" in seen and "mac_head" in seen


@pytest.mark.slow
def test_training_lowers_every_loss():
    """Every objective on, the VQ-code ones included (with fixed codes standing in for a tokenizer's)."""
    config, data = _every_objective_inputs()
    torch.manual_seed(0)
    model = OptTriForPreTraining(config).train()
    before = _evaluate(model, data)
    assert before.keys() == set(config.objectives), before.keys()  # the 5 fixed masking seeds cover every objective
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for step in range(200):
        torch.manual_seed(step)
        out = model(**data)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        history.append(out.losses())
    after = _evaluate(model, data)
    for name in config.objectives:
        # lower is better for every objective, WRA included (it is negative once mismatched pairs are pushed apart)
        assert after[name] < before[name], f"{name}: {before[name]:.4f} -> {after[name]:.4f}"
    for name in ("mlm", "mrfr", "mafr", "contrastive", "itm"):
        assert after[name] < 0.7 * before[name], f"{name}: {before[name]:.4f} -> {after[name]:.4f}"
    # and along the training curve itself: mean of the first 5 vs the last 5 times each loss was computed
    for name in config.objectives:
        values = [h[name] for h in history if name in h]
        assert np.mean(values[-5:]) < np.mean(values[:5]), f"{name} curve: {values[:5]} ... {values[-5:]}"


@pytest.mark.slow
def test_mlm_overfits_and_recovers_masked_tokens(batch):
    config = tiny_config()
    torch.manual_seed(0)
    model = OptTriForPreTraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(200):
        torch.manual_seed(step)
        out = model(**batch, tasks=["mlm"])
        assert out.losses().keys() == {"mlm"}
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    model.eval()
    hits = total = 0
    with torch.no_grad():
        for seed in range(5):
            out = model(**batch, tasks=["mlm"], generator=torch.Generator().manual_seed(10_000 + seed))
            chosen = out.mlm_labels != -100
            assert torch.equal(out.mlm_labels[chosen], batch["input_ids"][chosen])
            hits += (out.mlm_logits.argmax(-1) == batch["input_ids"][chosen]).sum().item()
            total += chosen.sum().item()
    assert total >= 20
    assert hits >= 0.8 * total, f"recovered {hits} of {total} masked tokens"


# ----------------------------------------------------------------------------------------------------------------------
# MRC / MRC-kl (VQ-code targets of masked patches)
# ----------------------------------------------------------------------------------------------------------------------


def _mrc_config(grid=8, codebook=16):
    """tiny_config with an image tokenizer grid of `grid` x `grid` codes over the 4 x 4 ViT patches (r = grid / 4)."""
    return tiny_config(image_decoder_config=dict(codebook_size=codebook, grid_size=grid), masking_policy="joint")


def test_codes_by_patch_groups_the_cells_under_each_patch():
    grid = torch.arange(16).reshape(1, 4, 4)  # a 4x4 code grid under a 2x2 patch grid
    grouped = codes_by_patch(grid, 2)
    assert grouped.shape == (1, 4, 4)
    assert grouped[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    soft = torch.arange(32.0).reshape(1, 4, 4, 2)
    assert torch.equal(codes_by_patch(soft, 2)[0, 1, 2], soft[0, 1, 2])  # patch 1, cell (1, 0) = grid cell (1, 2)


def _fixed_image_mask(monkeypatch, model, mask):
    def fixed(real, rows, probability, generator=None):
        if real.shape[1] == mask.shape[1]:
            return mask.clone()
        return OptTriForPreTraining.mask_positions(real, rows, probability, generator=generator)

    monkeypatch.setattr(model, "mask_positions", fixed)


def test_mrc_uses_only_masked_patches_and_falls_toward_the_codes(monkeypatch, batch):
    model = OptTriForPreTraining(_mrc_config())
    n = model.config.num_image_patches
    mask = torch.zeros(4, n, dtype=torch.bool)
    mask[:, [1, 6]] = True  # patches 1 and 6 of every image
    _fixed_image_mask(monkeypatch, model, mask)
    codes = torch.randint(16, (4, 8, 8), generator=_gen(1))
    # codes under unmasked patches never matter; codes under masked ones do
    by_patch_index = codes_by_patch(torch.arange(64).reshape(1, 8, 8), 4)[0]  # (16 patches, 4 cells) -> grid cell
    other = codes.clone().flatten(1)
    other[:, by_patch_index[0]] = (other[:, by_patch_index[0]] + 5) % 16  # patch 0: not masked
    changed = codes.clone().flatten(1)
    changed[:, by_patch_index[6]] = (changed[:, by_patch_index[6]] + 5) % 16  # patch 6: masked
    model.eval()
    losses = []
    for grid in (codes, other.reshape(4, 8, 8), changed.reshape(4, 8, 8)):
        torch.manual_seed(0)
        with torch.no_grad():
            losses.append(float(model(**batch, image_codes=grid, tasks=["mrc"]).mrc_loss))
    assert losses[0] == pytest.approx(losses[1], abs=1e-6), "an unmasked patch's codes changed the MRC loss"
    assert abs(losses[0] - losses[2]) > 1e-4, "a masked patch's codes did not change the MRC loss"
    # moving the prediction toward the codes lowers the loss
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        torch.manual_seed(0)
        loss = model(**batch, image_codes=codes, tasks=["mrc"]).mrc_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    assert history[-1] < 0.3 * history[0], history


def test_mrc_kl_is_cross_entropy_for_one_hot_targets_and_zero_at_the_prediction(monkeypatch, batch):
    model = OptTriForPreTraining(_mrc_config()).eval()
    mask = torch.zeros(4, model.config.num_image_patches, dtype=torch.bool)
    mask[:, [0, 5, 15]] = True
    _fixed_image_mask(monkeypatch, model, mask)
    codes = torch.randint(16, (4, 8, 8), generator=_gen(2))
    one_hot = F.one_hot(codes, 16).float()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(**batch, image_codes=codes, image_code_probs=one_hot, tasks=["mrc", "mrc_kl"])
    assert float(out.mrc_kl_loss) == pytest.approx(float(out.mrc_loss), rel=1e-5)
    soft = F.softmax(torch.randn(4, 8, 8, 16, generator=_gen(3)), -1)
    torch.manual_seed(0)
    with torch.no_grad():
        kl = float(model(**batch, image_codes=codes, image_code_probs=soft, tasks=["mrc_kl"]).mrc_kl_loss)
    assert kl > 0


def test_code_objectives_need_codes_of_the_right_shape(batch):
    model = OptTriForPreTraining(_mrc_config())
    with pytest.raises(ValueError, match="need image_codes"):
        model(**batch, tasks=["mrc"])
    with pytest.raises(ValueError, match=r"image_codes must be an integer tensor of shape \(4, 8, 8\)"):
        model(**batch, image_codes=torch.zeros(4, 4, 4, dtype=torch.long), tasks=["mrc"])
    with pytest.raises(ValueError, match=r"image_codes must be in \[0, 16\)"):
        model(**batch, image_codes=torch.full((4, 8, 8), 16), tasks=["mrc"])
    with pytest.raises(ValueError, match="mrc_kl needs image_code_probs"):
        model(**batch, image_codes=torch.zeros(4, 8, 8, dtype=torch.long), tasks=["mrc_kl"])
    with pytest.raises(ValueError, match="needs audio_codes"):
        model(**batch, tasks=["dar"])
    odd = OptTriForPreTraining(_mrc_config(grid=6))  # a 6x6 code grid cannot be split over 4x4 patches
    assert odd.mrc_head is None
    with pytest.raises(ValueError, match="multiple of the ViT patch grid"):
        odd(**batch, image_codes=torch.zeros(4, 6, 6, dtype=torch.long), tasks=["mrc"])
