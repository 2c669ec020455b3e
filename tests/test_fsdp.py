"""Scaling out: FSDP2 pre-training under `accelerate launch` on 2 CPU processes (gloo), sharded checkpoints with exact
resume after SIGKILL, a consolidated `final/`, a dying rank that ends the job, and the local contrastive loss."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import REPO_ROOT, run_without_our_package
from modeling_opt_tri.training.checkpointing import list_checkpoints
from modeling_opt_tri.training.pretrain import read_history

CPU_FSDP2 = REPO_ROOT / "configuration" / "accelerate" / "cpu_fsdp2_2proc.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _local_loss_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from modeling_opt_tri.modeling_opt_tri import contrastive_loss

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    projection = torch.nn.Linear(6, 5)  # the same weights on both ranks, as DDP keeps them
    logit_scale = torch.nn.Parameter(torch.tensor(2.0))
    inputs = torch.randn(world, 4, 2, 6)[rank]  # this rank's rows
    valid = torch.tensor([True, True, rank == 0, True])  # a row without a partner on rank 1
    results = {}
    for local in (False, True):
        projection.zero_grad()
        logit_scale.grad = None
        a, b = (F.normalize(projection(inputs[:, k]), dim=-1) for k in range(2))
        loss = contrastive_loss(a, b, logit_scale, valid, local_loss=local)
        loss.backward()
        grads = [projection.weight.grad, projection.bias.grad, logit_scale.grad]
        for grad in grads:  # what DDP / FSDP do with the gradients
            torch.distributed.all_reduce(grad)
            grad /= world
        mean_loss = loss.detach().clone()
        torch.distributed.all_reduce(mean_loss)
        results[local] = {"loss": mean_loss / world, "grads": [g.clone() for g in grads]}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_local_contrastive_loss_has_the_global_gradients_on_two_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_local_loss_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(results[True]["loss"], results[False]["loss"], rtol=1e-5, atol=1e-6)
        for local, full in zip(results[True]["grads"], results[False]["grads"], strict=True):
            assert full.abs().max() > 0
            torch.testing.assert_close(local, full, rtol=1e-4, atol=1e-6)


_KILL_DURING_CHECKPOINT = """
import os, signal, sys, runpy
from pathlib import Path
from modeling_opt_tri.training import checkpointing
original = checkpointing.save_sharded_state
calls = {"n": 0}
def dying_save(folder, model, optimizer):
    original(folder, model, optimizer)  # every rank has written its shards, nothing is renamed yet
    calls["n"] += 1
    if calls["n"] == int(os.environ["KILL_AT_CHECKPOINT"]) and os.environ["RANK"] == "0":
        launcher = os.getppid()  # the whole job at once, as a crashed machine: the launcher, the other rank, this one
        workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == launcher]
        for pid in [launcher] + [pid for pid in workers if pid != os.getpid()] + [os.getpid()]:
            os.kill(pid, signal.SIGKILL)
def _parent(entry):
    try:
        return int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
checkpointing.save_sharded_state = dying_save
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _launch(output_dir: Path, max_steps: int, save_steps: int, resume: bool = False, script: Path | None = None,
            preset: str | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    script = script or REPO_ROOT / "examples" / "pretrain.py"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_FSDP2),
               "--main_process_port", str(_free_port()), str(script)]
    if script.name != "pretrain.py":  # a wrapper that runs examples/pretrain.py
        command.append(str(REPO_ROOT / "examples" / "pretrain.py"))
    command += ["--preset", preset or str(REPO_ROOT / "configuration" / "tiny"), "--output_dir", str(output_dir),
                "--train_rows", "48", "--batch_size", "4", "--max_steps", str(max_steps), "--save_steps", str(save_steps),
                "--learning_rate", "1e-3", "--warmup_steps", "2", "--progress", "false", "--tensorboard", "false",
                "--evaluate", "false", "--save_total_limit", "0", *extra]
    return command + (["--resume_from_checkpoint", "latest"] if resume else [])


def _env(tmp_path: Path) -> dict[str, str]:
    # no ACCELERATE_USE_CPU: a CPU-only torchrun launch must be recognised as one
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"), PYTHONUNBUFFERED="1")
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def _run(command: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _losses(run: Path) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k == "step" or k.startswith("loss")} for r in read_history(run / "losses.jsonl")]


@pytest.fixture(scope="module")
def fsdp_reference(tmp_path_factory):
    """An uninterrupted 2-process FSDP2 run of the tiny preset (every objective), checkpoints every 2 steps."""
    tmp = tmp_path_factory.mktemp("fsdp_reference")
    run = tmp / "run"
    result = _run(_launch(run, 6, 2), _env(tmp))
    return run, result


