"""
Fault injection for the pre-training loop (issue 14): signals (SIGTERM, SIGINT, SIGKILL) at random steps and during a
checkpoint write, a full disk during a save (a patched writer raising `OSError(ENOSPC)`), a torn log tail, and datasets
where every row, 90% of the rows, and one row are bad. For each fault: the run ends within a bounded time, no
checkpoint that resuming would pick is corrupt, and resuming reproduces the uninterrupted run's per-step losses.

One uninterrupted reference run per kind (in-process, and through the command line) is shared by the module. The
in-process faults run in this process (a signal is delivered to it by a timer thread, as a scheduler would); SIGKILL
and a second signal that ends the process at once need a subprocess. (SIGKILL during a checkpoint write is
`tests/test_pretraining.py::test_sigkill_during_checkpoint_write_leaves_no_partial_checkpoint`.)
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT
from modeling_opt_tri.data import export_synthetic_folder
from modeling_opt_tri.training import checkpointing
from modeling_opt_tri.training.checkpointing import checkpoint_problems, list_checkpoints
from modeling_opt_tri.training.pretrain import PretrainArguments, TrainingInterrupted, read_history, run_pretraining

PRESET = str(REPO_ROOT / "configuration" / "tiny")
STEPS, SAVE_STEPS = 8, 3
ARGS = PretrainArguments(preset=PRESET, train_rows=48, batch_size=8, learning_rate=1e-3, warmup_steps=2, logging_steps=2,
                         max_steps=STEPS, save_steps=SAVE_STEPS, save_total_limit=0, progress=False, tensorboard=False,
                         evaluate=False)
BOUND_S = 240  # any run of this module, faulty or not, ends within this (they take seconds)

pytestmark = pytest.mark.slow


def _losses(run: Path) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k == "step" or k.startswith("loss")} for r in read_history(run / "losses.jsonl")]


def _assert_same_losses(reference: list[dict[str, float]], run: Path) -> None:
    resumed = _losses(run)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(reference, resumed, strict=True):
        assert a == pytest.approx(b, abs=1e-5), f"step {a['step']}: {a} != {b}"


def _assert_intact(run: Path) -> None:
    """Every checkpoint that `--resume_from_checkpoint latest` could pick is complete."""
    for checkpoint in list_checkpoints(run):
        assert checkpoint_problems(checkpoint) == [], checkpoint


# ----------------------------------------------------------------------------------------------------------------------
# In-process faults
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict[str, float]]:
    out = tmp_path_factory.mktemp("faults") / "reference"
    run_pretraining(dataclasses.replace(ARGS, output_dir=str(out)))
    return _losses(out)


@pytest.fixture
def guarded_signals():
    """SIGTERM/SIGINT outside the training loop's own handler raise here rather than end the test session."""
    class SignalOutsideTheLoop(Exception):
        pass

    def handler(signum, frame):
        raise SignalOutsideTheLoop(f"signal {signum} was not handled by the training loop")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in previous.items():
        signal.signal(s, h)


def _signal_at_step(monkeypatch, signum: int, step: int, delay: float) -> None:
    """Deliver `signum` to this process from another thread, `delay` s after the forward pass of `step` begins."""
    from modeling_opt_tri import OptTriForPreTraining

    original = OptTriForPreTraining.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            threading.Timer(delay, os.kill, (os.getpid(), signum)).start()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OptTriForPreTraining, "forward", forward)


@pytest.mark.parametrize("signum, seed", [(signal.SIGTERM, 0), (signal.SIGINT, 1)])
def test_signal_at_a_random_step(reference, tmp_path, monkeypatch, guarded_signals, signum, seed):
    rng = np.random.default_rng(seed)
    step, delay = int(rng.integers(1, STEPS - 1)), float(rng.uniform(0.0, 0.3))
    _signal_at_step(monkeypatch, signum, step, delay)
    run = tmp_path / "run"
    start = time.time()
    with pytest.raises(TrainingInterrupted) as error:
        run_pretraining(dataclasses.replace(ARGS, output_dir=str(run)))
    assert time.time() - start < BOUND_S
    stopped = error.value.step
    assert step <= stopped < STEPS and error.value.exit_code == 128 + signum
    assert error.value.checkpoint == run / f"checkpoint-{stopped}" and str(error.value.checkpoint) in str(error.value)
    assert [r["step"] for r in read_history(run / "losses.jsonl")] == list(range(1, stopped + 1))
    _assert_intact(run)
    monkeypatch.undo()
    run_pretraining(dataclasses.replace(ARGS, output_dir=str(run), resume_from_checkpoint="latest"))
    _assert_same_losses(reference, run)


