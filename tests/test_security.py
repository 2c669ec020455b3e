"""Weights and checkpoints never go through pickle.

(a) A saved model folder (and one saved with its processor) holds exactly the expected files: safetensors weights,
    JSON configs, tokenizer files and our own Hub `.py` files; nothing pickle-based (`*.bin`, `*.pt`, `*.pkl`, ...).
(b) A static scan: every `torch.load(` in `modeling_opt_tri/` and `examples/` passes `weights_only=True`, and no module
    unpickles (`pickle.load(s)`, `np.load(..., allow_pickle=True)`, ...).
(c) A training checkpoint holds only safetensors, JSON and `.pt` files that load with `torch.load(weights_only=True)`
    into tensors and plain Python values; `load_checkpoint` refuses an incomplete folder with a `FileNotFoundError`
    and a `.pt` file holding a pickled object with an unpickling error.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import get_cosine_schedule_with_warmup

from conftest import REPO_ROOT, tiny_config
from modeling_opt_tri import (
    OptTriFeatureExtractor,
    OptTriForPreTraining,
    OptTriImageProcessor,
    OptTriModel,
    OptTriProcessor,
)
from modeling_opt_tri.tokenizer_training import build_wordpiece_tokenizer
from modeling_opt_tri.training.checkpointing import CorruptCheckpointError, load_checkpoint, save_checkpoint

PACKAGE_DIR = REPO_ROOT / "modeling_opt_tri"
SCANNED_DIRS = (PACKAGE_DIR, REPO_ROOT / "examples")

#: Our Hub files: the flat top-level modules of the package, which `save_pretrained` copies next to the weights.
HUB_FILES = frozenset(p.name for p in PACKAGE_DIR.glob("*.py") if p.name != "__init__.py")
#: File types that can hold pickled Python objects.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".dill", ".npy", ".npz")

MODEL_REQUIRED = {"config.json", "model.safetensors", "configuration_opt_tri.py", "modeling_opt_tri.py"}
MODEL_OPTIONAL = {"generation_config.json", "README.md"}  # README.md: the generated model card
PROCESSOR_REQUIRED = {
    "processor_config.json", "tokenizer.json", "tokenizer_config.json",
    "processing_opt_tri.py", "image_processing_opt_tri.py", "feature_extraction_opt_tri.py",
}
PROCESSOR_OPTIONAL = {"special_tokens_map.json", "vocab.txt", "added_tokens.json", "chat_template.jinja"}


# ----------------------------------------------------------------------------------------------------------------------
# (a) saved folders
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    model = OptTriForPreTraining(tiny_config())
    model.save_pretrained(root / "model")
    tokenizer = build_wordpiece_tokenizer(["a red circle", "a blue square on the left"] * 4, vocab_size=60)
    processor = OptTriProcessor(
        image_processor=OptTriImageProcessor(image_size=32),
        feature_extractor=OptTriFeatureExtractor(feature_size=16),
        tokenizer=tokenizer,
    )
    shutil.copytree(root / "model", root / "with_processor", copy_function=os.link)  # the same model files, cheaply
    processor.save_pretrained(root / "with_processor")
    return {"model": root / "model", "with_processor": root / "with_processor"}


def _check_folder(folder: Path, required: set[str], optional: set[str]) -> None:
    entries = sorted(folder.iterdir())
    subfolders = [p.name for p in entries if not p.is_file()]
    assert not subfolders, f"{folder} has unexpected sub-folders {subfolders}"
    names = {p.name for p in entries}
    pickled = sorted(n for n in names if n.lower().endswith(PICKLE_SUFFIXES))
    assert not pickled, f"{folder} holds pickle-capable files {pickled}; weights must be safetensors only"
    unexpected = sorted(n for n in names - required - optional if not (n.endswith(".py") and n in HUB_FILES))
    assert not unexpected, f"{folder} holds unexpected files {unexpected}"
    missing = sorted(required - names)
    assert not missing, f"{folder} lacks {missing}"
    for name in sorted(n for n in names if n.endswith(".py")):  # Hub files are verbatim copies of our modules
        assert (folder / name).read_bytes() == (PACKAGE_DIR / name).read_bytes(), f"{name} differs from the package's"
    for name in sorted(n for n in names if n.endswith(".json")):
        json.loads((folder / name).read_text())  # valid JSON, nothing else
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:  # really safetensors
        assert len(list(weights.keys())) > 0


def test_saved_model_folder_has_only_expected_files(saved_folders):
    _check_folder(saved_folders["model"], MODEL_REQUIRED, MODEL_OPTIONAL)


def test_saved_model_and_processor_folder_has_only_expected_files(saved_folders):
    _check_folder(
        saved_folders["with_processor"], MODEL_REQUIRED | PROCESSOR_REQUIRED, MODEL_OPTIONAL | PROCESSOR_OPTIONAL
    )


def test_folder_check_rejects_a_pickle_file(saved_folders, tmp_path):
    """The folder check itself catches a stray `pytorch_model.bin` (so the two tests above can fail)."""
    folder = tmp_path / "copy"
    shutil.copytree(saved_folders["model"], folder, copy_function=os.link)
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(AssertionError, match=r"pickle-capable files \['pytorch_model.bin'\]"):
        _check_folder(folder, MODEL_REQUIRED, MODEL_OPTIONAL)


# ----------------------------------------------------------------------------------------------------------------------
# (b) static scan of the sources
# ----------------------------------------------------------------------------------------------------------------------

_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib"}
_UNPICKLING_NAMES = {"load", "loads", "Unpickler"}


def _dotted(node: ast.AST) -> str:
    """`torch.load` for `Attribute(Name('torch'), 'load')`; '' for anything that is not a dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword_is(call: ast.Call, name: str, value) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def scan_source(source: str, filename: str = "<source>") -> tuple[list[str], int]:
    """Return (violations, number of `torch.load` calls) of one module's source."""
    violations: list[str] = []
    torch_loads = 0
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module:
            imported = {alias.name for alias in node.names}
            if node.module.split(".")[0] in _PICKLE_MODULES and imported & _UNPICKLING_NAMES:
                violations.append(f"{where}: from {node.module} import {sorted(imported & _UNPICKLING_NAMES)}")
            if node.module in ("torch", "torch.serialization") and "load" in imported:
                violations.append(f"{where}: `from {node.module} import load` hides torch.load from this check")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in ("torch.load", "torch.serialization.load"):
            torch_loads += 1
            if not _keyword_is(node, "weights_only", True):
                violations.append(f"{where}: {name}(...) without weights_only=True")
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] in _PICKLE_MODULES and parts[-1] in _UNPICKLING_NAMES:
            violations.append(f"{where}: {name}(...) unpickles")
        if parts[-1] == "read_pickle":
            violations.append(f"{where}: {name}(...) unpickles")
        if parts[-1] == "load" and len(parts) >= 2 and parts[-2] in ("np", "numpy") and _keyword_is(node, "allow_pickle", True):
            violations.append(f"{where}: {name}(..., allow_pickle=True) unpickles")
    return violations, torch_loads


