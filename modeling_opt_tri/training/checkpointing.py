"""Atomic, resumable training checkpoints that never go through pickle.

A checkpoint is a folder `checkpoint-<step>/` holding:

- `model.safetensors`: the model weights (safetensors);
- `optimizer.pt` / `scheduler.pt`: optimizer and scheduler state dicts (tensors and plain Python values only, loaded
  with `torch.load(weights_only=True)`);
- `rng_state_<rank>.json` + `rng_state_<rank>.safetensors`: Python, NumPy and torch RNG states of every process;
- `trainer_state.json`: step, data position, loss history and counters;
- `scaler.pt` (fp16 runs only): the `GradScaler` state (loss scale and growth tracker), so that a resumed fp16 run
  neither restarts the scale at 65536 (and skips steps again) nor differs from an uninterrupted one.

Everything is first written into a temporary folder next to the final one, fsynced, and then renamed in one
`os.rename`. A run killed at any moment therefore leaves either the complete checkpoint or none (plus, possibly, a
`*.tmp` folder that `latest_checkpoint` ignores and the next save removes).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in path.iterdir():
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(path)


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The current RNG states as (JSON-able dict, tensors)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{index}"] = state
    return meta, tensors


def set_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = meta["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), np_state[2], np_state[3], np_state[4]))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _state_dict_for_safetensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Model weights with shared tensors de-duplicated (safetensors refuses aliases)."""
    seen: dict[int, str] = {}
    state = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.numel(), tensor.dtype) if tensor.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen[key] = name
        state[name] = tensor.detach().contiguous().cpu()
    return state


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    rank: int = 0,
    world_size: int = 1,
    barrier=None,
    keep_last: int | None = 2,
    scaler: Any = None,
) -> Path:
    """
    Write `checkpoint-<step>` atomically. With several processes every rank calls it (each writes its RNG state);
    `barrier` (e.g. `accelerator.wait_for_everyone`) synchronises them, and rank 0 writes the rest and renames.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f"checkpoint-{step}.tmp"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    if barrier is not None:
        barrier()
    meta, tensors = rng_state()
    (tmp / f"rng_state_{rank}.json").write_text(json.dumps(meta))
    save_file(tensors, str(tmp / f"rng_state_{rank}.safetensors"))
    if barrier is not None:
        barrier()
    if rank == 0:
        save_file(_state_dict_for_safetensors(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        state = dict(trainer_state, global_step=step, world_size=world_size)
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(output_dir)
        if keep_last:
            for old in list_checkpoints(output_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    if barrier is not None:
        barrier()
    return final


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first (temporary folders are ignored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir() and (path / "trainer_state.json").exists():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int = 0,
    world_size: int = 1,
    scaler: Any = None,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler, this rank's RNG state and (when given and saved) the fp16 `GradScaler`
    state; return the trainer state."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(path)!r} does not exist")
    required = ["model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json",
                f"rng_state_{rank}.json", f"rng_state_{rank}.safetensors"]  # without the RNG state, no exact resume
    missing = [name for name in required if not (path / name).exists()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete OPT-Tri checkpoint: missing {missing}")
    state = json.loads((path / "trainer_state.json").read_text())
    if state.get("world_size", 1) != world_size:
        raise ValueError(
            f"{path} was written by {state.get('world_size')} processes; resuming with {world_size} would change the "
            "data order and RNG streams. Resume with the same number of processes."
        )
    weights = load_file(str(path / "model.safetensors"))
    missing_keys, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing_keys = [k for k in missing_keys if k not in tied]
    if missing_keys or unexpected:
        raise ValueError(f"{path}: checkpoint weights do not match the model (missing {missing_keys}, unexpected {unexpected})")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if scaler is not None and (path / "scaler.pt").exists():  # absent in checkpoints of fp32/bf16 runs
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    set_rng_state(json.loads((path / f"rng_state_{rank}.json").read_text()),
                  load_file(str(path / f"rng_state_{rank}.safetensors")))
    return state
