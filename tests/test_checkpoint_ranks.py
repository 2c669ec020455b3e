"""Every rank judges a checkpoint alike: resuming a sharded (FSDP) checkpoint on more processes than wrote it."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from modeling_opt_tri.training.checkpointing import SHARDED_FOLDER, checkpoint_problems, find_resumable_checkpoint


def _sharded_checkpoint(folder, step: int, world_size: int):
    path = folder / f"checkpoint-{step}"
    (path / SHARDED_FOLDER).mkdir(parents=True)
    (path / SHARDED_FOLDER / ".metadata").write_bytes(b"dcp index")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "world_size": world_size}))
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    for rank in range(world_size):
        (path / f"rng_state_{rank}.json").write_text(json.dumps({"python": None}))
        save_file({"torch": torch.zeros(2)}, str(path / f"rng_state_{rank}.safetensors"))
    return path


def test_sharded_checkpoint_is_complete_for_ranks_that_did_not_write_it(tmp_path):
    # written by 2 processes, resumed by 4 (`load_checkpoint` reshards): ranks 2 and 3 have no RNG file of their own
    older = _sharded_checkpoint(tmp_path, 2, world_size=2)
    newer = _sharded_checkpoint(tmp_path, 4, world_size=2)
    for rank in range(4):
        assert checkpoint_problems(newer, rank) == [], rank
        assert find_resumable_checkpoint(tmp_path, rank) == newer, rank  # every rank picks the same checkpoint
    (older / "rng_state_1.json").unlink()  # a missing file of a rank that wrote it stays a problem for every rank
    for rank in range(4):
        assert checkpoint_problems(older, rank) == [f"{older / 'rng_state_1.json'}: missing"], rank
