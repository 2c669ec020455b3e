"""Issue 15: the phases of `OptTriForPreTraining.forward`, reached through public names, compose to `forward`; one
ITM negative sampler serves pre-training and retrieval (which honours `itm_rows_per_sample` and
`itm_hard_negative_fraction`)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_batch, tiny_config
from modeling_opt_tri import OptTriForPreTraining, OptTriForRetrieval
from modeling_opt_tri.modeling_opt_tri import (
    EncodedViews,
    MaskedFusion,
    MaskPlan,
    PreTrainingBatch,
    TokenLevelLosses,
    sample_itm_negatives,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_phases_compose_to_forward():
    torch.manual_seed(0)
    model = OptTriForPreTraining(tiny_config()).eval()
    data = tiny_batch(4)
    with torch.no_grad():
        expected = model(**data, generator=torch.Generator().manual_seed(3))
        generator = torch.Generator().manual_seed(3)
        batch = model.prepare_batch(None, **{name: data.get(name) for name in (
            "input_ids", "attention_mask", "token_type_ids", "pixel_values", "image_mask", "input_features",
            "audio_attention_mask", "image_codes", "image_code_probs", "audio_codes", "audio_codes_mask")})
        assert isinstance(batch, PreTrainingBatch) and batch.size == 4 and batch.present["audio"].all()
        plan = model.plan_masks(batch, generator)
        assert isinstance(plan, MaskPlan) and plan.mlm_labels is not None
        views = model.encode_views(batch, plan)
        assert isinstance(views, EncodedViews) and set(views.clean) == set(views.masked) == {"text", "image", "audio"}
        assert model.needs_masked_fusion(batch, plan)
        fusion = model.fuse_masked_views(batch, plan, views, generator)
        assert isinstance(fusion, MaskedFusion)
        losses = model.modality_reconstruction_losses(batch, fusion)
        token_level = model.token_level_losses(batch, plan, fusion)
        assert isinstance(token_level, TokenLevelLosses) and "mlm" in token_level.losses
        losses.update(token_level.losses)
        losses.update(model.sample_level_losses(batch, views, generator))
        total = model.weigh_losses(losses)
    assert set(expected.losses()) - {"loss"} == set(losses)
    torch.testing.assert_close(total, expected.loss, rtol=0, atol=0)
    for name, value in losses.items():
        torch.testing.assert_close(value, getattr(expected, f"{name}_loss"), rtol=0, atol=0)


def test_phases_skip_what_the_tasks_do_not_need():
    model = OptTriForPreTraining(tiny_config()).eval()
    data = tiny_batch(4)
    batch = model.prepare_batch(["contrastive"], **{name: data.get(name) for name in (
        "input_ids", "attention_mask", "token_type_ids", "pixel_values", "image_mask", "input_features",
        "audio_attention_mask", "image_codes", "image_code_probs", "audio_codes", "audio_codes_mask")})
    plan = model.plan_masks(batch)
    assert not any(bool(rows.any()) for rows in plan.rows.values()) and plan.mlm_labels is None
    assert not model.needs_masked_fusion(batch, plan)
    assert model.weigh_losses({}) is None
    with pytest.raises(ValueError, match="Unknown pre-training tasks"):
        model.prepare_batch(["mlmm"], input_ids=data["input_ids"])


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_sample_itm_negatives_never_the_sample_and_hard_when_asked(fraction):
    n = 6
    logits = torch.full((n, n), -30.0)
    logits[torch.arange(n), torch.arange(n).roll(1)] = 30.0  # a's nearest other b: i - 1; b's nearest other a: j + 1
    generator = torch.Generator().manual_seed(0)
    hits_b = hits_a = 0
    for _ in range(200):
        neg_a, neg_b = sample_itm_negatives(logits, fraction, generator)
        assert (neg_a != torch.arange(n)).all() and (neg_b != torch.arange(n)).all()
        hits_b += int((neg_b == torch.arange(n).roll(1)).sum())
        hits_a += int((neg_a == torch.arange(n).roll(-1)).sum())
    expected = fraction + (1 - fraction) / (n - 1)
    assert abs(hits_b / (200 * n) - expected) < 0.05 and abs(hits_a / (200 * n) - expected) < 0.05


@pytest.mark.parametrize("rows_per_sample", [1, 3])
def test_retrieval_itm_honours_the_config(monkeypatch, rows_per_sample):
    """Retrieval fine-tuning scores `itm_rows_per_sample` rows per query (it always scored three before)."""
    torch.manual_seed(0)
    model = OptTriForRetrieval(tiny_config(itm_rows_per_sample=rows_per_sample)).train()
    scored = []
    original = model.matching_logits

    def recording(modality_a, part_a, modality_b, part_b):
        scored.append(part_a[0].shape[0])
        return original(modality_a, part_a, modality_b, part_b)

    monkeypatch.setattr(model, "matching_logits", recording)
    data = tiny_batch(5)
    out = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"], pixel_values=data["pixel_values"],
                return_loss=True, generator=torch.Generator().manual_seed(0))
    assert scored == [5 * rows_per_sample]
    assert torch.isfinite(out.itm_loss) and math.isfinite(float(out.loss))


def test_config_validate_is_public_and_the_old_name_still_works():
    config = tiny_config()
    config.validate()
    config.masking_policy = "sometimes"
    with pytest.raises(ValueError, match="masking_policy"):
        config.validate()
    with pytest.warns(FutureWarning, match="validate"), pytest.raises(ValueError, match="masking_policy"):
        config._validate()


def test_text_and_code_decoders_are_siblings():
    from modeling_opt_tri.modeling_opt_tri import OptTriCausalDecoder, OptTriCodeDecoder, OptTriTextDecoder

    assert issubclass(OptTriTextDecoder, OptTriCausalDecoder) and issubclass(OptTriCodeDecoder, OptTriCausalDecoder)
    assert not issubclass(OptTriCodeDecoder, OptTriTextDecoder)
