"""Pre-training step throughput: OPT-Tri against FLAVA (`FlavaForPreTraining`) at matched geometry, same process.

    python benchmarks/pretrain_step.py                                   # CPU, tiny preset, fp32
    python benchmarks/pretrain_step.py --with-audio                      # also OPT-Tri with audio added
    python benchmarks/pretrain_step.py --device cuda --geometry base --dtype bf16 --batch-size 128 --compile \
        --peak-tflops 989 --with-audio                                   # H100 SXM dense bf16 peak
    python benchmarks/pretrain_step.py --count-flops-only --geometry base --with-audio  # GFLOP/sample, no timing
    python benchmarks/pretrain_step.py --compile --with-audio           # eager and compiled OPT-Tri rows

A step is forward, backward and optimizer (AdamW: fused on CUDA, foreach on CPU) on a batch already on the device,
so the figure is the model's, not the data loader's. Both models are built from config (no download):

- OPT-Tri from `configuration/<geometry>`; objectives `--tasks` (default FLAVA's: mlm, mrfr, itm, contrastive;
  `--with-audio` adds a row with audio inputs, where mafr is added to the tasks). SDPA attention.
  `--itm-rows-per-sample 3` scores ITM on three cross-modal rows per sample (ALBEF: the positive and a negative on
  each side) instead of the default one (UNITER / FLAVA).
- FLAVA with the same text / image / multimodal widths, depths, heads, intermediate sizes, dropout, image and
  patch size, text length, text vocabulary, projection size, and the image tokenizer's codebook size as MIM
  vocabulary. Its objectives are its own pre-training losses on the same batch: MMM-text and MMM-image (masked
  text / image modelling through the multimodal encoder), ITM (half the rows get another row's image, as FLAVA's
  collator does) and global contrastive. Masks, labels and ITM negatives are made outside the step, as FLAVA's
  collator would; OPT-Tri masks inside its forward, so the comparison charges OPT-Tri for its masking.

The models run interleaved: every repeat times `--steps` steps of each, the order alternating between repeats, and
the table shows medians. FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on one eager step of
each model (matmuls, convolutions and attention, forward and backward; elementwise ops and the optimizer are not
counted), so TFLOP/s = counted FLOPs / median step time, and MFU = TFLOP/s / `--peak-tflops`. Peak memory is
`torch.cuda.max_memory_allocated` on CUDA; on CPU it is the peak of live tensor memory (parameters, gradients,
optimizer state, activations) tracked by `MemTracker` over one step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from transformers import FlavaConfig, FlavaForPreTraining  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from modeling_opt_tri import OptTriConfig, OptTriForPreTraining  # noqa: E402


FLAVA_TASKS = ("mlm", "mrfr", "itm", "contrastive")
NUM_SPECIAL_TOKENS = 5  # [PAD] [UNK] [CLS] [SEP] [MASK] are ids 0-4 in our tokenizers
CLS_ID, SEP_ID, MASK_ID = 2, 3, 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--geometry", choices=["tiny", "base", "large"], default="tiny", help="preset in configuration/")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 on CPU, 128 on CUDA")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model per repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model before the repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, fp32 master weights")
    parser.add_argument("--compile", action="store_true", help="also torch.compile OPT-Tri (eager and compiled rows)")
    parser.add_argument("--compile-flava", action="store_true", help="torch.compile FLAVA as well")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (e.g. 989 for H100 bf16)")
    parser.add_argument("--with-audio", action="store_true", help="add a row: OPT-Tri with audio inputs as well")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="for both models")
    parser.add_argument("--tasks", default=",".join(FLAVA_TASKS), help="OPT-Tri objectives (comma-separated)")
    parser.add_argument("--itm-rows-per-sample", type=int, choices=[1, 3], default=None,
                        help="OPT-Tri's config.itm_rows_per_sample (default: the preset's)")
    parser.add_argument("--text-length", type=int, default=32, help="tokens per caption (both models)")
    parser.add_argument("--audio-seconds", type=float, default=1.0, help="clip length for --with-audio (100 frames/s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU, unchanged on CUDA)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count-flops-only", action="store_true",
                        help="no timing: GFLOP per sample of one step of each model (default --batch-size 2)")
    args = parser.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = 2 if args.count_flops_only else (128 if args.device == "cuda" else 32)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if (args.compile or args.compile_flava) and args.warmup < 3:
        args.warmup = 3  # compilation, then the recompilations for the shapes that vary between steps
    smallest = 2 if args.count_flops_only else 4  # a timed step needs a few rows of every objective
    if args.batch_size < smallest:
        parser.error(f"--batch-size must be at least {smallest} (contrastive and matching need several rows)")
    return args


# ------------------------------------------------------------------------------------------------ models and batches
def opt_tri_config(geometry: str, itm_rows_per_sample: int | None = None) -> OptTriConfig:
    config = OptTriConfig.from_pretrained(str(REPO / "configuration" / geometry))
    config._attn_implementation = "sdpa"
    if itm_rows_per_sample is not None:
        config.itm_rows_per_sample = itm_rows_per_sample
    return config


def matched_flava_config(config: OptTriConfig, text_length: int) -> FlavaConfig:
    """A FLAVA config with OPT-Tri's widths, depths, heads, sizes, dropout and vocabularies."""
    t, v, f = config.text_config, config.vision_config, config.cross_modal_config

    def encoder(c: Any) -> dict[str, Any]:
        return {
            "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "intermediate_size": c.intermediate_size,
            "hidden_act": c.hidden_act,
            "hidden_dropout_prob": c.hidden_dropout_prob,
            "attention_probs_dropout_prob": c.attention_probs_dropout_prob,
            "layer_norm_eps": c.layer_norm_eps,
        }

    return FlavaConfig(
        text_config={
            **encoder(t), "vocab_size": t.vocab_size, "type_vocab_size": t.type_vocab_size,
            "max_position_embeddings": max(t.max_position_embeddings, text_length),
        },
        image_config={
            **encoder(v), "image_size": v.image_size, "patch_size": v.patch_size, "num_channels": v.num_channels,
            "vocab_size": config.image_decoder_config.codebook_size,
        },
        multimodal_config=encoder(f),
        hidden_size=f.hidden_size,
        projection_dim=config.projection_dim,
        init_codebook=False,  # MIM labels are given (as from a precomputed tokenizer), as for OPT-Tri
        skip_unmasked_multimodal_encoder=True,
        return_loss=True,
    )


