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

Towers of other families (`--vision`, `--audio`, `--text`; default: the preset's own towers and no audio, as
before) are built at their *base* sizes from configs written below from the public model cards (random weights,
nothing is downloaded), with inputs shaped as each family's processor gives them for a clip of `--audio-seconds`
(default 10 s at 16 kHz): Whisper always pads to its 30 s window (3000 frames, 1500 tokens), AST pads or cuts to
1024 frames (1212 patches), the wav2vec2 family reads the waveform (499 frames for 10 s), ours 100 frames a second.
With audio, masked audio frame regression (mafr) joins the objectives. `--freeze vision,audio` freezes towers as
`examples/pretrain.py --freeze` does (no gradient, forward under `torch.no_grad`):

    python benchmarks/memory_estimate.py --batches 4,8 --vision siglip --audio whisper --text roberta --freeze audio
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretrain_step as bench  # noqa: E402


#: family -> (what it is, `config.model_type`, config arguments at base size), from the public model cards.
VISION_FAMILIES: dict[str, tuple[str, str, dict]] = {
    "vit": ("ViT-B/16 224 (google/vit-base-patch16-224)", "vit", dict(image_size=224, patch_size=16)),
    "clip": ("CLIP ViT-B/16 vision (openai/clip-vit-base-patch16)", "clip_vision_model",
             dict(image_size=224, patch_size=16, hidden_act="quick_gelu")),
    "siglip": ("SigLIP base patch16 224 vision (google/siglip-base-patch16-224)", "siglip_vision_model",
               dict(image_size=224, patch_size=16)),
    "dinov2-small": ("DINOv2 small patch14 (facebook/dinov2-small), 224 px crops", "dinov2",
                     dict(hidden_size=384, num_attention_heads=6, image_size=518, patch_size=14)),
    "dinov2-base": ("DINOv2 base patch14 (facebook/dinov2-base), 224 px crops", "dinov2",
                    dict(hidden_size=768, num_attention_heads=12, image_size=518, patch_size=14)),
}
VISION_INPUT_SIZE = 224  # what every family's image processor gives (resize / centre crop)
AUDIO_FAMILIES: dict[str, tuple[str, str, dict]] = {
    "ours": ("OPT-Tri audio encoder of the preset (80 mel, 100 frames/s)", "opt_tri_audio", {}),
    "ast": ("AST base (MIT/ast-finetuned-audioset-10-10-0.4593): 128 mel, 1024 frames", "audio-spectrogram-transformer",
            dict(num_mel_bins=128, max_length=1024, patch_size=16, frequency_stride=10, time_stride=10)),
    "wav2vec2": ("wav2vec2 base (facebook/wav2vec2-base)", "wav2vec2", {}),
    "hubert": ("HuBERT base (facebook/hubert-base-ls960)", "hubert", {}),
    "wavlm": ("WavLM base (microsoft/wavlm-base)", "wavlm", {}),
    "whisper": ("Whisper base encoder (openai/whisper-base): 80 mel, 3000 frames = 30 s", "whisper",
                dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                     decoder_layers=6, decoder_attention_heads=8, decoder_ffn_dim=2048, num_mel_bins=80,
                     max_source_positions=1500, vocab_size=51865)),
}
TEXT_FAMILIES: dict[str, tuple[str, str, dict]] = {
    "bert": ("BERT base uncased (google-bert/bert-base-uncased)", "bert", {}),
    "roberta": ("RoBERTa base (FacebookAI/roberta-base)", "roberta",
                dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                     bos_token_id=0, eos_token_id=2)),
}
SAMPLING_RATE = 16_000


def family_config(config, towers: dict[str, str | None]):
    """`config` with the sub-configs of the chosen tower families at their base sizes (None: the preset's own)."""
    from transformers import AutoConfig

    for name, family in towers.items():
        if family is None or (name == "audio" and family == "ours"):
            continue
        table = {"vision": VISION_FAMILIES, "audio": AUDIO_FAMILIES, "text": TEXT_FAMILIES}[name]
        _, model_type, kwargs = table[family]
        sub = AutoConfig.for_model(model_type, **kwargs)
        sub._attn_implementation = "sdpa"
        setattr(config, f"{name}_config", sub)
        if name == "text":  # the text decoder writes the tower's vocabulary (as `--tokenizer` sizes it)
            config.text_decoder_config.vocab_size = sub.vocab_size
    config.validate()
    return config


