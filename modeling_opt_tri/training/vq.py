"""The training loop shared by the VQ tokenizer scripts (`examples/train_{image,audio}_tokenizer.py`)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup


def add_vq_training_arguments(parser: argparse.ArgumentParser, max_steps: int, dead_code_threshold: float) -> None:
    """The optimisation, logging and codebook-update flags both tokenizer scripts take."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_steps", type=int, default=max_steps)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--warmup_steps", type=int, default=20)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--log_every", type=int, default=25)
    parser.add_argument("--num_threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 is often fastest on a busy, shared CPU")
    parser.add_argument("--commitment_cost", type=float, default=0.25)
    parser.add_argument("--ema_decay", type=float, default=0.95, help="0.95 reacts fast enough for a short run")
    parser.add_argument("--dead_code_threshold", type=float, default=dead_code_threshold,
                        help="restart codes whose EMA usage (vectors per step) falls below this")


def train_vq(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    args: argparse.Namespace,
    accelerator: Any,
    output_dir: Path,
    step: Callable[[torch.nn.Module, tuple], Any],
    desc: str,
    reconstruction_name: str,
) -> tuple[torch.nn.Module, list[dict], float]:
    """
    Train a VQ tokenizer for `args.max_steps` steps (AdamW, warm-up + cosine, gradient clipping). `step(model, batch)`
    returns the model's `OptTriVQOutput`. Every step's losses, perplexity, codebook usage and restarts go to
    `output_dir/metrics.jsonl`; every `args.log_every` steps also the share of codes used since the last log.

    Returns (the unwrapped model, the per-step records, training seconds).
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    codebook_size = unwrapped.config.codebook_size

    history: list[dict] = []
    metrics_file = open(output_dir / "metrics.jsonl", "w") if accelerator.is_main_process else None
    progress = tqdm(total=args.max_steps, disable=not accelerator.is_local_main_process, desc=desc, mininterval=5)
    done, start = 0, time.time()
    window_histogram = torch.zeros(codebook_size, device=accelerator.device)  # codes used since the last log
    model.train()
    while done < args.max_steps:
        for batch in loader:
            output = step(model, batch)
            accelerator.backward(output.loss)
            if args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            done += 1
            record = {
                "step": done,
                "loss": output.loss.item(),
                "reconstruction_loss": output.reconstruction_loss.item(),
                "commitment_loss": output.commitment_loss.item(),
                "perplexity": output.perplexity.item(),
                "codebook_usage_pct": 100.0 * output.codebook_usage.item(),
                "num_restarts": unwrapped.num_restarts,
                "lr": scheduler.get_last_lr()[0],
            }
            codes = output.codes if output.codes_mask is None else output.codes[output.codes_mask.bool()]
            window_histogram += torch.bincount(codes.flatten(), minlength=codebook_size)
            log_now = done % args.log_every == 0 or done == 1 or done == args.max_steps
            if log_now:
                record["window_codes_used_pct"] = 100.0 * float((window_histogram > 0).float().mean())
                window_histogram.zero_()
            history.append(record)
            if metrics_file:
                metrics_file.write(json.dumps(record) + "\n")
            progress.update(1)
            if log_now:
                progress.write(
                    f"step {done:5d}  {reconstruction_name} {record['reconstruction_loss']:.4f}"
                    f"  commit {record['commitment_loss']:.4f}  perplexity {record['perplexity']:6.1f}"
                    f"  codes used {record['codebook_usage_pct']:5.1f}%"
                    f"  (since last log {record['window_codes_used_pct']:5.1f}%)  restarts {record['num_restarts']}"
                )
            if done >= args.max_steps:
                break
    progress.close()
    if metrics_file:
        metrics_file.close()
    return unwrapped, history, time.time() - start