@pytest.mark.slow
def test_fsdp2_run_is_sharded_and_final_loads_through_remote_code(fsdp_reference, tmp_path):
    run, result = fsdp_reference
    assert [r["step"] for r in read_history(run / "losses.jsonl")] == list(range(1, 7))
    checkpoint = run / "checkpoint-4"
    shards = sorted(p.name for p in (checkpoint / "sharded").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # every rank wrote its shard
    assert not (checkpoint / "model.safetensors").exists()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["world_size"] == 2
    config = json.loads((run / "final" / "config.json").read_text())
    assert config["architectures"] == ["OptTriForPreTraining"]  # not the FSDP wrapper's class
    weights = load_file(str(run / "final" / "model.safetensors"))
    assert weights["opt_tri.logit_scale"].shape == ()  # FSDP2 trained it as a 1-element tensor
    from modeling_opt_tri import OptTriForPreTraining

    expected = OptTriForPreTraining.from_pretrained(run / "final").state_dict()
    common = [key for key in weights if key in expected]
    assert len(common) > len(weights) // 2
    assert all(torch.equal(weights[key], expected[key]) for key in common)  # the trained weights, not random ones
    torch.save(expected, tmp_path / "expected.pt")
    body = f"""
    import torch
    from transformers import AutoModelForPreTraining
    model = AutoModelForPreTraining.from_pretrained({str(run / 'final')!r}, trust_remote_code=True)
    expected = torch.load({str(tmp_path / 'expected.pt')!r})
    state = model.state_dict()
    torch.save({{"same": all(torch.equal(state[k], v) for k, v in expected.items()), "cls": type(model).__name__}},
               {str(tmp_path / 'outputs.pt')!r})
    """
    outputs = run_without_our_package(body, tmp_path)
    assert outputs == {"same": True, "cls": "OptTriForPreTraining"}


@pytest.mark.slow
def test_fsdp2_sigkill_at_a_step_and_during_a_checkpoint_then_resume_reproduces_losses(fsdp_reference, tmp_path):
    reference, _ = fsdp_reference
    expected = _losses(reference)
    env = _env(tmp_path)
    run = tmp_path / "killed"
    # 1. SIGKILL of the whole job (launcher and ranks) at a random step
    target = int(np.random.default_rng().integers(2, 5))
    process = subprocess.Popen(_launch(run, 6, 2), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and _last_step(run) < target:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    _kill_job(process)
    _assert_only_complete_checkpoints(run)
    # 2. resume, and SIGKILL the whole job while it writes its next checkpoint (shards written, not yet renamed)
    wrapper = tmp_path / "kill_during_checkpoint.py"
    wrapper.write_text(_KILL_DURING_CHECKPOINT)
    before = {p.name for p in list_checkpoints(run)}
    killed = subprocess.run(_launch(run, 6, 2, resume=True, script=wrapper), env=dict(env, KILL_AT_CHECKPOINT="1"),
                            capture_output=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    partial = [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert len(partial) == 1 and (partial[0] / "sharded" / ".metadata").exists()  # a whole write, never renamed
    assert {p.name for p in list_checkpoints(run)} == before  # ... and not visible
    _assert_only_complete_checkpoints(run)
    # 3. resume to the end: the per-step losses are the uninterrupted run's
    _run(_launch(run, 6, 2, resume=True), env)
    assert not partial[0].exists()
    resumed = _losses(run)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(expected, resumed, strict=True):
        assert a == pytest.approx(b, abs=1e-5), f"step {a['step']}: {a} != {b}"
    final_a = load_file(str(reference / "final" / "model.safetensors"))
    final_b = load_file(str(run / "final" / "model.safetensors"))
    for key in final_a:
        torch.testing.assert_close(final_a[key], final_b[key], rtol=0, atol=1e-6)


def _last_step(run: Path) -> int:
    history = run / "losses.jsonl"
    lines = [line for line in history.read_text().splitlines() if line.strip()] if history.exists() else []
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except json.JSONDecodeError:  # a line being written
        return 0


def _assert_only_complete_checkpoints(run: Path) -> None:
    for checkpoint in list_checkpoints(run):
        names = {p.name for p in (checkpoint / "sharded").iterdir()}
        assert names == {".metadata", "__0_0.distcp", "__1_0.distcp"}, checkpoint
        assert json.loads((checkpoint / "trainer_state.json").read_text())["world_size"] == 2
        assert (checkpoint / "rng_state_1.safetensors").exists() and (checkpoint / "scheduler.pt").exists()


@pytest.mark.slow
def test_fsdp2_two_processes_equal_one_process_on_the_same_global_batch(tmp_path):
    """The contrastive objective is deterministic (no masking) and gathered across ranks: 2 FSDP2 ranks of 4 rows each
    see exactly the 8 rows that one process sees with --batch_size 8, and their averaged gradients are its gradients."""
    from modeling_opt_tri.training.pretrain import PretrainArguments, run_pretraining

    preset = tmp_path / "preset"
    shutil.copytree(REPO_ROOT / "configuration" / "tiny", preset)
    config = json.loads((preset / "config.json").read_text())
    for sub in config.values():  # dropout draws differ between ranks and one process
        if isinstance(sub, dict):
            sub.update({k: 0.0 for k in sub if k.endswith("dropout_prob")})
    (preset / "config.json").write_text(json.dumps(config))
    common = ("--objectives", "contrastive=1", "--group_by_length", "false")
    _run(_launch(tmp_path / "two", 3, 0, preset=str(preset), extra=common), _env(tmp_path))
    run_pretraining(PretrainArguments(
        preset=str(preset), output_dir=str(tmp_path / "one"), train_rows=48, batch_size=8, max_steps=3, save_steps=0,
        learning_rate=1e-3, warmup_steps=2, objectives="contrastive=1", group_by_length=False, progress=False,
        tensorboard=False, evaluate=False,
    ))
    two, one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(two, one, strict=True):
        assert a == pytest.approx(b, abs=1e-4), f"step {a['step']}: 2 processes {a} != 1 process {b}"
    assert two[0]["loss"] != two[2]["loss"]  # the weights moved between the compared steps


_REPORT_FSDP_SETUP = """
import sys, runpy
import accelerate
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule
original = accelerate.Accelerator.prepare
def prepare(self, *args, **kwargs):
    result = original(self, *args, **kwargs)
    units = [m for m in result[0].modules() if isinstance(m, FSDPModule)]
    groups = [m._get_fsdp_state()._fsdp_param_group for m in units]
    groups = [g for g in groups if g is not None]
    inner = [getattr(m, "_checkpoint_wrapped_module", None) for m in units]
    print("FSDP-SETUP", sorted({type(i or m).__name__.removeprefix("FSDP") for i, m in zip(inner, units)}),
          "checkpointed", sorted({type(i).__name__ for i in inner if i is not None}),
          "param_dtype", {str(g.mp_policy.param_dtype) for g in groups},
          "offload", all(isinstance(g.offload_policy, CPUOffloadPolicy) for g in groups), flush=True)
    return result
accelerate.Accelerator.prepare = prepare
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_a_rank_killed_ends_the_job_with_an_error_naming_it(tmp_path):
    """Also: the run's FSDP2 setup follows the flags (bf16 policy, FSDP activation checkpointing, CPU offload)."""
    bound = 90  # seconds from the kill to the launcher's exit (torchrun notices a dead worker within seconds)
    run = tmp_path / "run"
    wrapper = tmp_path / "report_fsdp_setup.py"
    wrapper.write_text(_REPORT_FSDP_SETUP)
    command = _launch(run, 10_000, 0, script=wrapper, extra=("--mixed_precision", "bf16", "--gradient_checkpointing", "true"))
    command[command.index("--main_process_port"):command.index("--main_process_port")] = ["--fsdp_offload_params", "true"]
    process = subprocess.Popen(command, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and _last_step(run) < 1:
            time.sleep(0.1)
        victim = _worker_pid(process.pid, rank=1)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        output, _ = process.communicate(timeout=bound)
        elapsed = time.time() - killed_at
    finally:
        if process.poll() is None:
            _kill_job(process)
    print(f"the job ended {elapsed:.1f} s after rank 1 was killed, exit code {process.returncode}")
    assert process.returncode != 0
    assert elapsed < bound
    assert "rank      : 1" in output and f"pid: {victim}" in output and "SIGKILL" in output, output[-3000:]
    setup = next(line for line in output.splitlines() if line.startswith("FSDP-SETUP"))
    for layer in ("BertLayer", "ViTLayer", "OptTriLayer", "OptTriDecoderLayer", "ViTEmbeddings", "OptTriForPreTraining"):
        assert f"'{layer}'" in setup, setup
    assert "checkpointed ['BertLayer', 'OptTriDecoderLayer', 'OptTriLayer', 'ViTEmbeddings', 'ViTLayer']" in setup, setup
    assert "param_dtype {'torch.bfloat16'}" in setup and "offload True" in setup, setup


def _children(launcher: int) -> list[int]:
    """The launcher's worker processes (torchrun starts each in a session of its own: killing the launcher's process
    group would leave them running)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == launcher:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _kill_job(process: subprocess.Popen) -> None:
    """SIGKILL the launcher and its workers at once (as a crashed machine), and reap them."""
    workers = _children(process.pid)
    assert len(workers) == 2, workers
    for pid in [process.pid, *workers]:
        os.kill(pid, signal.SIGKILL)
    process.wait(timeout=60)
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in workers):
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def _worker_pid(launcher: int, rank: int) -> int:
    """The pid of the launcher's worker with RANK=`rank`."""
    for pid in _children(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no process with RANK={rank} under the launcher {launcher}")


def test_memory_estimate_per_process_fsdp2_below_ddp(capsys):
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("memory_estimate_fsdp", REPO_ROOT / "benchmarks" / "memory_estimate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--geometry", "tiny", "--batches", "4,8", "--dtype", "fp32", "--targets", "8", "--world", "4"])
    out = capsys.readouterr().out
    ddp, fsdp = (float(x) for x in re.search(r"DDP ([0-9.]+) GiB, FSDP2 ([0-9.]+) GiB", out).groups())
    assert 0 < fsdp < ddp, out
    assert re.search(r"FSDP2 units: \d+ layers", out)
    with pytest.raises(SystemExit):
        bench.main(["--world", "0"])


@pytest.mark.slow
def test_sharded_checkpoint_resumes_on_one_process(fsdp_reference, tmp_path):
    """DCP reshards: the 2-process FSDP2 checkpoint restores model and optimizer on one unsharded process, and the
    data position (4 batches on each of 2 ranks) becomes 8 batches on one."""
    from modeling_opt_tri import OptTriConfig, OptTriForPreTraining
    from modeling_opt_tri.training.checkpointing import load_checkpoint
    from modeling_opt_tri.training.pretrain import PretrainArguments, _optimizer, run_pretraining
    from transformers import get_cosine_schedule_with_warmup

    reference, _ = fsdp_reference
    run = tmp_path / "one"
    run.mkdir()
    shutil.copytree(reference / "checkpoint-4", run / "checkpoint-4")
    args = PretrainArguments(preset=str(REPO_ROOT / "configuration" / "tiny"), output_dir=str(run), train_rows=48,
                             batch_size=4, max_steps=6, save_steps=0, learning_rate=1e-3, warmup_steps=2,
                             progress=False, tensorboard=False, evaluate=False, resume_from_checkpoint="latest")
    model = OptTriForPreTraining(OptTriConfig.from_pretrained(args.preset))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = _optimizer(model, args)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
    state = load_checkpoint(run / "checkpoint-4", model, optimizer, scheduler, rank=0, world_size=1)
    assert state["global_step"] == 4 and state["batch_index"] == 8
    assert model.opt_tri.logit_scale.shape == ()  # saved as a 1-element FSDP2 shard, loaded into its own shape
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2
    moments = [s["exp_avg"] for s in optimizer.state.values()]
    assert moments and all(m.abs().sum() > 0 for m in moments)  # only parameters that were updated have a state
    assert scheduler.last_epoch == 4
    summary = run_pretraining(args)
    assert summary["steps"] == 6
    assert [r["step"] for r in read_history(run / "losses.jsonl")] == [5, 6]


def test_fsdp_wrap_classes_come_from_the_built_towers():
    from transformers import WhisperConfig, WhisperModel

    from modeling_opt_tri import OptTriConfig, OptTriForPreTraining
    from modeling_opt_tri.training.pretrain import fsdp_wrap_classes

    model = OptTriForPreTraining(OptTriConfig.from_pretrained(REPO_ROOT / "configuration" / "tiny"))
    assert "BertEmbeddings" in model._no_split_modules
    # BertEmbeddings holds the input embeddings, which accelerate shards as a unit of their own
    assert fsdp_wrap_classes(model) == ["BertLayer", "OptTriDecoderLayer", "OptTriLayer", "ViTEmbeddings", "ViTLayer"]
    whisper = WhisperModel(WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                         decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                                         vocab_size=60, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                                         num_mel_bins=8, max_source_positions=16, max_target_positions=16))
    assert {"WhisperEncoderLayer", "WhisperDecoderLayer"} <= set(fsdp_wrap_classes(whisper))
