"""Write a dataset (a metadata folder, a `save_to_disk` folder, WebDataset shards, ...) as parquet files with
`datasets.Image()` and `datasets.Audio()` columns.

    python processing/to_parquet.py --dataset data/shapeworld --output_dir data/parquet

Every split is written (`train-00000.parquet`, ...), the image and audio files stored as they are. The folder loads
with `datasets.load_dataset("data/parquet")` and pre-trains with `examples/pretrain.py --dataset data/parquet`.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from to_webdataset import add_dataset_arguments, splits_to_write  # noqa: E402

from modeling_opt_tri.data.writers import write_parquet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_arguments(parser)
    parser.add_argument("--rows_per_file", type=int, default=10000)
    args = parser.parse_args()
    for split, data in splits_to_write(args):
        files = write_parquet(data, args.output_dir, split, args.rows_per_file, args.overwrite)
        print(f"{split}: {len(data)} rows -> {len(files)} parquet files in {args.output_dir}")


if __name__ == "__main__":
    main()
