"""Issue 15 item 7: a pre-training checkpoint loads quietly into the base model and every head (the pre-training
heads' weights are declared ignorable), while a weight that the loading model needs and the checkpoint lacks is
still reported."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel
from transformers.utils import logging as hf_logging

from conftest import tiny_config
from modeling_opt_tri import (
    OptTriForConditionalGeneration,
    OptTriForPreTraining,
    OptTriForRetrieval,
    OptTriForTextToAudio,
    OptTriForTextToImage,
    OptTriModel,
)
from modeling_opt_tri.modeling_opt_tri import PRETRAINING_HEAD_MODULES

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def pretraining_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pretraining")
    OptTriForPreTraining(tiny_config()).save_pretrained(folder)
    return folder


@pytest.fixture
def load_log(caplog):
    hf_logging.enable_propagation()
    caplog.set_level(logging.INFO, logger="transformers")
    yield caplog
    hf_logging.disable_propagation()


def test_every_pretraining_head_module_is_declared():
    model = OptTriForPreTraining(tiny_config())
    built = {name for name, _ in model.named_children()} - {"opt_tri"}
    assert built == set(PRETRAINING_HEAD_MODULES)


@pytest.mark.parametrize(
    "cls", [AutoModel, OptTriModel, OptTriForRetrieval, OptTriForConditionalGeneration, OptTriForTextToImage,
            OptTriForTextToAudio],
)
def test_pretraining_checkpoint_loads_quietly(pretraining_folder, load_log, cls):
    model, info = cls.from_pretrained(pretraining_folder, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"], info
    assert "UNEXPECTED" not in load_log.text and "LOAD REPORT" not in load_log.text, load_log.text
    source = OptTriForPreTraining.from_pretrained(pretraining_folder)
    base = model if isinstance(model, OptTriModel) else model.opt_tri
    for name, tensor in base.state_dict().items():
        assert torch.equal(tensor, source.opt_tri.state_dict()[name]), name


def test_missing_encoder_weight_is_still_reported(pretraining_folder, tmp_path, load_log):
    for path in pretraining_folder.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    state = load_file(tmp_path / "model.safetensors")
    lost = "opt_tri.fusion_encoder.layers.0.self_attn.q_proj.weight"
    if lost not in state:  # the name of one cross-modal encoder weight, whatever the layout
        lost = next(key for key in state if key.startswith("opt_tri.") and "layers.0" in key)
    del state[lost]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    _, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info["missing_keys"]) == {lost.removeprefix("opt_tri.")}
    assert "MISSING" in load_log.text and lost.removeprefix("opt_tri.").split(".")[0] in load_log.text
