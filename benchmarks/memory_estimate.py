"""Training-step memory without a GPU: peak live-tensor memory of one forward + backward, measured on CPU at two
small batch sizes and extrapolated linearly to the GPU batch sizes.

    python benchmarks/memory_estimate.py --geometry base --batches 16,32 --gradient-checkpointing
    python benchmarks/memory_estimate.py --geometry base --batches 8,16 --model flava     # the FLAVA reference
    python benchmarks/memory_estimate.py --geometry base --batches 4,8 --targets 32 --world 8   # DDP vs FSDP2

Method: `torch.distributed._tools.mem_tracker.MemTracker` records every live tensor (parameters, gradients,
activations, temporaries) during one forward + backward under CPU bf16 autocast (`--dtype fp32` to disable), with
OPT-Tri running FLAVA's objectives (mlm, mrfr, itm, contrastive), exactly as `benchmarks/pretrain_step.py` builds
both models and batches. Memory that grows with the batch (activations) is fitted as `fixed + per_sample * batch`;
AdamW's two fp32 states (8 bytes per parameter that received a gradient) are added on top.

Per process under data parallelism (`--world N`): DDP keeps everything above on every process, plus its gradient
buckets (a second fp32 copy of the gradients). FSDP2 (`configuration/accelerate/fsdp2_*.yaml`, the wrap units of
`training.pretrain.fsdp_wrap_classes`) keeps 1/N of the fp32 parameters, gradients and AdamW states, plus the
unsharded working set: the root unit (embeddings, heads and projections outside the wrapped layers), which stays
gathered for the whole step, and two layer units (the one running and the one prefetched), parameters and
gradients. Activations are the same under both (per-process batch).

This is an estimate, not a GPU measurement: CUDA adds its caching allocator's fragmentation, library workspaces and
the CUDA context (typically a few GB), and its attention kernels differ from the CPU ones (both fused SDPA kernels
keep no S x S matrix; FLAVA's eager attention keeps one on both devices). Check it on a GPU with
`benchmarks/pretrain_step.py --device cuda`, which reports `torch.cuda.max_memory_allocated`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretrain_step as bench  # noqa: E402


def measure(model_name: str, geometry: str, batch_size: int, text_length: int, dtype: str, checkpointing: bool):
    """(peak GiB of one forward + backward, parameters that received a gradient)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    args = bench.parse_args(
        ["--geometry", geometry, "--batch-size", str(batch_size), "--text-length", str(text_length), "--dtype", dtype]
    )
    config = bench.opt_tri_config(geometry)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if model_name == "opt-tri":
        model = bench.OptTriForPreTraining(config).train()
        batch = bench.opt_tri_batch(config, args, False, "cpu", generator)
        tasks = list(bench.FLAVA_TASKS)

        def loss_fn():
            return model(**batch, tasks=tasks).loss
    else:
        model = bench.FlavaForPreTraining(bench.matched_flava_config(config, text_length)).train()
        batch = bench.flava_batch(config, args, "cpu", generator)

        def loss_fn():
            return model(**batch).loss
    if checkpointing:
        model.gradient_checkpointing_enable()
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = loss_fn()
        loss.backward()
    peak = sum(snapshot.get("Total", 0) for snapshot in tracker.get_tracker_snapshot("peak").values())
    with_grad = sum(p.numel() for p in model.parameters() if p.grad is not None)
    return peak / 2**30, with_grad, fsdp_units(model)


def fsdp_units(model: torch.nn.Module) -> dict[str, int]:
    """Parameter counts of FSDP2's units for `model`: all, the root (outside every wrapped layer), the largest layer."""
    from modeling_opt_tri.training.pretrain import fsdp_wrap_classes

    classes = set(fsdp_wrap_classes(model)) if hasattr(model, "config") else set()
    units, inside = [], set()
    for module in model.modules():
        if type(module).__name__ in classes and not any(id(p) in inside for p in module.parameters()):
            units.append(sum(p.numel() for p in module.parameters()))
            inside.update(id(p) for p in module.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "root": total - sum(units), "largest": max(units, default=0), "units": len(units)}


def per_process(fixed: float, per_sample: float, batch: int, with_grad: int, units: dict[str, int], world: int):
    """(DDP GiB, FSDP2 GiB) per process at a per-process batch of `batch` on `world` processes (fp32 master weights)."""
    gib = 2**30
    activations_and_full_state = fixed + per_sample * batch  # measured: parameters + gradients + activations
    adam = 8 * with_grad / gib
    ddp = activations_and_full_state + adam + 4 * with_grad / gib  # + DDP's gradient buckets
    full_params_grads = (4 * units["total"] + 4 * with_grad) / gib
    sharded = (4 * units["total"] + 12 * with_grad) / gib / world
    gathered = 8 * (units["root"] + 2 * units["largest"]) / gib  # parameters + gradients of the unsharded units
    fsdp = activations_and_full_state - full_params_grads + sharded + gathered
    return ddp, fsdp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["opt-tri", "flava"], default="opt-tri")
    parser.add_argument("--geometry", choices=["tiny", "base", "large"], default="base")
    parser.add_argument("--batches", default="16,32", help="two small batch sizes to measure (comma-separated)")
    parser.add_argument("--targets", default="128,256", help="batch sizes to extrapolate to")
    parser.add_argument("--text-length", type=int, default=64)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: unchanged)")
    parser.add_argument("--world", type=int, default=None,
                        help="also print the memory per process under DDP and FSDP2 on this many processes")
    args = parser.parse_args(argv)
    sizes = [int(b) for b in args.batches.split(",")]
    if len(sizes) != 2 or sizes[0] >= sizes[1] or sizes[0] < 4:
        parser.error(f"--batches needs two increasing sizes of at least 4, got {args.batches!r}")
    if args.world is not None and args.world < 1:
        parser.error(f"--world must be at least 1, got {args.world}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    points = []
    for size in sizes:
        start = time.perf_counter()
        peak, with_grad, units = measure(
            args.model, args.geometry, size, args.text_length, args.dtype, args.gradient_checkpointing
        )
        points.append(peak)
        print(f"{args.model} {args.geometry} batch {size}: forward + backward peak {peak:.2f} GiB "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    per_sample = (points[1] - points[0]) / (sizes[1] - sizes[0])
    fixed = points[0] - per_sample * sizes[0]
    adam = with_grad * 8 / 2**30
    print(f"fit: {fixed:.2f} GiB + {per_sample * 1024:.1f} MiB per sample; AdamW states {adam:.2f} GiB "
          f"({with_grad / 1e6:.0f}M parameters with gradients); dtype {args.dtype}, gradient checkpointing "
          f"{args.gradient_checkpointing}, text {args.text_length} tokens")
    for target in (int(t) for t in args.targets.split(",")):
        print(f"estimated training-step tensors at batch {target}: {fixed + per_sample * target + adam:.1f} GiB")
    if args.world:
        print(f"FSDP2 units: {units['units']} layers (largest {units['largest'] / 1e6:.1f}M parameters), root "
              f"{units['root'] / 1e6:.1f}M of {units['total'] / 1e6:.1f}M parameters")
        for target in (int(t) for t in args.targets.split(",")):
            ddp, fsdp = per_process(fixed, per_sample, target, with_grad, units, args.world)
            print(f"per process at batch {target} per process, {args.world} processes: DDP {ddp:.2f} GiB, "
                  f"FSDP2 {fsdp:.2f} GiB")


if __name__ == "__main__":
    main()
