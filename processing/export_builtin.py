"""Write the built-in ShapeWorld dataset as a `metadata.jsonl` folder of PNG and WAV files (train/validation/test).

    python processing/export_builtin.py --out data/shapeworld --train 2000 --validation 200 --test 200

The folder loads with `--dataset data/shapeworld` in every example, or with
`modeling_opt_tri.data.load_metadata_folder_dict`. `--missing_probability` drops modalities at random per row, to
exercise rows with missing text, image or audio.
"""

import argparse

from modeling_opt_tri.data import export_synthetic_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--validation", type=int, default=200)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--sampling_rate", type=int, default=16000)
    parser.add_argument("--missing_probability", type=float, default=0.0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    for split, rows in (("train", args.train), ("validation", args.validation), ("test", args.test)):
        if rows > 0:
            path = export_synthetic_folder(
                f"{args.out}/{split}", rows, seed=args.seed, split=split, image_size=args.image_size,
                sampling_rate=args.sampling_rate, missing_probability=args.missing_probability, overwrite=args.overwrite,
            )
            print(f"{split}: {rows} rows -> {path}")


if __name__ == "__main__":
    main()