def test_signal_during_a_checkpoint_write(reference, tmp_path, monkeypatch, guarded_signals):
    """SIGTERM while checkpoint-3 is being written: the write completes, and that checkpoint is the one kept."""
    original = checkpointing.save_file

    def save_file(tensors, path, *args, **kwargs):
        if path.endswith("checkpoint-3.tmp/model.safetensors"):
            os.kill(os.getpid(), signal.SIGTERM)
        return original(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpointing, "save_file", save_file)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match=r"after step 3: saved checkpoint .*checkpoint-3\. Resume with"):
        run_pretraining(dataclasses.replace(ARGS, output_dir=str(run)))
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-3"] and not list(run.glob("*.tmp"))
    _assert_intact(run)
    monkeypatch.undo()
    run_pretraining(dataclasses.replace(ARGS, output_dir=str(run), resume_from_checkpoint="latest"))
    _assert_same_losses(reference, run)


def test_full_disk_during_a_save(reference, tmp_path, monkeypatch):
    original = checkpointing.torch.save

    def save(obj, path, *args, **kwargs):
        if str(path).endswith("checkpoint-6.tmp/optimizer.pt"):
            Path(path).write_bytes(b"PK\x03\x04 half an archive")  # what a full disk leaves behind
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpointing.torch, "save", save)
    run = tmp_path / "run"
    with pytest.raises(OSError, match=r"Could not write checkpoint .*checkpoint-6 \(No space left on device: .*\); the "
                                      r"partial write was removed and the last intact checkpoint is .*checkpoint-3") as error:
        run_pretraining(dataclasses.replace(ARGS, output_dir=str(run)))
    assert error.value.errno == errno.ENOSPC
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-3"] and not list(run.glob("checkpoint-6*"))
    _assert_intact(run)
    monkeypatch.undo()
    run_pretraining(dataclasses.replace(ARGS, output_dir=str(run), resume_from_checkpoint="latest"))
    _assert_same_losses(reference, run)


def test_full_disk_while_logging_a_step(reference, tmp_path, monkeypatch):
    """The disk fills while step 5's line of losses.jsonl is written: half the line is on disk, the error names the
    file and the checkpoint to resume from, and the resumed run drops the torn line and reproduces the losses."""
    from modeling_opt_tri.training import pretrain

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            self.handle.close()

        def write(self, text):
            if json.loads(text)["step"] == 5:
                self.handle.write(text[: len(text) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.handle.write(text)

    monkeypatch.setattr(pretrain, "open", lambda path, mode="r", *a, **k: FullDisk(open(path, mode, *a, **k)), raising=False)
    run = tmp_path / "run"
    with pytest.raises(OSError, match=r"Could not log step 5 to .*losses.jsonl \(\[Errno 28\] No space left on device\); "
                                      r"the last checkpoint is .*checkpoint-3: free space, then resume"):
        run_pretraining(dataclasses.replace(ARGS, output_dir=str(run)))
    _assert_intact(run)
    monkeypatch.undo()
    run_pretraining(dataclasses.replace(ARGS, output_dir=str(run), resume_from_checkpoint="latest"))
    _assert_same_losses(reference, run)


def _bad_folder(folder: Path, rows: int, bad: int) -> Path:
    """`rows` rows; `bad` of them, spread over the folder, have an image file that is not a PNG."""
    export_synthetic_folder(folder, rows, seed=11)
    metadata = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    for index in np.linspace(0, rows - 1, bad).round().astype(int):
        (folder / metadata[index]["image"]).write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    return folder


@pytest.mark.parametrize("rows, bad", [(16, 16), (20, 18)], ids=["every_row", "ninety_percent"])
def test_mostly_bad_dataset_stops_quickly_with_a_clear_message(tmp_path, rows, bad):
    folder = _bad_folder(tmp_path / "data", rows, bad)
    command = [sys.executable, str(REPO_ROOT / "examples" / "pretrain.py"), "--preset", PRESET, "--dataset", str(folder),
               "--train_rows", "0", "--batch_size", "4", "--max_steps", "20", "--save_steps", "2", "--output_dir",
               str(tmp_path / "out"), "--progress", "false", "--tensorboard", "false", "--evaluate", "false"]
    result = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=BOUND_S)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: ") and "could not be decoded, more than --max_bad_row_fraction=0.1" in last, last
    assert result.stderr.count("skipped a corrupt row") <= 8  # it stopped within the first rows, not after many passes
    _assert_intact(tmp_path / "out")


def test_one_bad_row_is_skipped_and_resume_reproduces(tmp_path, monkeypatch, guarded_signals):
    folder = _bad_folder(tmp_path / "data", 48, 1)
    args = dataclasses.replace(ARGS, dataset=str(folder), train_rows=0)
    summary = run_pretraining(dataclasses.replace(args, output_dir=str(tmp_path / "reference")))
    assert summary["rows_skipped"] >= 1 and summary["steps"] == STEPS  # skipped, counted, and the run goes on
    _signal_at_step(monkeypatch, signal.SIGTERM, 5, 0.0)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        run_pretraining(dataclasses.replace(args, output_dir=str(run)))
    monkeypatch.undo()
    resumed = run_pretraining(dataclasses.replace(args, output_dir=str(run), resume_from_checkpoint="latest"))
    assert resumed["rows_skipped"] == summary["rows_skipped"] and resumed["rows_seen"] == summary["rows_seen"]
    _assert_same_losses(_losses(tmp_path / "reference"), run)


# ----------------------------------------------------------------------------------------------------------------------
# Faults that need a process of their own
# ----------------------------------------------------------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"), PYTHONUNBUFFERED="1")


def _cli(output_dir: Path, resume: bool = False) -> list[str]:
    command = [sys.executable, str(REPO_ROOT / "examples" / "pretrain.py"), "--output_dir", str(output_dir)]
    for f in ("preset", "train_rows", "batch_size", "learning_rate", "warmup_steps", "logging_steps", "max_steps",
              "save_steps", "save_total_limit", "progress", "tensorboard", "evaluate"):
        command += [f"--{f}", str(getattr(ARGS, f)).lower() if isinstance(getattr(ARGS, f), bool) else str(getattr(ARGS, f))]
    return command + (["--resume_from_checkpoint", "latest"] if resume else [])


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory) -> list[dict[str, float]]:
    out = tmp_path_factory.mktemp("faults_cli") / "reference"
    subprocess.run(_cli(out), env=_env(out.parent), check=True, capture_output=True, timeout=BOUND_S)
    return _losses(out)


