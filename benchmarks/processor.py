"""Processor throughput: `OptTriProcessor` on image + text + audio batches, against `FlavaProcessor` (image + text)
plus `Wav2Vec2FeatureExtractor` (audio) on the same inputs.

    python benchmarks/processor.py [--batches 20] [--batch-size 32] [--repeats 7] [--image-size 224] [--threads 1]
                                   [--resize-backend torch|pil]

Inputs (identical objects for both sides): rows of the built-in dataset decoded the way `TriModalCollator` hands
them to a processor, i.e. RGB `PIL` images (64 px, already decoded) and float32 NumPy waveforms at 16 kHz
(0.4-1.5 s), plus captions. `--raw-audio-lists` passes the dataset's raw audio instead (Python lists of floats, which
both sides must first turn into arrays).

What each side does, per batch, returning PyTorch tensors:
  OPT-Tri: tokenizer (pad to longest, truncate at the tokenizer's limit) -> input_ids, token_type_ids,
           attention_mask; image resize to S x S (bicubic: by default torch's antialiased uint8 kernel, batched;
           `--resize-backend pil` for PIL's), rescale, normalise -> pixel_values [B, 3, S, S],
           image_mask; log-mel (STFT n_fft 400, hop 160, 80 Slaney mel bins, log, normalise) ->
           input_features [B, 80, T], audio_attention_mask.
  FLAVA:   same tokenizer with the same padding/truncation -> the same three text tensors; FlavaImageProcessorPil
           resize to S x S (PIL bicubic), centre crop S x S (a no-op), rescale, normalise ->
           pixel_values [B, 3, S, S]; Wav2Vec2FeatureExtractor pad + per-clip zero-mean/unit-variance
           normalisation -> input_values [B, N], attention_mask (no spectral features at all).
(torchvision is not installed here, and has no CPU build for this torch, so FLAVA's image processor is its PIL
backend, which is what `FlavaImageProcessor` falls back to. FLAVA's torchvision backend would resize uint8
tensors with the same torch kernel as our default; `--resize-backend pil` shows our figure with PIL resizing,
i.e. the same resize work on both sides.)
Both are built offline from default configs with our tokenizer (no download). The two sides run interleaved
(alternating which goes first) in every repeat, so machine load hits both alike; the script prints the median
samples/s of each, the ratio of the medians and the median of the per-repeat ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any, Callable

import torch
from transformers import FlavaImageProcessorPil, FlavaProcessor, Wav2Vec2FeatureExtractor
from transformers.utils import logging as hf_logging

from modeling_opt_tri import OptTriFeatureExtractor, OptTriImageProcessor, OptTriProcessor
from modeling_opt_tri.data import build_synthetic_dataset
from modeling_opt_tri.data.decoding import decode_audio, decode_image


SAMPLING_RATE = 16000


def build_batches(num_rows: int, batch_size: int, raw_audio_lists: bool) -> list[dict[str, list[Any]]]:
    """Rows of the built-in dataset as `{"text", "images", "audio"}` batches, decoded once up front."""
    data = build_synthetic_dataset(num_rows, seed=0, sampling_rate=SAMPLING_RATE)
    texts, images, audio = [], [], []
    for index in range(len(data)):
        row = data[index]
        texts.append(row["text"])
        images.append(decode_image(row["image"]))
        if raw_audio_lists:
            audio.append(row["audio"]["array"])
        else:
            wave, rate = decode_audio(row["audio"])
            assert rate == SAMPLING_RATE, rate
            audio.append(wave)
    return [
        {"text": texts[i : i + batch_size], "images": images[i : i + batch_size], "audio": audio[i : i + batch_size]}
        for i in range(0, len(texts), batch_size)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--image-size", type=int, default=224, help="side both image processors resize to")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both sides")
    parser.add_argument("--raw-audio-lists", action="store_true", help="pass raw Python lists instead of arrays")
    parser.add_argument("--preset", default="configuration/tiny", help="tokenizer source")
    parser.add_argument("--resize-backend", choices=["torch", "pil"], default="torch", help="OptTriImageProcessor's")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # FLAVA's "no torchvision, using the PIL backend" notice

    tokenizer = OptTriProcessor.from_pretrained(args.preset).tokenizer
    max_length = int(tokenizer.model_max_length)
    size = args.image_size
    ours = OptTriProcessor(
        image_processor=OptTriImageProcessor(image_size=size, resize_backend=args.resize_backend),
        feature_extractor=OptTriFeatureExtractor(feature_size=80, sampling_rate=SAMPLING_RATE),
        tokenizer=tokenizer,
    )
    flava = FlavaProcessor(
        image_processor=FlavaImageProcessorPil(
            size={"height": size, "width": size}, crop_size={"height": size, "width": size}
        ),
        tokenizer=tokenizer,
    )
    wav2vec2 = Wav2Vec2FeatureExtractor(sampling_rate=SAMPLING_RATE, return_attention_mask=True, do_normalize=True)
    batches = build_batches(args.batches * args.batch_size, args.batch_size, args.raw_audio_lists)
    num_rows = sum(len(batch["text"]) for batch in batches)

    def run_ours() -> dict[str, torch.Tensor]:
        for batch in batches:
            out = ours(
                text=batch["text"], images=batch["images"], audio=batch["audio"], sampling_rate=SAMPLING_RATE,
                return_tensors="pt", padding=True, truncation=True, max_length=max_length,
            )
        return dict(out)

    def run_flava() -> dict[str, torch.Tensor]:
        for batch in batches:
            out = dict(flava(
                text=batch["text"], images=batch["images"], return_tensors="pt", padding=True, truncation=True,
                max_length=max_length,
            ))
            audio = wav2vec2(batch["audio"], sampling_rate=SAMPLING_RATE, padding=True, return_tensors="pt")
            out.update({f"audio_{key}": value for key, value in audio.items()})
        return out

    sides: dict[str, Callable[[], dict[str, torch.Tensor]]] = {
        "OptTriProcessor": run_ours,
        "FlavaProcessor + Wav2Vec2FeatureExtractor": run_flava,
    }
    # warm-up, and a check that both produce the same image / text tensors
    last = {name: fn() for name, fn in sides.items()}
    a, b = last["OptTriProcessor"], last["FlavaProcessor + Wav2Vec2FeatureExtractor"]
    assert a["pixel_values"].shape == b["pixel_values"].shape, (a["pixel_values"].shape, b["pixel_values"].shape)
    assert torch.equal(a["input_ids"], b["input_ids"])
    print(
        f"{num_rows} rows in {len(batches)} batches of {args.batch_size}; image {size} px; torch threads "
        f"{torch.get_num_threads()}; our resize backend {args.resize_backend}; "
        f"audio as {'lists' if args.raw_audio_lists else 'float32 arrays'}; "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )
    for name, out in last.items():
        print(f"  {name} returns " + ", ".join(f"{k} {list(v.shape)} {str(v.dtype)[6:]}" for k, v in out.items()))

    rates: dict[str, list[float]] = {name: [] for name in sides}
    for repeat in range(args.repeats):
        order = list(sides) if repeat % 2 == 0 else list(sides)[::-1]
        for name in order:
            start = time.perf_counter()
            sides[name]()
            rates[name].append(num_rows / (time.perf_counter() - start))
    names = list(sides)
    for name in names:
        values = rates[name]
        print(
            f"{name:<44} {statistics.median(values):8.1f} samples/s (median of {args.repeats}; "
            f"min {min(values):.1f}, max {max(values):.1f})"
        )
    per_repeat = [x / y for x, y in zip(rates[names[0]], rates[names[1]])]
    print(
        f"ratio OPT-Tri / FLAVA pair: {statistics.median(rates[names[0]]) / statistics.median(rates[names[1]]):.2f}x "
        f"(median of per-repeat ratios {statistics.median(per_repeat):.2f}x); "
        f"load average at end {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
