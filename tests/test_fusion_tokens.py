"""Matching rows share the first cross-modal layer's per-token work (issue 20, item 2): `fusion_tokens` computes it
once per distinct unimodal state and `fuse_tokens` gathers it, with the results of `fuse_selected` / `fuse` on the
gathered states (float rounding), for one to three modalities and a one-layer cross-modal encoder too."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from modeling_opt_tri import OptTriModel

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("layers", [1, 2])
def test_gathered_first_layer_work_equals_fusing_the_gathered_states(layers):
    torch.manual_seed(0)
    config = tiny_config(cross_modal_config=dict(hidden_size=48, num_hidden_layers=layers, num_attention_heads=4,
                                                 intermediate_size=96))
    model = OptTriModel(config).eval()
    b, widths, lengths = 3, {"text": 32, "image": 32, "audio": 32}, {"text": 5, "image": 17, "audio": 7}
    states = {m: (torch.randn(b, lengths[m], widths[m]), torch.ones(b, lengths[m], dtype=torch.long)) for m in widths}
    states["text"][1][2, 3:] = 0
    states["audio"][1][0, 4:] = 0
    index = {"text": torch.tensor([0, 2, 1, 0, 2]), "image": torch.tensor([1, 1, 0, 2, 2]), "audio": torch.tensor([2, 0, 0, 1, 2])}
    for modalities in (("text", "image"), ("text", "audio"), ("image", "audio"), ("text", "image", "audio"), ("audio",)):
        tokens = [model.fusion_tokens(m, states[m]).take(index[m]) for m in modalities]
        gathered = {m: (states[m][0][index[m]], states[m][1][index[m]]) for m in modalities}
        cls, mask = model.fuse_tokens(tokens)
        expected_cls, _, expected_mask, _ = model.fuse_selected(gathered.get("text"), gathered.get("image"), gathered.get("audio"))
        torch.testing.assert_close(cls, expected_cls, rtol=1e-5, atol=1e-6)
        assert torch.equal(mask, expected_mask)
        full, _ = model.fuse_tokens(tokens, cls_only=False)
        expected_full, _, _ = model.fuse(gathered.get("text"), gathered.get("image"), gathered.get("audio"))
        torch.testing.assert_close(full, expected_full, rtol=1e-5, atol=1e-6)
        assert not torch.equal(full[:, 0], model.fuse_tokens([tokens[0].take(torch.tensor([1, 0, 2, 2, 1]))] + tokens[1:])[0][:, 0])


def test_an_fsdp_wrapped_first_layer_takes_the_full_path_with_the_same_losses():
    """Under FSDP2 the first cross-modal layer is a unit whose parameters are gathered only around its own forward,
    so its projections cannot be run piecewise (the FSDP runs crashed in `project_for_attention`): a layer with
    FSDP's `unshard` method makes the matching rows take `fuse_selected` / `fuse`, with the same losses."""
    from conftest import tiny_batch, tiny_config

    from modeling_opt_tri import OptTriForPreTraining

    torch.manual_seed(0)
    model = OptTriForPreTraining(tiny_config()).eval()
    batch = tiny_batch(6)
    tasks = ["itm", "wra", "tri_matching"]
    shared = model(**batch, generator=torch.Generator().manual_seed(3), tasks=tasks)
    layer = model.opt_tri.fusion_encoder.layers[0]
    layer.unshard = lambda: None  # what torch.distributed.fsdp.fully_shard adds to a unit
    calls = []
    layer.project_for_attention = lambda *a, **k: calls.append(1)
    whole = model(**batch, generator=torch.Generator().manual_seed(3), tasks=tasks)
    assert not calls  # the piecewise path is not taken
    for name in ("itm_loss", "wra_loss", "tri_matching_loss"):
        torch.testing.assert_close(getattr(whole, name), getattr(shared, name), rtol=1e-5, atol=1e-6)
