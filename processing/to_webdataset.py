"""Write a dataset (a metadata folder, a `save_to_disk` folder, parquet files, ...) as WebDataset tar shards.

    python processing/to_webdataset.py --dataset data/shapeworld --output_dir data/shards --rows_per_shard 500

Every split of the dataset is written (`train-00000.tar`, `validation-00000.tar`, ...), the image and audio files as
they are stored (no re-encoding). `--dataset` takes the column flags of pre-training (`--text_column caption` ...).
Pre-train on the shards with `examples/pretrain.py --dataset data/shards --streaming true`.
"""

import argparse

from modeling_opt_tri.data.sources import conform, load_raw_split, parse_sources, split_names
from modeling_opt_tri.data.writers import write_webdataset


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="a folder, file or dataset name (one source)")
    parser.add_argument("--dataset_config", default=None)
    parser.add_argument("--text_column", default=None)
    parser.add_argument("--image_column", default=None)
    parser.add_argument("--audio_column", default=None)
    parser.add_argument("--splits", default=None, help="comma-separated splits to write (default: all)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--overwrite", action="store_true")


def splits_to_write(args: argparse.Namespace):
    """Yield `(split, conformed rows)` for every split of the one source `--dataset`."""
    sources = parse_sources(args.dataset, args.text_column, args.image_column, args.audio_column)
    if len(sources) != 1 or sources[0].path == "builtin":
        raise SystemExit("--dataset must be one folder, file or dataset name (export 'builtin' with export_builtin.py)")
    source = sources[0]
    splits = args.splits.split(",") if args.splits else split_names(source, args.dataset_config)
    for split in splits:
        data = load_raw_split(source, split, streaming=False, dataset_config=args.dataset_config)
        yield split, conform(data, source, mixture=True).remove_columns("source")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_arguments(parser)
    parser.add_argument("--rows_per_shard", type=int, default=1000)
    args = parser.parse_args()
    for split, data in splits_to_write(args):
        shards = write_webdataset(data, args.output_dir, split, args.rows_per_shard, args.overwrite)
        print(f"{split}: {len(data)} rows -> {len(shards)} shards in {args.output_dir}")


if __name__ == "__main__":
    main()
