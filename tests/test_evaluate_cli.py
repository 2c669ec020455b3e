"""examples/evaluate_retrieval.py on data without a validation split: the hold-out flag its own error names."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from modeling_opt_tri import OptTriConfig, OptTriModel, OptTriProcessor
from modeling_opt_tri.data import export_synthetic_folder

pytestmark = pytest.mark.slow
PRESET = REPO_ROOT / "configuration" / "tiny"


def _evaluate(model, folder, *extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, str(REPO_ROOT / "examples" / "evaluate_retrieval.py"), "--model", str(model),
               "--dataset", str(folder), "--eval_rows", "6", *extra]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_evaluate_retrieval_holds_out_rows_of_a_folder_without_validation_split(tmp_path):
    model = tmp_path / "model"
    OptTriModel(OptTriConfig.from_pretrained(PRESET)).save_pretrained(model)
    OptTriProcessor.from_pretrained(PRESET).save_pretrained(model)
    folder = export_synthetic_folder(tmp_path / "folder", 24).parent  # one metadata.jsonl: a 'train' split only

    refused = _evaluate(model, folder)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "has no 'validation' split" in refused.stderr and "--eval_holdout_fraction" in refused.stderr

    held_out = _evaluate(model, folder, "--eval_holdout_fraction", "0.25")
    assert held_out.returncode == 0, held_out.stderr[-3000:]
    assert "Retrieval on" in held_out.stdout and "text->image" in held_out.stdout
