"""End-to-end tests of the pre-training loop: determinism, kill + exact resume, corrupt rows, NaN stop, grouping."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT
from modeling_opt_tri.data import export_synthetic_folder
from modeling_opt_tri.data.collate import LengthGroupedBatchSampler
from modeling_opt_tri.training.checkpointing import latest_checkpoint, list_checkpoints
from modeling_opt_tri.training.pretrain import NonFiniteLossError, PretrainArguments, read_history, run_pretraining

PRESET = str(REPO_ROOT / "configuration" / "tiny")
COMMON = dict(preset=PRESET, train_rows=48, batch_size=8, eval_rows=16, learning_rate=1e-3, warmup_steps=2,
              logging_steps=2, progress=False, tensorboard=False, evaluate=False)


def _cli(output_dir: Path, max_steps: int, save_steps: int, resume: bool = False) -> list[str]:
    args = [sys.executable, str(REPO_ROOT / "examples" / "pretrain.py"), "--preset", PRESET, "--output_dir", str(output_dir),
            "--train_rows", "48", "--batch_size", "8", "--max_steps", str(max_steps), "--save_steps", str(save_steps),
            "--learning_rate", "1e-3", "--warmup_steps", "2", "--progress", "false", "--tensorboard", "false",
            "--evaluate", "false", "--save_total_limit", "0"]
    return args + (["--resume_from_checkpoint", "latest"] if resume else [])


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"), PYTHONUNBUFFERED="1")
    return env


@pytest.mark.slow
def test_sigkill_and_resume_reproduces_losses_and_weights(tmp_path):
    env = _env(tmp_path)
    steps = 14
    reference = tmp_path / "reference"
    subprocess.run(_cli(reference, steps, save_steps=3), env=env, check=True, capture_output=True, timeout=600)
    expected = _losses(reference)
    assert [r["step"] for r in expected] == list(range(1, steps + 1))

    rng = np.random.default_rng(0)
    run = tmp_path / "killed"
    kills = 0
    for attempt in range(3):  # kill at random points (including during checkpoint writes), resume each time
        process = subprocess.Popen(_cli(run, steps, save_steps=3, resume=attempt > 0), env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start_step = _last_step(run)
        deadline = time.time() + 300
        target = start_step + int(rng.integers(2, 5))
        while time.time() < deadline and process.poll() is None and _last_step(run) < target:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 0.5)))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
        for checkpoint in list_checkpoints(run):  # every visible checkpoint is complete and loadable
            load_file(str(checkpoint / "model.safetensors"))
            json.loads((checkpoint / "trainer_state.json").read_text())
    assert kills >= 1
    subprocess.run(_cli(run, steps, save_steps=3, resume=True), env=env, check=True, capture_output=True, timeout=600)
    resumed = _losses(run)
    assert [r["step"] for r in resumed] == list(range(1, steps + 1))
    for a, b in zip(expected, resumed):
        assert a == pytest.approx(b, abs=1e-5), f"step {a['step']}: {a} != {b}"
    final_a = load_file(str(reference / "final" / "model.safetensors"))
    final_b = load_file(str(run / "final" / "model.safetensors"))
    assert final_a.keys() == final_b.keys()
    for key in final_a:
        torch.testing.assert_close(final_a[key], final_b[key], rtol=0, atol=1e-6)


def _losses(run: Path) -> list[dict[str, float]]:
    """Per-step losses (timing fields such as samples/s differ between runs)."""
    return [{k: v for k, v in r.items() if k == "step" or k.startswith("loss")} for r in read_history(run / "losses.jsonl")]


def _last_step(run: Path) -> int:
    history = run / "losses.jsonl"
    if not history.exists():
        return 0
    lines = [line for line in history.read_text().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except json.JSONDecodeError:  # a line being written
        return 0


@pytest.mark.slow
def test_same_seed_same_losses_and_schedules(tmp_path):
    a = run_pretraining(PretrainArguments(output_dir=str(tmp_path / "a"), max_steps=4, save_steps=0, **COMMON))
    b = run_pretraining(PretrainArguments(output_dir=str(tmp_path / "b"), max_steps=4, save_steps=0, **COMMON))
    for x, y in zip(_losses(tmp_path / "a"), _losses(tmp_path / "b"), strict=True):
        assert x == pytest.approx(y, abs=1e-5)
    assert a["last_losses"] == pytest.approx(b["last_losses"], abs=1e-5)
    # one task per step (OPT/UNITER scheduling): each step reports exactly one loss
    run_pretraining(PretrainArguments(output_dir=str(tmp_path / "mix"), max_steps=4, save_steps=0, schedule="mix",
                                      mix_ratios="mlm=1,contrastive=1", **COMMON))
    for record in read_history(tmp_path / "mix" / "losses.jsonl"):
        assert len([k for k in record if k.startswith("loss/")]) == 1
    # objectives switch: only the chosen ones are computed
    run_pretraining(PretrainArguments(output_dir=str(tmp_path / "only"), max_steps=2, save_steps=0,
                                      objectives="contrastive=1", **COMMON))
    assert {k for k in read_history(tmp_path / "only" / "losses.jsonl")[0] if k.startswith("loss/")} == {"loss/contrastive"}


@pytest.mark.slow
def test_corrupt_rows_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "data"
    export_synthetic_folder(folder, 24, seed=3)
    metadata = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    (folder / metadata[0]["image"]).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / metadata[1]["audio"]).write_bytes(b"RIFF garbage")
    args = dict(COMMON, train_rows=0, batch_size=6)
    summary = run_pretraining(PretrainArguments(output_dir=str(tmp_path / "out"), dataset=str(folder), max_steps=4,
                                                save_steps=0, max_bad_row_fraction=0.2, **args))
    assert summary["rows_skipped"] == 2  # 24 rows, one epoch exactly
    assert summary["rows_seen"] == 24
    with pytest.raises(RuntimeError, match="max_bad_row_fraction"):
        run_pretraining(PretrainArguments(output_dir=str(tmp_path / "strict"), dataset=str(folder), max_steps=12,
                                          save_steps=0, max_bad_row_fraction=0.01, **args))


@pytest.fixture
def cpu_fp16(monkeypatch):
    """
    Make `Accelerator(mixed_precision="fp16")` on CPU run accelerate's real fp16 path: fp16 autocast around the model's
    forward (`prepare`), `scaler.scale(loss).backward()`, unscaling in `clip_grad_norm_`, `scaler.step` / `update` in
    `AcceleratedOptimizer.step` and `optimizer_step_was_skipped`. Out of the box accelerate turns fp16 off on CPU
    (`native_amp=False`, no scaler: the run is fp32); here it gets a `torch.amp.GradScaler("cpu")` where a GPU gets
    `GradScaler("cuda")`. The initial scale is low and never grows within a test, so that only the overflows a test
    injects skip steps (with the default 65536 the first steps of the tiny model overflow by themselves).
    """
    import accelerate

    original = accelerate.Accelerator.__init__
    init_scale = 2.0**10

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.mixed_precision == "fp16" and self.device.type == "cpu":
            assert self.scaler is None and not self.native_amp  # what accelerate does on CPU (else: drop this fixture)
            self.native_amp = True
            self.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=10_000)

    monkeypatch.setattr(accelerate.Accelerator, "__init__", init)
    # `AcceleratorState` is a per-process singleton that refuses a different mixed_precision once set: reset it
    # around the fp16 runs so that they and the fp32 runs of this module can share one process
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield init_scale
    AcceleratorState._reset_state()


def _params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    return [name for name in before if not torch.equal(before[name], after[name])]


@pytest.mark.slow
def test_fp16_overflow_steps_are_skipped_and_counted(tmp_path, monkeypatch, cpu_fp16):
    from modeling_opt_tri import OptTriConfig, OptTriForPreTraining
    from modeling_opt_tri.training.checkpointing import load_checkpoint
    from modeling_opt_tri.training.pretrain import _optimizer

    original = OptTriForPreTraining.forward
    overflow = {2, 4}  # steps whose fp16 gradients overflow
    before: dict[int, dict[str, torch.Tensor]] = {}  # step -> parameters at its start

    def forward(self, *args, **kwargs):
        step = len(before) + 1
        before[step] = _params(self)
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16
        output = original(self, *args, **kwargs)
        if step in overflow:
            # a finite loss (~1e31 in fp32, ~1e34 once scaled) whose gradients overflow in the fp16 backward:
            # a gradient overflow the scaler must skip, not a NaN loss that stops the run
            output["loss"] = output.loss * 1e30
            assert torch.isfinite(output.loss * cpu_fp16)
        return output

    monkeypatch.setattr(OptTriForPreTraining, "forward", forward)
    out = tmp_path / "fp16"
    steps = 5
    args = PretrainArguments(output_dir=str(out), max_steps=steps, save_steps=2, mixed_precision="fp16",
                             # with warm-up, step 1 runs at lr 0 and changes nothing; fp16 on CPU is slow: small batches
                             **dict(COMMON, warmup_steps=0, batch_size=4))
    summary = run_pretraining(args)
    assert summary["steps"] == steps and (out / "final" / "model.safetensors").exists()  # the run finished
    assert summary["skipped_optimizer_steps"] == len(overflow)
    assert summary["loss_scale"] == cpu_fp16 * 0.5 ** len(overflow)  # halved at each overflow
    history = read_history(out / "losses.jsonl")
    assert [r["step"] for r in history] == list(range(1, steps + 1))
    assert [r["skipped_optimizer_steps"] for r in history] == [0, 1, 1, 2, 2]
    assert [r["loss_scale"] for r in history] == [cpu_fp16, cpu_fp16 / 2, cpu_fp16 / 2, cpu_fp16 / 4, cpu_fp16 / 4]
    assert all(np.isfinite(r["loss"]) for r in history)
    lrs = [r["lr"] for r in history]  # the schedule advances on real updates only: 1, (2), 3, (4), 5 = 3 updates
    assert lrs[1] == lrs[0] and lrs[3] == lrs[2] and len({lrs[0], lrs[2], lrs[4]}) == 3

    final = load_file(str(out / "final" / "model.safetensors"))
    after = {step: before[step + 1] for step in range(1, steps)}
    after[steps] = {name: final[name] for name in before[steps] if name in final}
    for step in range(1, steps + 1):
        changed = _changed({k: before[step][k] for k in after[step]}, after[step])
        if step in overflow:
            assert changed == [], f"step {step} was skipped but changed {changed[:5]}"
        else:
            # the code decoders (for DIR/DAR, off here) never train; most of the encoder tensors do
            encoder = [k for k in after[step] if k.startswith("opt_tri.")]
            assert len([k for k in changed if k.startswith("opt_tri.")]) > len(encoder) // 2, (
                f"step {step} trained only {len(changed)} tensors")

    # the checkpoints hold the counters and the scaler state, and resuming restores the scale
    trainer_state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert trainer_state["skipped_steps"] == 2 and trainer_state["global_step"] == 4
    assert torch.load(out / "checkpoint-4" / "scaler.pt", weights_only=True)["scale"] == cpu_fp16 / 4
    model = OptTriForPreTraining(OptTriConfig.from_pretrained(PRESET))
    optimizer = _optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu")
    load_checkpoint(out / "checkpoint-5", model, optimizer, scheduler, scaler=scaler)
    assert scaler.get_scale() == cpu_fp16 / 4
    assert scheduler.last_epoch == steps - len(overflow)
    # AdamW's own step counters only count real updates (a head without a gradient in some batch counts fewer)
    assert max(int(s["step"]) for s in optimizer.state_dict()["state"].values()) == steps - len(overflow)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["no", "fp16"])
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, precision, request):
    from modeling_opt_tri import OptTriConfig, OptTriForPreTraining
    from modeling_opt_tri.training.checkpointing import load_checkpoint
    from modeling_opt_tri.training.pretrain import _optimizer

    if precision == "fp16":
        request.getfixturevalue("cpu_fp16")  # a NaN loss must stop an fp16 run too, not be skipped as an overflow
    original = OptTriForPreTraining.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:
            output["loss"] = output.loss * float("nan")
        return output

    monkeypatch.setattr(OptTriForPreTraining, "forward", poisoned)
    out = tmp_path / "nan"
    args = PretrainArguments(output_dir=str(out), max_steps=10, save_steps=2, mixed_precision=precision,
                             **dict(COMMON, batch_size=4))
    with pytest.raises(NonFiniteLossError, match=r"NaN/inf loss: the loss became nan at step 5 ") as error:
        run_pretraining(args)
    assert "checkpoint-4" in str(error.value) and "--resume_from_checkpoint latest" in str(error.value)
    assert calls["n"] == 5  # stopped at once
    # the last good checkpoint is the one before step 5, complete and loadable; nothing later was written
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    assert not list(out.glob("*.tmp")) and not (out / "final").exists()
    assert [r["step"] for r in read_history(out / "losses.jsonl")] == [1, 2, 3, 4]
    model = OptTriForPreTraining(OptTriConfig.from_pretrained(PRESET))
    optimizer = _optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = load_checkpoint(latest_checkpoint(out), model, optimizer, scheduler)
    assert state["global_step"] == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if precision == "fp16":
        assert (latest_checkpoint(out) / "scaler.pt").exists()


def test_fp16_on_cpu_without_a_scaler_warns(tmp_path, monkeypatch):
    """Out of the box, accelerate runs fp16 on CPU as fp32 (no autocast, no scaler): say so instead of pretending."""
    from accelerate.state import AcceleratorState

    from modeling_opt_tri.training import pretrain

    warnings = []
    monkeypatch.setattr(pretrain.logger, "warning", lambda message, *args, **kwargs: warnings.append(str(message)))
    AcceleratorState._reset_state()
    try:
        summary = run_pretraining(PretrainArguments(output_dir=str(tmp_path / "cpu16"), max_steps=1, save_steps=0,
                                                    mixed_precision="fp16", **dict(COMMON, batch_size=4)))
    finally:
        AcceleratorState._reset_state()
    assert any("--mixed_precision fp16 has no effect on cpu" in w for w in warnings), warnings
    assert summary["skipped_optimizer_steps"] == 0 and "loss_scale" not in summary


def test_length_grouping_reduces_padding_and_is_deterministic():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=2000).tolist()
    grouped = LengthGroupedBatchSampler(lengths, 32, seed=1)
    plain = LengthGroupedBatchSampler(lengths, 32, seed=1, group_by_length=False)

    def padded_fraction(batches):
        padded = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
        return padded / sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded_fraction(grouped.batches(0)) < 0.1 < padded_fraction(plain.batches(0))
    assert grouped.batches(3) == LengthGroupedBatchSampler(lengths, 32, seed=1).batches(3)
    assert grouped.batches(0) != grouped.batches(1)
    assert sorted(i for b in grouped.batches(2) for i in b) == list(range(2000))
    budget = LengthGroupedBatchSampler(lengths, 64, max_tokens=2048, seed=1)
    for batch in budget.batches(0):
        assert max(lengths[i] for i in batch) * len(batch) <= 2048
    with pytest.raises(ValueError, match="max_tokens"):
        LengthGroupedBatchSampler(lengths, 8, max_tokens=10)


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    # accelerate's own multi-CPU launcher needs MPI; torchrun-style launch on CPU: --multi_gpu + ACCELERATE_USE_CPU
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29537",
               str(REPO_ROOT / "examples" / "pretrain.py"), "--preset", PRESET, "--output_dir", str(out),
               "--train_rows", "48", "--batch_size", "4", "--max_steps", "4", "--save_steps", "2",
               "--progress", "false", "--tensorboard", "false", "--evaluate", "false"]
    env = dict(_env(tmp_path), ACCELERATE_USE_CPU="true")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    history = read_history(out / "losses.jsonl")
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in history)
    # one scheduler step per optimizer step, as with one process (accelerate's default would step it twice: the
    # 50-step warm-up would end at step 25)
    defaults = PretrainArguments()
    assert [r["lr"] for r in history] == pytest.approx([defaults.learning_rate * k / defaults.warmup_steps for k in range(1, 5)])
    state = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert (out / "checkpoint-4" / "rng_state_1.json").exists()  # every process saved its RNG state


@pytest.mark.slow
def test_streaming_dataset(tmp_path):
    summary = run_pretraining(PretrainArguments(output_dir=str(tmp_path / "stream"), max_steps=3, save_steps=0,
                                                streaming=True, **COMMON))
    assert summary["steps"] == 3 and summary["rows_seen"] == 24
    assert len(read_history(tmp_path / "stream" / "losses.jsonl")) == 3


_KILL_DURING_CHECKPOINT = """
import os, signal, sys, runpy
import safetensors.torch
from modeling_opt_tri.training import checkpointing
original = checkpointing.save_file
calls = {"n": 0}
def dying_save_file(tensors, path, *args, **kwargs):
    original(tensors, path, *args, **kwargs)
    if path.endswith("model.safetensors"):
        calls["n"] += 1
        if calls["n"] == int(os.environ["KILL_AT_CHECKPOINT"]):
            os.kill(os.getpid(), signal.SIGKILL)  # half-way through writing this checkpoint