def text_batch(batch: int, length: int, vocab: int, device: torch.device, generator: torch.Generator):
    ids = torch.randint(NUM_SPECIAL_TOKENS, vocab, (batch, length), generator=generator)
    ids[:, 0], ids[:, -1] = CLS_ID, SEP_ID
    return ids.to(device), torch.ones_like(ids, device=device), torch.zeros_like(ids, device=device)


def opt_tri_batch(config: OptTriConfig, args: argparse.Namespace, audio: bool, device, generator) -> dict[str, Any]:
    v = config.vision_config
    ids, mask, types = text_batch(args.batch_size, args.text_length, config.text_config.vocab_size, device, generator)
    batch = {
        "input_ids": ids, "attention_mask": mask, "token_type_ids": types,
        "pixel_values": torch.randn(args.batch_size, v.num_channels, v.image_size, v.image_size, generator=generator).to(device),
    }
    if audio:
        a = config.audio_config
        frames = max(a.patch_frames, int(round(args.audio_seconds * 100)) // a.patch_frames * a.patch_frames)
        batch["input_features"] = torch.randn(args.batch_size, a.num_mel_bins, frames, generator=generator).to(device)
        batch["audio_attention_mask"] = torch.ones(args.batch_size, frames, dtype=torch.long, device=device)
    return batch


def flava_batch(config: OptTriConfig, args: argparse.Namespace, device, generator) -> dict[str, Any]:
    """FLAVA's inputs as its collator makes them: masked text + labels, patch masks + MIM labels, ITM negatives."""
    v = config.vision_config
    b = args.batch_size
    ids, mask, types = text_batch(b, args.text_length, config.text_config.vocab_size, "cpu", generator)
    chosen = torch.rand(ids.shape, generator=generator) < config.mlm_probability
    chosen[:, 0] = chosen[:, -1] = False
    chosen[:, 1] = True  # at least one masked token per row
    ids_masked = ids.masked_fill(chosen, MASK_ID)
    mlm_labels = ids.masked_fill(~chosen, -100)
    patches = (v.image_size // v.patch_size) ** 2
    bool_masked_pos = torch.rand(b, patches, generator=generator) < config.mvm_probability
    bool_masked_pos[:, 0] = True
    mim_labels = torch.randint(config.image_decoder_config.codebook_size, (b, patches), generator=generator)
    pixels = torch.randn(b, v.num_channels, v.image_size, v.image_size, generator=generator)
    itm_labels = (torch.rand(b, generator=generator) < 0.5).long()
    itm_labels[:2] = 1  # a few positives, whatever the draw
    negatives = itm_labels == 0
    pixels[negatives] = pixels.roll(1, 0)[negatives]  # a negative gets another row's image
    batch = {
        "input_ids": ids, "input_ids_masked": ids_masked, "attention_mask": mask, "token_type_ids": types,
        "pixel_values": pixels, "bool_masked_pos": bool_masked_pos, "mlm_labels": mlm_labels,
        "mim_labels": mim_labels, "itm_labels": itm_labels,
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    batch.update(return_loss=True, return_dict=True)  # FLAVA needs its default output_hidden_states=True
    return batch


# ------------------------------------------------------------------------------------------------------ measurement
@dataclass
class Runner:
    name: str
    inputs: str
    model: torch.nn.Module
    forward: Callable[[], torch.Tensor]  # the (possibly compiled) forward, returns the loss
    eager_forward: Callable[[], torch.Tensor]  # for FLOP counting
    optimizer: torch.optim.Optimizer
    rates: list[float] = field(default_factory=list)
    flops: float = float("nan")
    peak_bytes: float = float("nan")


def make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if device.type == "cuda":
        return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=True)
    return torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, foreach=True)


def step(runner: Runner, autocast: contextlib.AbstractContextManager | Callable) -> None:
    """One training step; no host-device synchronisation of its own."""
    with autocast():
        loss = runner.forward()
    loss.backward()
    runner.optimizer.step()
    runner.optimizer.zero_grad(set_to_none=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_sdpa_flops() -> dict[Any, Any]:
    """FLOP formulas for CPU's fused SDPA kernels, which `FlopCounterMode` does not list (same math as on CUDA)."""
    from torch.utils import flop_counter

    def forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = forward_flops
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward_flops
    return mapping


def count_flops(runner: Runner, autocast: Callable) -> float:
    """FLOPs of one eager step (forward + backward); the optimizer's elementwise work is not counted."""
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_flops())
    with counter:
        with autocast():
            loss = runner.eager_forward()
        loss.backward()
    runner.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_memory(runner: Runner, autocast: Callable, device: torch.device) -> float:
    """Peak bytes of one step: CUDA allocator peak, or on CPU the live-tensor peak tracked by MemTracker."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(runner, autocast)
        sync(device)
        return float(torch.cuda.max_memory_allocated(device))
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except Exception:  # noqa: BLE001 - an optional diagnostic
        return float("nan")
    tracker = MemTracker()
    tracker.track_external(runner.model, runner.optimizer)
    with tracker:
        with autocast():
            loss = runner.eager_forward()
        loss.backward()
        runner.optimizer.step()
        runner.optimizer.zero_grad(set_to_none=True)
    peak = tracker.get_tracker_snapshot("peak")
    return float(sum(snapshot.get("Total", 0) for snapshot in peak.values()))


def build_runners(args: argparse.Namespace, device: torch.device) -> list[Runner]:
    config = opt_tri_config(args.geometry, args.itm_rows_per_sample)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    generator = torch.Generator().manual_seed(args.seed)
    runners = []

    torch.manual_seed(args.seed)
    flava = FlavaForPreTraining(matched_flava_config(config, args.text_length)).to(device).train()
    fbatch = flava_batch(config, args, device, generator)
    runners.append(_runner("FLAVA", "text+image", flava, lambda m, b=fbatch: m(**b).loss, args.compile_flava, args, device))

    variants = [False, True] if args.compile else [False]
    for audio in [False, True] if args.with_audio else [False]:
        batch = opt_tri_batch(config, args, audio, device, generator)
        call_tasks = tasks + (["mafr"] if audio and "mafr" not in tasks and "mrfr" in tasks else [])
        for compiled in variants:  # the same initial weights for the eager and the compiled model
            torch.manual_seed(args.seed)
            ours = OptTriForPreTraining(config).to(device).train()
            runners.append(_runner(
                "OPT-Tri" + (" compiled" if compiled else ""), "text+image+audio" if audio else "text+image", ours,
                lambda m, b=batch, t=call_tasks: m(**b, tasks=t).loss, compiled, args, device,
            ))
    return runners


def _runner(name, inputs, model, call, compile_it, args, device) -> Runner:
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    compiled = torch.compile(model) if compile_it else model
    return Runner(
        name=name, inputs=inputs, model=model, forward=lambda: call(compiled), eager_forward=lambda: call(model),
        optimizer=make_optimizer(model, device),
    )


def print_flops(runners: list[Runner], args: argparse.Namespace, device: torch.device) -> None:
    """`--count-flops-only`: the counted GFLOP per sample of one eager step of each model, and the ratio to FLAVA."""
    for runner in runners:
        runner.flops = count_flops(runner, contextlib.nullcontext)
    print(f"FLOPs counted (FlopCounterMode: matmuls, convolutions and attention, forward + backward) on {device}, "
          f"geometry {args.geometry}, batch {args.batch_size}, text {args.text_length} tokens; no timing")
    print(f"OPT-Tri tasks: {args.tasks}{' (+mafr with audio)' if args.with_audio else ''}; "
          "token drop: none (every patch and audio token is encoded; FLIP dropping is not built); "
          "FLAVA: mmm_text, mmm_image, itm, global contrastive")
    flava = runners[0].flops / args.batch_size
    print(f"{'model':<16} {'inputs':<17} {'GFLOP/sample':>13} {'vs FLAVA':>9}")
    for runner in runners:
        per_sample = runner.flops / args.batch_size
        print(f"{runner.name:<16} {runner.inputs:<17} {per_sample / 1e9:13.3f} {per_sample / flava:8.3f}x")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = torch.bfloat16 if args.dtype == "bf16" else None

    def autocast() -> contextlib.AbstractContextManager:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    runners = build_runners(args, device)
    if args.count_flops_only:
        print_flops(runners, args, device)
        return
    for runner in runners:  # warm-up (and compilation), and one look at the loss outside the timed steps
        for _ in range(max(1, args.warmup)):
            step(runner, autocast)
        with torch.no_grad(), autocast():
            loss = runner.eager_forward()
        if not torch.isfinite(loss).item():
            raise RuntimeError(f"{runner.name} ({runner.inputs}) gave a non-finite loss {loss.item()}")
    for runner in runners:
        runner.flops = count_flops(runner, autocast)
        if not args.no_memory:
            runner.peak_bytes = peak_memory(runner, autocast, device)

    load_start = os.getloadavg()[0]
    for repeat in range(args.repeats):
        order = runners if repeat % 2 == 0 else runners[::-1]
        for runner in order:
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(runner, autocast)
            sync(device)
            runner.rates.append(args.batch_size * args.steps / (time.perf_counter() - start))
    load_end = os.getloadavg()[0]

    print(
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
        f"torch threads {torch.get_num_threads()}, geometry {args.geometry}, batch {args.batch_size}, "
        f"text {args.text_length} tokens, dtype {args.dtype}, compile {args.compile}, "
        f"gradient checkpointing {args.gradient_checkpointing}; {args.repeats} repeats x {args.steps} steps, "
        f"models interleaved; load average {load_start:.2f} -> {load_end:.2f}"
    )
    print(f"OPT-Tri tasks: {args.tasks}{' (+mafr with audio)' if args.with_audio else ''}, "
          f"ITM rows per sample {runners[1].model.config.itm_rows_per_sample}; "
          "FLAVA: mmm_text, mmm_image, itm, global contrastive")
    reference = statistics.median(runners[0].rates)
    header = (
        f"{'model':<16} {'inputs':<17} {'params':>8} {'step ms':>9} {'samples/s':>10} {'GFLOP/step':>11} "
        f"{'TFLOP/s':>8} {'MFU':>7} {'peak MiB':>9} {'vs FLAVA':>9}"
    )
    print(header)
    print("-" * len(header))
    for runner in runners:
        rate = statistics.median(runner.rates)
        step_s = args.batch_size / rate
        tflops = runner.flops / step_s / 1e12
        mfu = f"{100 * tflops / args.peak_tflops:6.1f}%" if args.peak_tflops else "    n/a"
        params = sum(p.numel() for p in runner.model.parameters()) / 1e6
        memory = "n/a" if runner.peak_bytes != runner.peak_bytes else f"{runner.peak_bytes / 2**20:.1f}"
        print(
            f"{runner.name:<16} {runner.inputs:<17} {params:7.1f}M {1000 * step_s:9.1f} {rate:10.1f} "
            f"{runner.flops / 1e9:11.2f} {tflops:8.4f} {mfu:>7} {memory:>9} {rate / reference:8.2f}x"
        )
    spread = ", ".join(
        f"{r.name} {r.inputs}: {min(r.rates):.1f}-{max(r.rates):.1f}" for r in runners
    )
    per_repeat = [statistics.median([o / f for o, f in zip(r.rates, runners[0].rates)]) for r in runners[1:]]
    print(f"samples/s range over repeats: {spread}")
    print("median of per-repeat ratios vs FLAVA: " + ", ".join(
        f"{r.name} {r.inputs} {x:.2f}x" for r, x in zip(runners[1:], per_repeat)
    ))


if __name__ == "__main__":
    main()