def family_audio(config, family: str, batch: int, seconds: float, generator: torch.Generator) -> dict:
    """The audio inputs of `family` as its processor gives them for `batch` clips of `seconds` (16 kHz)."""
    a = config.audio_config
    ones = torch.ones(batch, dtype=torch.long)
    if family in ("wav2vec2", "hubert", "wavlm"):
        samples = int(seconds * SAMPLING_RATE)
        return {"input_values": torch.randn(batch, samples, generator=generator), "audio_mask": ones,
                "audio_attention_mask": torch.ones(batch, samples, dtype=torch.long)}
    if family == "ast":  # padded or cut to max_length frames, (B, frames, mel), no frame mask
        return {"input_features": torch.randn(batch, a.max_length, a.num_mel_bins, generator=generator),
                "audio_mask": ones}
    if family == "whisper":  # always the full window, the clip's frames marked real
        frames = 2 * a.max_source_positions
        mask = torch.zeros(batch, frames, dtype=torch.long)
        mask[:, : min(frames, int(seconds * 100))] = 1
    else:
        frames = max(a.patch_frames, int(round(seconds * 100)) // a.patch_frames * a.patch_frames)
        mask = torch.ones(batch, frames, dtype=torch.long)
    return {"input_features": torch.randn(batch, a.num_mel_bins, frames, generator=generator),
            "audio_attention_mask": mask}


class _NoHook:
    """Stands for the gradient hooks MemTracker would register on a parameter that takes no gradient."""

    def remove(self) -> None:
        pass


def measure(model_name: str, geometry: str, batch_size: int, text_length: int, dtype: str, checkpointing: bool,
            towers: dict[str, str | None] | None = None, audio_seconds: float = 10.0, freeze: tuple[str, ...] = ()):
    """(peak GiB of one forward + backward, parameters that received a gradient, FSDP2 unit sizes)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    args = bench.parse_args(
        ["--geometry", geometry, "--batch-size", str(batch_size), "--text-length", str(text_length), "--dtype", dtype]
    )
    towers = towers or {}
    config = family_config(bench.opt_tri_config(geometry), towers)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if model_name == "opt-tri":
        model = bench.OptTriForPreTraining(config).train()
        batch = bench.opt_tri_batch(config, args, False, "cpu", generator)
        tasks = list(bench.FLAVA_TASKS)
        if towers.get("vision") is not None:
            batch["pixel_values"] = torch.randn(batch_size, 3, VISION_INPUT_SIZE, VISION_INPUT_SIZE, generator=generator)
        if towers.get("audio") is not None:
            batch.update(family_audio(config, towers["audio"], batch_size, audio_seconds, generator))
            tasks.append("mafr")
        if freeze:
            model.freeze_towers(freeze)

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
    for parameter in model.parameters():  # MemTracker hooks every parameter's gradient; a frozen one has none
        if not parameter.requires_grad:  # (frozen towers, Whisper's fixed positions)
            tracker._param_to_grad_hook_handles[parameter] = (_NoHook(), _NoHook())
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


def describe(name: str, family: str | None, seconds: float) -> str:
    if family is None:
        return "none" if name == "audio" else "the preset's"
    text = {"vision": VISION_FAMILIES, "audio": AUDIO_FAMILIES, "text": TEXT_FAMILIES}[name][family][0]
    return text + (f", {seconds:g} s clips" if name == "audio" else "")


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
    parser.add_argument("--vision", choices=sorted(VISION_FAMILIES), default=None,
                        help="vision tower family at base size (default: the preset's)")
    parser.add_argument("--audio", choices=sorted(AUDIO_FAMILIES), default=None,
                        help="add an audio tower of this family at base size, with audio inputs (default: no audio)")
    parser.add_argument("--text", choices=sorted(TEXT_FAMILIES), default=None,
                        help="text tower family at base size (default: the preset's)")
    parser.add_argument("--audio-seconds", type=float, default=10.0, help="clip length the audio inputs stand for")
    parser.add_argument("--freeze", default="", help="towers to freeze (comma-separated: text, vision, audio)")
    args = parser.parse_args(argv)
    towers = {"vision": args.vision, "audio": args.audio, "text": args.text}
    freeze = tuple(t for t in args.freeze.split(",") if t)
    if args.model == "flava" and (any(towers.values()) or freeze):
        parser.error("--vision / --audio / --text / --freeze apply to --model opt-tri only")
    if set(freeze) - {"text", "vision", "audio"} or ("audio" in freeze and args.audio is None):
        parser.error(f"--freeze takes text, vision and audio (audio only with --audio), got {args.freeze!r}")
    if args.audio_seconds <= 0:
        parser.error(f"--audio-seconds must be positive, got {args.audio_seconds}")
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
            args.model, args.geometry, size, args.text_length, args.dtype, args.gradient_checkpointing,
            towers, args.audio_seconds, freeze,
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
    if any(towers.values()) or freeze:
        print("towers: " + "; ".join(f"{name} {describe(name, family, args.audio_seconds)}"
                                     for name, family in towers.items()) + f"; frozen: {','.join(freeze) or 'none'}")
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
