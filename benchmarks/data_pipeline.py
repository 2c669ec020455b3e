"""Data-pipeline throughput (decode + process + collate) with 0, 1 and 2 DataLoader workers, beside the model's step.

    python benchmarks/data_pipeline.py                          # real FSDD speech + PNG images, tiny preset
    python benchmarks/data_pipeline.py --streaming --rows 512 --batch-size 32 --workers 0 1 2 4

The data is a metadata folder built in a temporary directory: `--rows` FSDD recordings (`--fsdd`, symlinked), each
with a caption and a `--image-size` PNG. The pipeline is exactly the one pre-training runs (`BatchStream` of
`training/pretrain.py`: map-style length-grouped batches, or with `--streaming` the `StreamBatches` plan), timed
alone: samples/s over all batches of one epoch (after an untimed warm-up epoch), worker start-up included. The step
is forward, backward and AdamW of the `--preset` model on one of those batches (median of `--steps` steps after a
warm-up), also in samples/s.
The pipeline keeps the step fed when its samples/s with the workers you run is above the step's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fsdd", default=str(REPO.parent / "shared" / "data" / "fsdd"), help="FSDD folder")
    parser.add_argument("--preset", default=str(REPO / "configuration" / "tiny"))
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=256, help="side of the PNGs written (before resizing)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=5, help="timed model steps")
    parser.add_argument("--streaming", action="store_true", help="time the streaming pipeline")
    args = parser.parse_args(argv)
    if args.rows < args.batch_size or args.batch_size < 1:
        parser.error(f"--rows ({args.rows}) must be at least --batch-size ({args.batch_size}) >= 1")
    if not (Path(args.fsdd) / "recordings").is_dir():
        parser.error(f"--fsdd {args.fsdd}: no recordings/ folder (the Free Spoken Digit Dataset)")
    if min(args.workers) < 0 or args.steps < 1:
        parser.error("--workers must be >= 0 and --steps >= 1")
    return args


def build_folder(root: Path, fsdd: Path, rows: int, image_size: int) -> Path:
    """A metadata folder of FSDD speech, captions and noisy PNG images."""
    import json

    from PIL import Image

    digits = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    recordings = sorted((fsdd / "recordings").glob("*.wav"))
    rng = np.random.default_rng(0)
    (root / "media").mkdir(parents=True)
    lines = []
    for i in range(rows):
        wav = recordings[(i * 7919) % len(recordings)]
        digit, speaker, _ = wav.stem.split("_")
        os.symlink(wav, root / "media" / f"{i}.wav")
        pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "media" / f"{i}.png")
        lines.append(json.dumps({"text": f"the digit {digits[int(digit)]} spoken by {speaker}",
                                 "image": f"media/{i}.png", "audio": f"media/{i}.wav"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def time_pipeline(folder: Path, args: argparse.Namespace, workers: int, processor) -> tuple[float, dict]:
    """Samples/s of one epoch of pre-training's batches with `workers` workers; also returns one batch."""
    from modeling_opt_tri.data.collate import TriModalCollator
    from modeling_opt_tri.training.pretrain import BatchStream, PretrainArguments, load_split

    settings = PretrainArguments(dataset=str(folder), batch_size=args.batch_size, num_workers=workers,
                                 streaming=args.streaming, preset=args.preset)
    data = load_split(settings, "train", 0)
    stream = BatchStream(data, TriModalCollator(processor), settings, 0, 1, processor.tokenizer)
    start = time.perf_counter()
    samples, batch = 0, None
    for batch in stream._loader(0, 0):
        samples += int(batch["input_ids"].shape[0])
    return samples / (time.perf_counter() - start), batch


def time_step(batch: dict, preset: str, steps: int) -> float:
    """Samples/s of forward + backward + AdamW of the preset model on `batch`."""
    from modeling_opt_tri import OptTriConfig, OptTriForPreTraining

    torch.manual_seed(0)
    model = OptTriForPreTraining(OptTriConfig.from_pretrained(preset)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms up
            times.append(time.perf_counter() - start)
    return int(inputs["input_ids"].shape[0]) / statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    import datasets

    from modeling_opt_tri import OptTriProcessor

    args = parse_args(argv)
    datasets.disable_progress_bars()
    processor = OptTriProcessor.from_pretrained(args.preset)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(Path(tmp) / "data", Path(args.fsdd), args.rows, args.image_size)
        time_pipeline(folder, args, 0, processor)  # warm-up: caches, imports, first processor calls
        batch = None
        for workers in args.workers:
            results[workers], batch = time_pipeline(folder, args, workers, processor)
    step = time_step(batch, args.preset, args.steps)
    kind = "streaming" if args.streaming else "map-style"
    print(f"Data pipeline ({kind}: decode + process + collate), {args.rows} rows of FSDD speech + "
          f"{args.image_size}px PNG + caption, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"{'workers':>8}{'samples/s':>12}{'vs step':>10}")
    for workers, rate in results.items():
        print(f"{workers:>8}{rate:>12.1f}{rate / step:>9.1f}x")
    print(f"model step ({Path(args.preset).name} preset, forward + backward + AdamW): {step:.1f} samples/s")
    return {"pipeline": results, "step": step}


if __name__ == "__main__":
    main()
