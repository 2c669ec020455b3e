"""Decode every row of a dataset as pre-training would, and report coverage, lengths and corrupt rows.

    python processing/inspect_dataset.py --dataset data/shapeworld --split train
    python processing/inspect_dataset.py --dataset builtin --rows 500

Exit status 1 when more than `--max_bad_row_fraction` of the rows cannot be decoded.
"""

import argparse
import sys
from collections import Counter

import numpy as np
from tqdm.auto import tqdm

from modeling_opt_tri import OptTriProcessor
from modeling_opt_tri.data.collate import TriModalCollator
from modeling_opt_tri.data.decoding import CorruptSampleError
from modeling_opt_tri.training.pretrain import PretrainArguments, load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="builtin")
    parser.add_argument("--split", default="train")
    parser.add_argument("--rows", type=int, default=1000, help="rows of the built-in dataset")
    parser.add_argument("--preset", default="configuration/tiny", help="processor used for the lengths")
    parser.add_argument("--max_bad_row_fraction", type=float, default=0.1)
    args = parser.parse_args()
    data = load_split(PretrainArguments(dataset=args.dataset, train_split=args.split), args.split, args.rows)
    processor = OptTriProcessor.from_pretrained(args.preset)
    collator = TriModalCollator(processor)
    coverage: Counter[str] = Counter()
    problems: list[str] = []
    text_tokens, audio_seconds = [], []
    rows = 0
    for index, row in enumerate(tqdm(data, desc="decoding")):
        rows += 1
        try:
            text, image, audio = collator.decode_row(row, f"row {index}")
        except CorruptSampleError as error:
            problems.append(str(error))
            continue
        coverage["+".join(name for name, value in (("text", text), ("image", image), ("audio", audio)) if value is not None)] += 1
        if text is not None:
            text_tokens.append(len(processor.tokenizer(text)["input_ids"]))
        if audio is not None:
            audio_seconds.append(len(audio) / collator.sampling_rate)
    print(f"rows: {rows}, decodable: {rows - len(problems)}, corrupt: {len(problems)}")
    for combination, count in coverage.most_common():
        print(f"  {combination:<18} {count}")
    if text_tokens:
        print(f"text tokens: min {min(text_tokens)}, median {int(np.median(text_tokens))}, max {max(text_tokens)}")
    if audio_seconds:
        print(f"audio seconds: min {min(audio_seconds):.2f}, median {np.median(audio_seconds):.2f}, max {max(audio_seconds):.2f}")
    for problem in problems[:20]:
        print(f"  corrupt: {problem}")
    if rows and len(problems) / rows > args.max_bad_row_fraction:
        sys.exit(1)


if __name__ == "__main__":
    main()