checkpointing.save_file = dying_save_file
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_leaves_no_partial_checkpoint(tmp_path):
    env = _env(tmp_path)
    steps = 8
    reference = tmp_path / "reference"
    subprocess.run(_cli(reference, steps, save_steps=2), env=env, check=True, capture_output=True, timeout=600)
    run = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", _KILL_DURING_CHECKPOINT, *_cli(run, steps, save_steps=2)[1:]],
                            env=dict(env, KILL_AT_CHECKPOINT="2"), capture_output=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    assert (run / "checkpoint-4.tmp").is_dir()  # the write was interrupted ...
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2"]  # ... and only complete checkpoints count
    subprocess.run(_cli(run, steps, save_steps=2, resume=True), env=env, check=True, capture_output=True, timeout=600)
    assert not (run / "checkpoint-4.tmp").exists()
    for a, b in zip(_losses(reference), _losses(run), strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    final_a = load_file(str(reference / "final" / "model.safetensors"))
    final_b = load_file(str(run / "final" / "model.safetensors"))
    for key in final_a:
        torch.testing.assert_close(final_a[key], final_b[key], rtol=0, atol=1e-6)


def _tiny_tokenizers(folder: Path) -> tuple[str, str]:
    """Randomly initialised VQ tokenizers that fit the tiny preset (64-px images, 32 mel bins at 16 kHz)."""
    from modeling_opt_tri import OptTriAudioVQConfig, OptTriAudioVQModel, OptTriImageVQConfig, OptTriImageVQModel

    torch.manual_seed(0)
    image = OptTriImageVQModel(OptTriImageVQConfig(image_size=64, downsample=8, codebook_size=32, embedding_dim=8,
                                                   hidden_channels=8, num_res_blocks=1))
    audio = OptTriAudioVQModel(OptTriAudioVQConfig(num_mel_bins=32, frames_per_code=4, codebook_size=16, embedding_dim=8,
                                                   hidden_channels=8, num_res_blocks=1))
    image.save_pretrained(folder / "image_tokenizer")
    audio.save_pretrained(folder / "audio_tokenizer")
    return str(folder / "image_tokenizer"), str(folder / "audio_tokenizer")


@pytest.mark.slow
def test_vq_code_objectives_train_with_the_tokenizers(tmp_path):
    image_tok, audio_tok = _tiny_tokenizers(tmp_path)
    with pytest.raises(ValueError, match="--image_tokenizer"):
        run_pretraining(PretrainArguments(output_dir=str(tmp_path / "x"), max_steps=1, objectives="mrc=1", **COMMON))
    with pytest.raises(ValueError, match="--audio_tokenizer"):
        run_pretraining(PretrainArguments(output_dir=str(tmp_path / "x"), max_steps=1, objectives="dar=1", **COMMON))
    # the tokenizers switch MRC, DIR and DAR on next to the preset's objectives, and size the code decoders
    summary = run_pretraining(PretrainArguments(output_dir=str(tmp_path / "codes"), max_steps=6, save_steps=0,
                                                image_tokenizer=image_tok, audio_tokenizer=audio_tok, **COMMON))
    history = read_history(tmp_path / "codes" / "losses.jsonl")
    assert sum("loss/mrc" in record for record in history) >= 3  # conditional masking: most steps mask some image
    assert any("loss/dir" in record for record in history) and any("loss/dar" in record for record in history)
    assert all(np.isfinite(v) for record in history for k, v in record.items() if k.startswith("loss"))
    from modeling_opt_tri import OptTriConfig

    config = OptTriConfig.from_pretrained(tmp_path / "codes" / "final")
    assert (config.image_decoder_config.codebook_size, config.image_decoder_config.grid_size) == (32, 8)
    assert config.audio_decoder_config.codebook_size == 16
    assert {n for n, w in config.objectives.items() if w > 0} >= {"mrc", "dir", "dar", "mlm", "contrastive"}
    assert summary["steps"] == 6
    # MRC-kl on request, with the soft assignments
    run_pretraining(PretrainArguments(output_dir=str(tmp_path / "kl"), max_steps=2, save_steps=0,
                                      objectives="mrc_kl=1", image_tokenizer=image_tok, **COMMON))
    for record in read_history(tmp_path / "kl" / "losses.jsonl"):
        assert set(k for k in record if k.startswith("loss/")) == {"loss/mrc_kl"} and record["loss/mrc_kl"] >= 0


# ----------------------------------------------------------------------------------------------------------------------
# Issue 14: corrupt-row limit, resume checks, signals, damaged checkpoints and logs
# ----------------------------------------------------------------------------------------------------------------------


def _folder_with_bad_rows(folder: Path, rows: int, bad: int, seed: int = 5) -> Path:
    """A metadata folder of `rows` rows whose first `bad` rows point to image files that do not exist."""
    export_synthetic_folder(folder, rows, seed=seed)
    metadata = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    for row in metadata[:bad]:
        (folder / row["image"]).unlink()
    return folder


@pytest.mark.slow
def test_all_corrupt_rows_stop_the_cli_quickly(tmp_path):
    """Eight rows with missing image files, --max_steps 2: looped forever (a million warnings); now stops at once,
    whatever --max_bad_row_fraction says (1.0: a whole pass without one usable row stops it too)."""
    folder = _folder_with_bad_rows(tmp_path / "data", 8, 8)
    for extra, message in (([], r"RuntimeError: 6 of the 6 rows drawn so far \(100.0%\) could not be decoded, more than "
                                 r"--max_bad_row_fraction=0.1 allows"),
                           (["--max_bad_row_fraction", "1"], r"RuntimeError: A whole pass over the training data gave no "
                                                              r"usable row \(8 corrupt rows skipped so far\)")):
        command = [sys.executable, str(REPO_ROOT / "examples" / "pretrain.py"), "--preset", PRESET, "--dataset", str(folder),
                   "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--batch_size", "2", "--progress", "false",
                   "--tensorboard", "false", "--evaluate", "false", *extra]
        start = time.time()
        result = subprocess.run(command, env=_env(tmp_path), capture_output=True, text=True, timeout=180)
        assert result.returncode != 0 and time.time() - start < 180
        assert re.search(message, result.stderr), result.stderr[-2000:]
        assert result.stderr.count("skipped a corrupt row") <= 8


def test_short_dataset_with_most_rows_bad_stops(tmp_path):
    """10 of 16 rows bad trained silently: the limit applies from the first row, over at least 50 rows."""
    folder = _folder_with_bad_rows(tmp_path / "data", 16, 10)
    args = dict(COMMON, train_rows=0, batch_size=4)
    with pytest.raises(RuntimeError, match=r"could not be decoded, more than --max_bad_row_fraction=0.1 allows \(the "
                                           r"fraction is taken of at least 50 rows: at most 5 corrupt rows"):
        run_pretraining(PretrainArguments(output_dir=str(tmp_path / "out"), dataset=str(folder), max_steps=4,
                                          save_steps=0, **args))
    # a few bad rows early on do not stop a run: 3 of 48 (6%) is within the default 10%
    folder = _folder_with_bad_rows(tmp_path / "few", 48, 3)
    summary = run_pretraining(PretrainArguments(output_dir=str(tmp_path / "few_out"), dataset=str(folder), max_steps=3,
                                                save_steps=0, **dict(COMMON, train_rows=0, batch_size=8)))
    assert summary["steps"] == 3 and summary["rows_skipped"] >= 1


@pytest.fixture(scope="module")
def reference_4_steps(tmp_path_factory):
    """An uninterrupted 4-step run with checkpoints at steps 2 and 4 (shared by the resume tests of this module)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    args = PretrainArguments(output_dir=str(out), max_steps=4, save_steps=2, save_total_limit=0, **COMMON)
    run_pretraining(args)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    return out, args


def _warnings(monkeypatch, *modules) -> list[str]:
    messages: list[str] = []
    for module in modules:
        monkeypatch.setattr(module.logger, "warning", lambda message, *a, **k: messages.append(str(message)))
    return messages


def test_resume_refuses_changed_arguments_and_allows_more_steps(reference_4_steps, tmp_path, monkeypatch):
    import dataclasses
    import shutil

    from modeling_opt_tri.training import pretrain

    reference, args = reference_4_steps
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    same = dataclasses.replace(args, output_dir=str(run), resume_from_checkpoint="latest")
    with pytest.raises(ValueError, match=r"Cannot resume from .*checkpoint-4: the run would not continue the one that "
                                         r"wrote it. Changed:\n  --batch_size 4 \(checkpoint: 8\)\n  --learning_rate "
                                         r"0.002 \(checkpoint: 0.001\)\nResume with the checkpoint's values"):
        run_pretraining(dataclasses.replace(same, batch_size=4, learning_rate=2e-3))
    with pytest.raises(ValueError, match=r"--max_steps 3 is below the checkpoint's step 4"):
        run_pretraining(dataclasses.replace(same, max_steps=3))
    warnings = _warnings(monkeypatch, pretrain)
    summary = run_pretraining(dataclasses.replace(same, max_steps=6, logging_steps=3))
    assert summary["steps"] == 6
    assert any("changed argument: --max_steps 6 (checkpoint: 4): the learning-rate schedule now spans" in w for w in warnings)
    assert any("changed argument: --logging_steps 3 (checkpoint: 2)" in w for w in warnings)
    assert [r["step"] for r in read_history(run / "losses.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_resume_with_another_number_of_processes_is_refused_before_work(reference_4_steps, tmp_path):
    import dataclasses
    import shutil

    reference, args = reference_4_steps
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(reference / "checkpoint-4", checkpoint)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    (checkpoint / "trainer_state.json").write_text(json.dumps(dict(state, world_size=2)))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"checkpoint-4 was written by 2 processes; resuming with 1 would change"):
        run_pretraining(dataclasses.replace(args, output_dir=str(out), resume_from_checkpoint=str(checkpoint)))
    assert not out.exists()  # refused before the model was built or anything written


def test_latest_falls_back_past_a_truncated_checkpoint_and_reproduces(reference_4_steps, tmp_path, monkeypatch):
    import dataclasses
    import shutil

    from modeling_opt_tri.training import checkpointing

    reference, args = reference_4_steps
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "final")
    weights = run / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    warnings = _warnings(monkeypatch, checkpointing)
    run_pretraining(dataclasses.replace(args, output_dir=str(run), resume_from_checkpoint="latest"))
    assert any(f"{weights}: SafetensorError" in w and "falling back" in w for w in warnings), warnings
    for a, b in zip(_losses(reference), _losses(run), strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    assert checkpointing.checkpoint_problems(run / "checkpoint-4") == []  # rewritten by the resumed run


@pytest.mark.parametrize("name, damage, message", [
    ("model.safetensors", lambda f: f.write_bytes(f.read_bytes()[:1000]), r"model.safetensors: cannot be read \(SafetensorError"),
    ("optimizer.pt", lambda f: f.write_bytes(f.read_bytes()[:-200]), r"optimizer.pt: cannot be read \(RuntimeError"),
    ("scheduler.pt", lambda f: f.write_bytes(b"garbage"), r"scheduler.pt: cannot be read"),
    ("trainer_state.json", lambda f: f.write_text('{"global_step": 4, "epo'), r"trainer_state.json: cannot be read \(JSONDecodeError"),
    ("trainer_state.json", lambda f: f.write_text("[1, 2]"), r"trainer_state.json: not a trainer state"),
    ("rng_state_0.json", lambda f: f.write_text("{}"), r"rng_state_0.json: cannot be read \(KeyError"),
])
def test_every_checkpoint_load_error_names_the_file(reference_4_steps, tmp_path, name, damage, message):
    import shutil

    from modeling_opt_tri import OptTriConfig, OptTriForPreTraining
    from modeling_opt_tri.training.checkpointing import CorruptCheckpointError, checkpoint_problems, load_checkpoint
    from modeling_opt_tri.training.pretrain import _optimizer

    reference, args = reference_4_steps
    checkpoint = tmp_path / "checkpoint-4"
    shutil.copytree(reference / "checkpoint-4", checkpoint)
    damage(checkpoint / name)
    model = OptTriForPreTraining(OptTriConfig.from_pretrained(PRESET))
    optimizer = _optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(CorruptCheckpointError, match=re.escape(str(checkpoint) + "/") + message):
        load_checkpoint(checkpoint, model, optimizer, scheduler)
    if name != "rng_state_0.json":  # structural checks see truncation and bad JSON (not a JSON object of wrong keys)
        assert any(str(checkpoint / name) in problem for problem in checkpoint_problems(checkpoint))


def test_only_broken_checkpoints_is_an_error_and_a_torn_log_tail_is_dropped(reference_4_steps, tmp_path):
    import shutil

    from modeling_opt_tri.training.checkpointing import CorruptCheckpointError, find_resumable_checkpoint, repair_history

    reference, _ = reference_4_steps
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for checkpoint in list_checkpoints(run):
        (checkpoint / "optimizer.pt").unlink()
    with pytest.raises(CorruptCheckpointError, match=r"every checkpoint in .* is incomplete or corrupt \(checkpoint-4, checkpoint-2"):
        find_resumable_checkpoint(run)
    history = run / "losses.jsonl"
    lines = history.read_text().splitlines()
    history.write_text("\n".join(lines) + '\n{"step": 5, "loss": 3.1')  # killed while writing step 5
    assert [r["step"] for r in repair_history(history, 3)] == [1, 2, 3]
    assert [r["step"] for r in read_history(history)] == [1, 2, 3]
    history.write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")  # damage in the middle is not an interrupted write
    with pytest.raises(CorruptCheckpointError, match=r"losses.jsonl, line 2: not a JSON log record"):
        repair_history(history, 4)


@pytest.fixture
def signals_raise_in_the_test():
    """While a test runs, SIGTERM/SIGINT raise here instead of ending pytest: without the training loop's own handler
    (the old code), a signal then fails the test instead of killing the test run."""
    class Killed(Exception):
        pass

    def handler(signum, frame):
        raise Killed(f"signal {signum} reached the default handler")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in previous.items():
        signal.signal(s, h)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_the_step_saves_and_resume_reproduces(reference_4_steps, tmp_path, monkeypatch, signum,
                                                              signals_raise_in_the_test):
    import dataclasses

    from modeling_opt_tri import OptTriForPreTraining
    from modeling_opt_tri.training.checkpointing import checkpoint_problems
    from modeling_opt_tri.training.pretrain import TrainingInterrupted

    reference, args = reference_4_steps
    original = OptTriForPreTraining.forward
    calls = {"n": 0}

    def forward(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # during step 3 (as a scheduler would, at any moment)
            signal.raise_signal(signum)
        return original(self, *a, **k)

    monkeypatch.setattr(OptTriForPreTraining, "forward", forward)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as error:
        run_pretraining(dataclasses.replace(args, output_dir=str(run)))
    assert error.value.exit_code == 128 + signum and error.value.step == 3
    assert f"Interrupted by {signal.Signals(signum).name} after step 3: saved checkpoint {run / 'checkpoint-3'}" in str(error.value)
    assert calls["n"] == 3 and checkpoint_problems(run / "checkpoint-3") == [] and not (run / "final").exists()
    assert signal.getsignal(signum) is not signal.SIG_DFL  # the loop's handler is gone again (the test's is back)
    monkeypatch.setattr(OptTriForPreTraining, "forward", original)
    run_pretraining(dataclasses.replace(args, output_dir=str(run), resume_from_checkpoint="latest"))
    for a, b in zip(_losses(reference), _losses(run), strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_an_empty_stream_is_an_error_not_an_endless_loop():
    """A streaming dataset without a row looped over empty epochs forever."""
    from modeling_opt_tri.training.pretrain import BatchStream

    class EmptyStream:  # an iterable without a length, as a streaming dataset
        def __iter__(self):
            return iter(())

    def too_long(signum, frame):
        raise TimeoutError("BatchStream.iterate loops over empty epochs")

    stream = BatchStream(EmptyStream(), lambda rows: {"rows": rows},
                         PretrainArguments(streaming=True, batch_size=4, dataset="./empty"), 0, 1, None)
    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(30)
    try:
        with pytest.raises(ValueError, match=r"The training data gave no batch in a whole pass \(epoch 0\): is --dataset "
                                             r"'./empty' \(split 'train'\) empty\?"):
            next(stream.iterate(0, 0))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