def _sources() -> list[Path]:
    files = sorted(p for folder in SCANNED_DIRS for p in folder.rglob("*.py") if "__pycache__" not in p.parts)
    assert len(files) >= 10, f"found only {len(files)} source files to scan in {SCANNED_DIRS}"
    return files


def test_torch_load_uses_weights_only_and_nothing_unpickles():
    violations: list[str] = []
    torch_loads = 0
    for path in _sources():
        found, loads = scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(REPO_ROOT)))
        violations += found
        torch_loads += loads
    assert not violations, "unsafe deserialisation:\n" + "\n".join(violations)
    # grep-style cross-check: every textual `torch.load(` in code (not in a docstring or comment) was seen by the scan
    assert torch_loads >= 1, f"the scan saw {torch_loads} torch.load calls; checkpointing.py reads every .pt with one"


@pytest.mark.parametrize(
    "source, message",
    [
        ("import torch\nstate = torch.load(path)\n", "without weights_only=True"),
        ("import torch\nstate = torch.load(path, weights_only=False)\n", "without weights_only=True"),
        ("import torch\nstate = torch.load(path, map_location='cpu', weights_only=flag)\n", "without weights_only=True"),
        ("import pickle\nwith open(p, 'rb') as f:\n    x = pickle.load(f)\n", "pickle.load(...) unpickles"),
        ("import pickle\nx = pickle.loads(data)\n", "pickle.loads(...) unpickles"),
        ("from pickle import load\n", "from pickle import ['load']"),
        ("from torch import load\n", "hides torch.load"),
        ("import numpy as np\nx = np.load(p, allow_pickle=True)\n", "allow_pickle=True"),
        ("import pandas as pd\nx = pd.read_pickle(p)\n", "read_pickle"),
    ],
)
def test_scan_catches_unsafe_loading(source, message):
    violations, _ = scan_source(source)
    assert any(message in v for v in violations), violations


