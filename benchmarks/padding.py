"""Padded fraction of tokens per batch on the built-in dataset, with and without OPT-Tri's length grouping.

    python benchmarks/padding.py [--rows 4000] [--batch_size 32] [--max_tokens 2048]

Counts the padded share of the variable-length parts of every batch (text tokens + audio frames), exactly as the
model sees them after `OptTriProcessor` (text padded to the longest caption, audio to the longest clip), for
  - naive batches (shuffled, no grouping),
  - length-grouped batches (`LengthGroupedBatchSampler`, UNITER-style mega-batches sorted by length),
  - token-budget batches (`--max_tokens`, dynamic batch size).
"""

from __future__ import annotations

import argparse

import numpy as np

from modeling_opt_tri import OptTriProcessor
from modeling_opt_tri.data import build_synthetic_dataset
from modeling_opt_tri.data.collate import LengthGroupedBatchSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_tokens", type=int, default=2048)
    parser.add_argument("--preset", default="configuration/tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    processor = OptTriProcessor.from_pretrained(args.preset)
    data = build_synthetic_dataset(args.rows, seed=args.seed)
    text_lengths = np.asarray([len(ids) for ids in processor.tokenizer(list(data["text"]))["input_ids"]])
    fe = processor.feature_extractor
    audio_lengths = np.asarray([fe.num_frames(len(a["array"])) for a in data.with_format(None)["audio"]])
    pad = fe.pad_to_multiple_of or 1
    lengths = list(zip(audio_lengths.tolist(), text_lengths.tolist()))  # as `row_lengths` gives them

    def padded_fraction(batches: list[list[int]]) -> float:
        padded = total = 0
        for batch in batches:
            t, a = text_lengths[batch], audio_lengths[batch]
            a_width = int(np.ceil(a.max() / pad) * pad)
            total += len(batch) * (t.max() + a_width)
            padded += len(batch) * (t.max() + a_width) - t.sum() - a.sum()
        return padded / total

    samplers = {
        "naive (shuffled)": LengthGroupedBatchSampler(lengths, args.batch_size, group_by_length=False, seed=args.seed),
        "length-grouped": LengthGroupedBatchSampler(lengths, args.batch_size, seed=args.seed),
        f"token budget {args.max_tokens}": LengthGroupedBatchSampler(
            lengths, 4 * args.batch_size, max_tokens=args.max_tokens, seed=args.seed
        ),
    }
    print(f"{args.rows} ShapeWorld rows; text {text_lengths.min()}-{text_lengths.max()} tokens, audio "
          f"{audio_lengths.min()}-{audio_lengths.max()} frames")
    for name, sampler in samplers.items():
        batches = sampler.batches(0)
        sizes = [len(b) for b in batches]
        print(f"{name:<22} padded fraction {100 * padded_fraction(batches):5.1f}%   batches {len(batches):4d}   "
              f"mean batch size {np.mean(sizes):.1f}")


if __name__ == "__main__":
    main()
