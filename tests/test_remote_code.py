"""A saved (and a pushed) OPT-Tri checkpoint loads with trust_remote_code in a fresh process where our package cannot
be imported, and computes bit-identical outputs (DESIGN.md section 7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from hub_server import NO_EXTERNAL_NETWORK_SNIPPET, LocalHub, hub_env, no_external_network
from modeling_opt_tri import OptTriForPreTraining
from modeling_opt_tri.feature_extraction_opt_tri import OptTriFeatureExtractor
from modeling_opt_tri.image_processing_opt_tri import OptTriImageProcessor
from modeling_opt_tri.processing_opt_tri import OptTriProcessor
from modeling_opt_tri.tokenizer_training import build_wordpiece_tokenizer

REPO = "user/opt-tri-tiny"
CORPUS = [
    "a red circle above a blue square",
    "a green triangle left of a yellow circle",
    "the small blue square is below the big red triangle",
    "how many circles are there ? two",
    "what colour is the square ? blue",
    "one two three four five six seven eight nine zero",
]
TEXTS = ["a red circle", "what colour is the big triangle ?", None]  # the last row has no text
HUB_FILES = {
    "config.json", "model.safetensors", "configuration_opt_tri.py", "modeling_opt_tri.py", "processor_config.json",
    "processing_opt_tri.py", "image_processing_opt_tri.py", "feature_extraction_opt_tri.py", "tokenizer.json",
    "tokenizer_config.json",
    # the helper Hub files that modeling_opt_tri.py reaches by relative import (layers, losses, decoders, ...)
    *(path.name for path in (Path(__file__).resolve().parents[1] / "modeling_opt_tri").glob("modeling_opt_tri_*.py")
      if path.name != "modeling_opt_tri_vq.py"),
}
assert len(HUB_FILES) > 12, "the modeling helper files are missing from HUB_FILES"

#: Runs first in every fresh process: the installed package (editable: its finder is on sys.meta_path) must not be
#: importable, while the remote-code copies under `transformers_modules.<...>.modeling_opt_tri` must be.
IMPORT_BLOCKER = textwrap.dedent(
    """
    import importlib, importlib.abc, importlib.util, sys

    # installed (editable) and findable, so it is the blocker below that keeps this process from importing it
    assert importlib.util.find_spec("modeling_opt_tri") is not None, "the package is not installed at all"

    class _BlockOptTri(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_opt_tri" or name.startswith("modeling_opt_tri."):
                raise ImportError(f"{name} is blocked: this process must work from remote code only")
            return None

    sys.meta_path.insert(0, _BlockOptTri())
    assert not any(m == "modeling_opt_tri" or m.startswith("modeling_opt_tri.") for m in sys.modules)
    for _name in ("modeling_opt_tri", "modeling_opt_tri.modeling_opt_tri"):
        try:
            importlib.import_module(_name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"the import blocker failed: {_name} is importable")
    assert sys.meta_path[0].find_spec("transformers_modules.abc.modeling_opt_tri") is None  # remote code passes
    """
)

#: argv: model (folder or repo id), inputs .npz, output folder.
LOAD_AND_RUN = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoModelForPreTraining, AutoProcessor

    torch.set_num_threads(1)
    source, inputs_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    raw = np.load(inputs_path)
    model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    pretraining = AutoModelForPreTraining.from_pretrained(source, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
    batch = processor(
        text=json.loads(str(raw["texts"])), images=[raw["image0"], None, raw["image2"]],
        audio=[raw["audio0"], raw["audio1"], None], sampling_rate=16000,
    )
    tensors = {f"inputs.{k}": v.contiguous() for k, v in batch.items()}
    with torch.no_grad():
        base = model(**batch, output_hidden_states=True)
        torch.manual_seed(0)
        pre = pretraining(**batch)
    def flat(name, value):  # nested outputs (each tower's own) and tuples of tensors, by a dotted name
        if torch.is_tensor(value):
            tensors[name] = value.clone()  # a tower's output shares tensors with the flat fields
        elif isinstance(value, dict):
            for key, item in value.items():
                flat(f"{name}.{key}", item)
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                flat(f"{name}.{i}", item)

    for prefix, output in (("base", base), ("pretraining", pre)):
        for key, value in output.items():
            flat(f"{prefix}.{key}", value if isinstance(value, (tuple, dict)) else (value,))
    save_file(tensors, out + "/outputs.safetensors")
    modules = {
        "model": type(model).__module__, "pretraining": type(pretraining).__module__,
        "config": type(model.config).__module__, "processor": type(processor).__module__,
        "image_processor": type(processor.image_processor).__module__,
        "feature_extractor": type(processor.feature_extractor).__module__,
        "model_class": type(model).__name__, "pretraining_class": type(pretraining).__name__,
        "package_imported": any(m == "modeling_opt_tri" or m.startswith("modeling_opt_tri.") for m in sys.modules),
    }
    with open(out + "/modules.json", "w") as f:
        json.dump(modules, f)
    print("REMOTE_OK")
    """
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """An OptTriForPreTraining, its processor, and the raw inputs, saved to one folder."""
    folder = tmp_path_factory.mktemp("opt_tri_tiny")
    tokenizer = build_wordpiece_tokenizer(CORPUS, vocab_size=100)
    assert len(tokenizer) <= 100 and tokenizer.mask_token_id == 4
    processor = OptTriProcessor(
        image_processor=OptTriImageProcessor(image_size=32),
        feature_extractor=OptTriFeatureExtractor(feature_size=16),
        tokenizer=tokenizer,
    )
    torch.manual_seed(0)
    model = OptTriForPreTraining(tiny_config(masking_policy="joint")).eval()  # joint: MLM runs on seed 0 too
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    rng = np.random.default_rng(0)
    t = np.arange(4800) / 16000
    raw = {
        "texts": np.array(json.dumps(TEXTS)),
        "image0": rng.integers(0, 256, (40, 48, 3), dtype=np.uint8),
        "image2": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "audio0": (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32),
        "audio1": (0.2 * rng.standard_normal(3200)).astype(np.float32),
    }
    inputs_path = folder.parent / "inputs.npz"
    np.savez(inputs_path, **raw)
    return folder, model, processor, raw, inputs_path


def _expected_outputs(model, processor, raw):
    """What the subprocess computes, computed here with the installed package."""
    batch = processor(
        text=TEXTS, images=[raw["image0"], None, raw["image2"]], audio=[raw["audio0"], raw["audio1"], None],
        sampling_rate=16000,
    )
    assert batch["attention_mask"][2].sum() == 0 and batch["image_mask"].tolist() == [1, 0, 1]
    assert batch["audio_attention_mask"][2].sum() == 0
    tensors = {f"inputs.{k}": v for k, v in batch.items()}
    with torch.no_grad():
        base = model.opt_tri(**batch, output_hidden_states=True)
        torch.manual_seed(0)
        pre = model(**batch)
    def flat(name, value):  # as LOAD_AND_RUN names them
        if torch.is_tensor(value):
            tensors[name] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                flat(f"{name}.{key}", item)
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                flat(f"{name}.{i}", item)

    for prefix, output in (("base", base), ("pretraining", pre)):
        for key, value in output.items():
            flat(f"{prefix}.{key}", value if isinstance(value, (tuple, dict)) else (value,))
    assert pre.loss is not None and "pretraining.mlm_logits.0" in tensors
    return tensors


def _run_fresh_process(source, inputs_path, out, env, cwd):
    script = NO_EXTERNAL_NETWORK_SNIPPET + IMPORT_BLOCKER + LOAD_AND_RUN
    result = subprocess.run(
        [sys.executable, "-c", script, str(source), str(inputs_path), str(out)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and "REMOTE_OK" in result.stdout, result.stderr[-4000:]
    return load_file(out / "outputs.safetensors"), json.loads((out / "modules.json").read_text())


def _assert_bit_identical(got, expected):
    assert got.keys() == expected.keys(), sorted(set(got) ^ set(expected))
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), f"{key} differs"


def _assert_remote_classes(modules):
    assert not modules.pop("package_imported")
    assert modules.pop("model_class") == "OptTriModel"
    assert modules.pop("pretraining_class") == "OptTriForPreTraining"
    for role, module in modules.items():
        assert module.startswith("transformers_modules."), f"the {role} class came from {module}, not remote code"


@pytest.mark.slow
def test_saved_folder_loads_as_remote_code_in_a_fresh_process(artefacts, tmp_path):
    folder, model, processor, raw, inputs_path = artefacts
    for name in HUB_FILES:
        assert (folder / name).is_file(), name
    expected = _expected_outputs(model, processor, raw)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"),
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    got, modules = _run_fresh_process(folder, inputs_path, tmp_path, env, tmp_path)
    _assert_remote_classes(modules)
    _assert_bit_identical(got, expected)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with no_external_network() as attempts, LocalHub() as hub:
        hub.patch(monkeypatch, tmp_path / "inproc_cache")
        yield hub
        assert attempts == [], f"something tried to reach the network: {attempts}"
        assert hub.unhandled == [], f"requests the local hub did not understand: {hub.unhandled}"


@pytest.mark.slow
def test_pushed_repo_loads_as_remote_code_in_a_fresh_process(artefacts, hub, tmp_path):
    folder, model, processor, raw, inputs_path = artefacts
    model.push_to_hub(REPO)
    processor.push_to_hub(REPO)
    files = hub.files(REPO)
    assert HUB_FILES <= set(files), sorted(HUB_FILES - set(files))
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files), sorted(files)
    assert files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert files["modeling_opt_tri.py"] == (folder / "modeling_opt_tri.py").read_bytes()
    assert json.loads(files["config.json"])["auto_map"]["AutoModelForPreTraining"] == (
        "modeling_opt_tri.OptTriForPreTraining"
    )

    expected = _expected_outputs(model, processor, raw)
    n_before = len(hub.requests)
    got, modules = _run_fresh_process(REPO, inputs_path, tmp_path, hub_env(hub.endpoint, tmp_path / "sub"), tmp_path)
    fetched = [path for method, path in hub.requests[n_before:] if method == "GET" and "/resolve/" in path]
    assert any(path.endswith("/modeling_opt_tri.py") for path in fetched), fetched
    assert any(path.endswith("/model.safetensors") for path in fetched), fetched
    _assert_remote_classes(modules)
    _assert_bit_identical(got, expected)