def test_scan_accepts_safe_loading():
    source = "import torch\nimport numpy as np\nx = torch.load(p, weights_only=True, map_location='cpu')\ny = np.load(p)\n"
    assert scan_source(source) == ([], 1)


# ----------------------------------------------------------------------------------------------------------------------
# (c) training checkpoints
# ----------------------------------------------------------------------------------------------------------------------

CHECKPOINT_FILES = {
    "model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state_0.json",
    "rng_state_0.safetensors",
}


def _training_pieces():
    """An OPT-Tri model (the base model: small and quick; its heads add nothing to what is serialised), an AdamW
    optimizer after one step and the warm-up + cosine scheduler of the pre-training loop."""
    torch.manual_seed(0)
    model = OptTriModel(tiny_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 2, 10)
    for parameter in model.parameters():  # one step, so the optimizer holds its per-parameter state tensors
        parameter.grad = torch.full_like(parameter, 1e-3)
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model, optimizer, scheduler = _training_pieces()
    state = {"epoch": 0, "batch_index": 3, "rows_seen": 24, "rows_skipped": 1, "skipped_steps": 0}
    return save_checkpoint(tmp_path_factory.mktemp("run"), 3, model, optimizer, scheduler, state)


def _plain(value, path="") -> list[str]:
    """Paths inside `value` holding anything but tensors and plain Python values."""
    if isinstance(value, torch.Tensor) or value is None or isinstance(value, (bool, int, float, str)):
        return []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in ([] if isinstance(k, (str, int)) else [f"{path}/<key {k!r}>"])
                + _plain(v, f"{path}/{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _plain(v, f"{path}[{i}]")]
    return [f"{path}: {type(value).__module__}.{type(value).__qualname__}"]


def test_checkpoint_files_load_without_pickle(checkpoint):
    names = {p.name for p in checkpoint.iterdir()}
    assert names == CHECKPOINT_FILES, f"unexpected checkpoint contents: {sorted(names ^ CHECKPOINT_FILES)}"
    for pt_file in sorted(checkpoint.glob("*.pt")):
        state = torch.load(pt_file, weights_only=True, map_location="cpu")
        assert isinstance(state, dict), pt_file.name
        assert not _plain(state), f"{pt_file.name} holds non-plain objects: {_plain(state)}"
    optimizer_state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert optimizer_state["state"], "the optimizer state should hold per-parameter tensors"
    for json_file in sorted(checkpoint.glob("*.json")):
        json.loads(json_file.read_text())
    for tensors in sorted(checkpoint.glob("*.safetensors")):
        with safe_open(str(tensors), framework="pt") as handle:
            assert list(handle.keys())


def test_checkpoint_round_trip(checkpoint):
    model, optimizer, scheduler = _training_pieces()
    state = load_checkpoint(checkpoint, model, optimizer, scheduler)
    assert state["global_step"] == 3 and state["batch_index"] == 3


@pytest.mark.parametrize("missing", sorted(CHECKPOINT_FILES))
def test_load_checkpoint_missing_file(checkpoint, tmp_path, missing):
    broken = tmp_path / "checkpoint-3"
    shutil.copytree(checkpoint, broken)
    (broken / missing).unlink()
    model, optimizer, scheduler = _training_pieces()
    with pytest.raises(FileNotFoundError, match=rf"checkpoint-3 is not a complete OPT-Tri checkpoint: missing \['{missing}'\]"):
        load_checkpoint(broken, model, optimizer, scheduler)


def test_load_checkpoint_missing_folder(tmp_path):
    model, optimizer, scheduler = _training_pieces()
    with pytest.raises(FileNotFoundError, match=r"checkpoint folder '.*checkpoint-9' does not exist"):
        load_checkpoint(tmp_path / "checkpoint-9", model, optimizer, scheduler)


class _Payload:
    """Stands for an arbitrary object a malicious checkpoint could make pickle build."""


def test_load_checkpoint_refuses_pickled_objects(checkpoint, tmp_path):
    tampered = tmp_path / "checkpoint-3"
    shutil.copytree(checkpoint, tampered)
    state = torch.load(tampered / "scheduler.pt", weights_only=True)
    state["payload"] = _Payload()
    torch.save(state, tampered / "scheduler.pt")
    model, optimizer, scheduler = _training_pieces()
    with pytest.raises(CorruptCheckpointError, match=r"scheduler\.pt: cannot be read \(UnpicklingError: Weights only") as error:
        load_checkpoint(tampered, model, optimizer, scheduler)
    assert isinstance(error.value.__cause__, pickle.UnpicklingError)