def _last_step(run: Path) -> int:
    try:
        lines = (run / "losses.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, json.JSONDecodeError, KeyError):  # not there yet, or a line being written
        return 0


def _run_until_step_then(command: list[str], run: Path, env, step: int, signum: int, delay: float):
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + BOUND_S
    while time.time() < deadline and process.poll() is None and _last_step(run) < step:
        time.sleep(0.05)
    time.sleep(delay)
    assert process.poll() is None, f"the run ended before step {step}"
    process.send_signal(signum)
    sent = time.time()
    _, stderr = process.communicate(timeout=BOUND_S)
    return process.returncode, stderr, time.time() - sent


def test_cli_sigterm_at_a_random_step_exits_143_naming_the_checkpoint(cli_reference, tmp_path):
    rng = np.random.default_rng(2)
    run, env = tmp_path / "run", _env(tmp_path)
    code, stderr, took = _run_until_step_then(_cli(run), run, env, int(rng.integers(1, STEPS - 2)), signal.SIGTERM,
                                              float(rng.uniform(0.0, 0.3)))
    assert code == 128 + signal.SIGTERM, stderr[-2000:]
    stopped = _last_step(run)
    last = stderr.strip().splitlines()[-1]
    assert last == (f"Interrupted by SIGTERM after step {stopped}: saved checkpoint {run / f'checkpoint-{stopped}'}. "
                    f"Resume with --resume_from_checkpoint latest (or {run / f'checkpoint-{stopped}'})."), last
    assert took < 60  # one step and one checkpoint: a scheduler's grace period
    _assert_intact(run)
    subprocess.run(_cli(run, resume=True), env=env, check=True, capture_output=True, timeout=BOUND_S)
    _assert_same_losses(cli_reference, run)


def test_cli_sigkill_at_a_random_step_then_a_torn_log_tail(cli_reference, tmp_path):
    rng = np.random.default_rng(3)
    run, env = tmp_path / "run", _env(tmp_path)
    code, _, _ = _run_until_step_then(_cli(run), run, env, int(rng.integers(4, STEPS - 1)), signal.SIGKILL,
                                      float(rng.uniform(0.0, 0.3)))
    assert code == -signal.SIGKILL
    _assert_intact(run)
    with open(run / "losses.jsonl", "a") as handle:  # what a kill in the middle of a log write leaves
        handle.write('{"step": 99, "loss": 4.2, "loss/ml')
    result = subprocess.run(_cli(run, resume=True), env=env, capture_output=True, text=True, timeout=BOUND_S)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dropped the torn last line" in result.stderr
    _assert_same_losses(cli_reference, run)


_SIGNAL_DURING_WRITE = """
import os, signal, sys, runpy
from modeling_opt_tri.training import checkpointing
original = checkpointing.save_file
def save_file(tensors, path, *args, **kwargs):
    if path.endswith("checkpoint-3.tmp/model.safetensors"):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a second one: exit at once
    return original(tensors, path, *args, **kwargs)
checkpointing.save_file = save_file
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_cli_second_signal_during_a_checkpoint_write_exits_at_once(cli_reference, tmp_path):
    run, env = tmp_path / "run", _env(tmp_path)
    result = subprocess.run([sys.executable, "-c", _SIGNAL_DURING_WRITE, *_cli(run)[1:]], env=env, capture_output=True,
                            text=True, timeout=BOUND_S)
    assert result.returncode == -signal.SIGTERM, result.stderr[-2000:]  # died at once, by the signal
    assert "send it again to exit at once" in result.stderr
    assert (run / "checkpoint-3.tmp").is_dir() and list_checkpoints(run) == []  # the half write is never picked
    subprocess.run(_cli(run, resume=True), env=env, check=True, capture_output=True, timeout=BOUND_S)
    assert not (run / "checkpoint-3.tmp").exists()
    _assert_intact(run)
    _assert_same_losses(cli_reference, run)
