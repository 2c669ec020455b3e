"""Atomic, resumable training checkpoints whose tensors never go through pickle.

A checkpoint is a folder `checkpoint-<step>/` holding:

- `model.safetensors`: the model weights (safetensors);
- `optimizer.pt` / `scheduler.pt`: optimizer and scheduler state dicts (tensors and plain Python values only, loaded
  with `torch.load(weights_only=True)`);
- `rng_state_<rank>.json` + `rng_state_<rank>.safetensors`: Python, NumPy and torch RNG states of every process;
- `trainer_state.json`: step, data position, loss history and counters;
- `scaler.pt` (fp16 runs only): the `GradScaler` state (loss scale and growth tracker), so that a resumed fp16 run
  neither restarts the scale at 65536 (and skips steps again) nor differs from an uninterrupted one.

Under FSDP (parameters are sharded `DTensor`s) `model.safetensors` and `optimizer.pt` are replaced by `sharded/`: a
`torch.distributed.checkpoint` folder in which every rank writes its own shards of the model and optimizer state
(tensor data is loaded with `torch.load(weights_only=True)`; DCP's own `.metadata` index is a pickle written by torch).
Such a checkpoint resumes on the same number of processes exactly, and on a different number (DCP reshards, the data
position is mapped onto the new ranks) approximately: the ranks' RNG streams and the data order per rank then differ.

Everything is first written into a temporary folder next to the final one, fsynced, and then renamed in one
`os.rename`; with several processes every rank writes into that folder, all wait at a barrier, and rank 0 alone renames
it. A run killed at any moment therefore leaves either the complete checkpoint or none (plus, possibly, a
`*.tmp` folder that `latest_checkpoint` ignores and the next save removes). A write that fails on rank 0 (e.g. a full
disk: `OSError(ENOSPC)`) removes its temporary folder and raises an `OSError` that names the checkpoint and the last
intact one.

Resuming checks what it reads: `find_resumable_checkpoint` skips (with a warning) checkpoints whose files are missing,
truncated or unparsable and falls back to the newest complete one; `load_checkpoint` names the file in every error
(`CorruptCheckpointError`); `repair_history` drops a torn last line of `losses.jsonl` (a run killed mid-write).
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers.utils import logging

logger = logging.get_logger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
SHARDED_FOLDER = "sharded"
"""Sub-folder of an FSDP checkpoint with the `torch.distributed.checkpoint` shards of the model and optimizer."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file is missing, truncated or unparsable; the message names the file."""


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
        if file.is_dir():
            _fsync_tree(file)
        elif file.is_file():
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
    Write `checkpoint-<step>` atomically. With several processes every rank calls it (each writes its RNG state, and
    under FSDP its shards of the model and optimizer); `barrier` (e.g. `accelerator.wait_for_everyone`) synchronises
    them, and rank 0 writes the rest and renames.
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
    sharded = is_sharded(model)
    if sharded:  # a collective: every rank writes its shards
        save_sharded_state(tmp / SHARDED_FOLDER, model, optimizer)
    if barrier is not None:
        barrier()
    if rank == 0:
        try:
            state = dict(trainer_state, global_step=step, world_size=world_size)
            _write_rank0_files(tmp, None if sharded else model, optimizer, scheduler, scaler, state)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(output_dir)
        except OSError as error:
            shutil.rmtree(tmp, ignore_errors=True)
            intact = latest_checkpoint(output_dir)
            kept = f"the last intact checkpoint is {intact}" if intact is not None else "no earlier checkpoint exists"
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise OSError(error.errno or errno.EIO, f"Could not write checkpoint {final} ({reason}: {error}); the partial "
                          f"write was removed and {kept}") from error
        if keep_last:
            for old in list_checkpoints(output_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    if barrier is not None:
        barrier()
    return final


def _write_rank0_files(tmp: Path, model, optimizer, scheduler, scaler, state: dict[str, Any]) -> None:
    """Rank 0's files; `model=None`: the weights and optimizer state are in `sharded/` (written by every rank)."""
    if model is not None:
        save_file(_state_dict_for_safetensors(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    _fsync_tree(tmp)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model`'s parameters are sharded `DTensor`s (FSDP2), so that no rank holds the full weights."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without torch.distributed
        return False
    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


def save_sharded_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write the model and optimizer state into `folder` with `torch.distributed.checkpoint`: a collective in which
    every rank writes its own shards (fsynced) and rank 0 the index."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state},
             storage_writer=dcp.FileSystemWriter(str(folder), sync_files=True))


def load_sharded_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read `save_sharded_state`'s folder into `model` and `optimizer`, sharded or not and on any number of processes
    (DCP reads the slices each rank needs)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)  # initialises the optimizer state to load into
    reader = dcp.FileSystemReader(str(folder))
    state = {"model": model_state, "optimizer": optimizer_state}
    saved = {key: getattr(value, "size", None) for key, value in reader.read_metadata().state_dict_metadata.items()}
    missing = [key for key in model_state if f"model.{key}" not in saved]
    if missing:
        raise ValueError(f"{folder}: the checkpoint does not match the model: no weights for {missing[:5]} "
                         f"({len(missing)} missing)")
    as_saved = _like_saved(state, saved, "")
    # partial: the template has optimizer states for every parameter, the checkpoint only for those that were updated
    dcp.load(as_saved, storage_reader=reader, planner=DefaultLoadPlanner(allow_partial_load=True))
    state = _like_template(as_saved, state)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    prefixes = {key.rsplit(".", 1)[0] for key in saved if key.startswith("optimizer.state.")}
    for name, parameter in model.named_parameters():  # drop the template's states of never-updated parameters
        if f"optimizer.state.{name.replace('_checkpoint_wrapped_module.', '')}" not in prefixes:
            optimizer.state.pop(parameter, None)


def _like_saved(template: Any, saved: dict[str, Any], path: str) -> Any:
    """`template` with each 0-d tensor that was saved with 1 element (FSDP2 shards 0-d parameters as 1-element ones,
    see `pretrain._configure_fsdp`) replaced by a 1-element view of it, so that DCP reads into it in place."""
    if isinstance(template, dict):
        return {key: _like_saved(value, saved, f"{path}{key}.") for key, value in template.items()}
    if isinstance(template, torch.Tensor) and template.ndim == 0 and tuple(saved.get(path[:-1]) or ()) == (1,):
        return template.reshape(1)
    return template


def _like_template(loaded: Any, template: Any) -> Any:
    if isinstance(template, dict):
        return {key: _like_template(loaded[key], value) for key, value in template.items()}
    if isinstance(template, torch.Tensor) and isinstance(loaded, torch.Tensor):
        return loaded.reshape(template.shape)
    return loaded


def _remap_data_position(state: dict[str, Any], saved_world: int, world_size: int, path: Path) -> dict[str, Any]:
    """The data position of a checkpoint written by `saved_world` processes, for `world_size` processes: rank `r`
    reads batches `r, r + world, ...` of each epoch, so `i` batches per rank are `i * world` batches in all."""
    consumed = state["batch_index"] * saved_world
    if consumed % world_size:
        raise ValueError(
            f"{path} was written by {saved_world} processes after {consumed} batches of epoch {state['epoch']}, which "
            f"{world_size} processes cannot split evenly; resume with {saved_world} processes, or with a number that "
            f"divides {consumed}"
        )
    return dict(state, batch_index=consumed // world_size)


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


def checkpoint_problems(path: str | os.PathLike, rank: int = 0) -> list[str]:
    """
    What makes `path` unusable for resuming, one line per file (empty when complete). Cheap structural checks: every
    required file (the RNG states of all the ranks that wrote it included) exists and is non-empty, `trainer_state.json` / `rng_state_<rank>.json` parse as JSON objects,
    the safetensors headers cover their files (a truncated file fails), and the `torch.save` files are intact zip
    archives (their central directory sits at the end, so a truncated file fails).
    """
    path = Path(path)
    if not path.is_dir():
        return [f"{path}: no such checkpoint folder"]
    problems = []
    names = _required_files(rank, sharded=(path / SHARDED_FOLDER / ".metadata").is_file())
    try:  # the RNG states of the ranks that wrote it, whatever this rank is: all ranks agree on the checkpoint they
        # fall back to, also when a sharded checkpoint resumes on more processes than wrote it (`load_checkpoint`)
        world_size = int(json.loads((path / "trainer_state.json").read_text()).get("world_size", 1))
        names = [name for name in names if not name.startswith("rng_state_")]
        names += [f"rng_state_{r}.{ext}" for r in range(world_size) for ext in ("json", "safetensors")]
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # reported below, as a problem of trainer_state.json
    for name in names:
        file = path / name
        if not file.is_file():
            problems.append(f"{file}: missing")
        elif file.stat().st_size == 0:
            problems.append(f"{file}: empty")
        else:
            try:
                _check_file(file)
            except Exception as error:  # noqa: BLE001 -- any failure to parse makes the file unusable
                problems.append(f"{file}: {type(error).__name__}: {error}")
    return problems


def _required_files(rank: int, sharded: bool = False) -> list[str]:
    # without the RNG state there is no exact resume
    weights = [f"{SHARDED_FOLDER}/.metadata"] if sharded else ["model.safetensors", "optimizer.pt"]
    return ["trainer_state.json", *weights, "scheduler.pt", f"rng_state_{rank}.json", f"rng_state_{rank}.safetensors"]


def _check_file(file: Path) -> None:
    if file.suffix == ".json":
        value = json.loads(file.read_text())
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {type(value).__name__}")
        if file.name == "trainer_state.json" and not isinstance(value.get("global_step"), int):
            raise ValueError("no integer 'global_step'")
    elif file.suffix == ".safetensors":
        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    elif file.suffix == ".pt":
        with zipfile.ZipFile(file) as archive:
            archive.namelist()
    # DCP's `.metadata` (a pickle written by torch) is only checked to exist and be non-empty


def find_resumable_checkpoint(output_dir: str | os.PathLike, rank: int = 0) -> Path | None:
    """
    The newest checkpoint of `output_dir` that `checkpoint_problems` finds complete (`--resume_from_checkpoint
    latest`). Each newer, broken one is skipped with a warning that names its bad files. `None` when `output_dir` holds
    no checkpoint at all; a `CorruptCheckpointError` listing the problems when it holds only broken ones.
    """
    candidates = list_checkpoints(output_dir)
    skipped = []
    for path in reversed(candidates):
        problems = checkpoint_problems(path, rank)
        if not problems:
            if skipped:
                logger.warning(f"Resuming from {path}, the newest complete checkpoint (skipped: {', '.join(skipped)})")
            return path
        logger.warning(f"{path} is incomplete or corrupt, falling back to an older checkpoint: {'; '.join(problems)}")
        skipped.append(path.name)
    if candidates:
        raise CorruptCheckpointError(
            f"--resume_from_checkpoint latest: every checkpoint in {output_dir} is incomplete or corrupt "
            f"({', '.join(skipped)}; the warnings above name the files). Resume from a complete copy or start afresh."
        )
    return None


def _read(file: Path, reader):
    """`reader(file)`, with any failure re-raised as a `CorruptCheckpointError` that names the file."""
    try:
        return reader(file)
    except Exception as error:  # noqa: BLE001 -- torch, safetensors and json raise many types; all mean a bad file
        raise CorruptCheckpointError(f"{file}: cannot be read ({type(error).__name__}: {error})") from error


def _load_torch(file: Path):
    return torch.load(file, weights_only=True, map_location="cpu")


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
    state; return the trainer state. A sharded (FSDP) checkpoint also resumes on a different number of processes (see
    the module docstring); a full one only on the same number. Every error names the file that could not be used."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(path)!r} does not exist")
    sharded = (path / SHARDED_FOLDER / ".metadata").is_file()
    weights = [f"{SHARDED_FOLDER}/.metadata"] if sharded else ["model.safetensors", "optimizer.pt"]
    required = weights + ["scheduler.pt", "trainer_state.json"]
    missing = [name for name in required if not (path / name).exists()]
    if missing:
        raise FileNotFoundError(f"{path} is not a complete OPT-Tri checkpoint: missing {missing}")
    state = _read(path / "trainer_state.json", lambda f: json.loads(f.read_text()))
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        raise CorruptCheckpointError(f"{path / 'trainer_state.json'}: not a trainer state (no integer 'global_step')")
    saved_world = state.get("world_size", 1)
    if saved_world != world_size:
        if not sharded:
            raise ValueError(
                f"{path} was written by {saved_world} processes; resuming with {world_size} would change the "
                "data order and RNG streams. Resume with the same number of processes."
            )
        state = _remap_data_position(state, saved_world, world_size, path)
        logger.warning(f"{path} was written by {saved_world} processes and resumes on {world_size}: the weights, "
                       "optimizer and schedule are restored and the data position is kept, but each rank's batches "
                       "and RNG streams differ from an uninterrupted run's")
    rng_files = [f"rng_state_{rank}.json", f"rng_state_{rank}.safetensors"]  # without them, no exact resume
    missing_rng = [name for name in rng_files if not (path / name).exists()]
    if saved_world == world_size and missing_rng:
        raise FileNotFoundError(f"{path} is not a complete OPT-Tri checkpoint: missing {missing_rng}")
    if sharded:  # into a sharded or an unsharded model
        _load_sharded(path / SHARDED_FOLDER, model, optimizer)
    else:
        if is_sharded(model):
            raise ValueError(f"{path} was written without FSDP (model.safetensors): resume it without FSDP, or start "
                             f"an FSDP run from its weights with --model_name_or_path")
        _load_full_state(path, model, optimizer)
    _load_into(path / "scheduler.pt", scheduler)
    if scaler is not None and (path / "scaler.pt").exists():  # absent in checkpoints of fp32/bf16 runs
        _load_into(path / "scaler.pt", scaler)
    if all((path / name).exists() for name in rng_files):
        meta = _read(path / rng_files[0], lambda f: json.loads(f.read_text()))
        tensors = _read(path / rng_files[1], lambda f: load_file(str(f)))
        _read(path / rng_files[0], lambda f: set_rng_state(meta, tensors))
    return state


def _load_into(file: Path, target) -> None:
    """`target.load_state_dict(torch.load(file))` (optimizer, scheduler, scaler), errors naming the file."""
    saved = _read(file, _load_torch)
    _read(file, lambda f: target.load_state_dict(saved))


def _load_sharded(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    try:
        load_sharded_state(folder, model, optimizer)
    except ValueError:  # its own message (the weights do not match the model) names the folder
        raise
    except Exception as error:  # noqa: BLE001 -- DCP raises many types for a damaged folder
        raise CorruptCheckpointError(f"{folder}: cannot be read ({type(error).__name__}: {error})") from error


def _load_full_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    weights = _read(path / "model.safetensors", lambda f: load_file(str(f)))
    missing_keys, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing_keys = [k for k in missing_keys if k not in tied]
    if missing_keys or unexpected:
        raise ValueError(f"{path}: checkpoint weights do not match the model (missing {missing_keys}, unexpected {unexpected})")
    _load_into(path / "optimizer.pt", optimizer)


def repair_history(path: str | os.PathLike, keep_until_step: int | None = None) -> list[dict[str, Any]]:
    """
    Read the per-step log `losses.jsonl`, drop a torn last line (a run killed, or a disk that filled, mid-write) with a
    warning, keep the records up to `keep_until_step` (those past the checkpoint a run resumes from are dropped), and
    rewrite the file atomically when anything was dropped. A bad line that is not the last one is an error naming the
    file and the line: that is damage, not an interrupted write.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records, dropped = [], False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with an integer 'step'")
        except ValueError as error:
            if any(rest.strip() for rest in lines[number:]):
                raise CorruptCheckpointError(f"{path}, line {number}: not a JSON log record ({error}): {line[:80]!r}") from error
            logger.warning(f"{path}: dropped the torn last line {number} ({line[:80]!r}), written when a run was interrupted")
            dropped = True
            continue
        if keep_until_step is not None and record["step"] > keep_until_step:
            dropped = True
            continue
        records.append(record)
    if dropped:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(record) + "\n" for record in records))
        os.replace(tmp, path)
    return records
