"""Processor throughput: `OptTriProcessor` on image + text + audio batches, against `FlavaProcessor` (image + text)
plus `Wav2Vec2FeatureExtractor` (audio) on the same inputs.

    python benchmarks/processor.py [--batches 20] [--batch_size 32] [--repeats 5]

Both sides get the same PIL images (64 px, resized to 224 by both), captions and 16 kHz waveforms (0.4-1.5 s) from
the built-in dataset. FLAVA's pair is built offline from default configs with our tokenizer (no download). Prints the
median samples/s of each over `--repeats` runs and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

from transformers import FlavaImageProcessor, FlavaProcessor, Wav2Vec2FeatureExtractor

from modeling_opt_tri import OptTriFeatureExtractor, OptTriImageProcessor, OptTriProcessor
from modeling_opt_tri.data import build_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preset", default="configuration/tiny", help="tokenizer source")
    args = parser.parse_args()
    tokenizer = OptTriProcessor.from_pretrained(args.preset).tokenizer
    ours = OptTriProcessor(
        image_processor=OptTriImageProcessor(image_size=224),
        feature_extractor=OptTriFeatureExtractor(feature_size=80, sampling_rate=16000),
        tokenizer=tokenizer,
    )
    flava = FlavaProcessor(image_processor=FlavaImageProcessor(), tokenizer=tokenizer)
    wav2vec2 = Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True, do_normalize=True)
    data = build_synthetic_dataset(args.batches * args.batch_size, seed=0)
    rows = [data[i] for i in range(len(data))]
    batches = [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)]

    def run_ours() -> None:
        for batch in batches:
            ours(text=[r["text"] for r in batch], images=[r["image"] for r in batch],
                 audio=[r["audio"]["array"] for r in batch], sampling_rate=16000, return_tensors="pt")

    def run_flava() -> None:
        for batch in batches:
            flava(text=[r["text"] for r in batch], images=[r["image"] for r in batch], return_tensors="pt", padding=True)
            wav2vec2([r["audio"]["array"] for r in batch], sampling_rate=16000, padding=True, return_tensors="pt")

    results = {}
    for name, fn in (("OptTriProcessor", run_ours), ("FlavaProcessor + Wav2Vec2FeatureExtractor", run_flava)):
        fn()  # warm-up
        rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            rates.append(len(rows) / (time.perf_counter() - start))
        results[name] = statistics.median(rates)
        print(f"{name:<44} {results[name]:8.1f} samples/s (median of {args.repeats})")
    ratio = results["OptTriProcessor"] / results["FlavaProcessor + Wav2Vec2FeatureExtractor"]
    print(f"ratio OPT-Tri / FLAVA pair: {ratio:.2f}x")


if __name__ == "__main__":
    main()
