"""Train a WordPiece tokenizer on the text of a dataset, for `examples/pretrain.py --tokenizer`.

    python processing/build_tokenizer.py --dataset data/shapeworld --vocab_size 8000 --output_dir data/tokenizer

`--dataset` takes what pre-training takes (a folder, parquet files or WebDataset shards, a mixture `a=0.5,b=0.5`,
the column flags, `--streaming`). The training split is read (rows held out by `--eval_holdout_fraction`
excluded, so the tokenizer never sees evaluation text), and the `[UNK]` share of the new tokenizer is printed.
"""

import argparse
from itertools import islice

from modeling_opt_tri.tokenizer_training import build_wordpiece_tokenizer, unk_share
from modeling_opt_tri.training.pretrain import PretrainArguments, load_split


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--output_dir", required=True, help="where the tokenizer is saved")
    parser.add_argument("--vocab_size", type=int, default=8192, help="largest vocabulary, special tokens included")
    parser.add_argument("--min_frequency", type=int, default=1)
    parser.add_argument("--model_max_length", type=int, default=64, help="longest text, [CLS] and [SEP] included")
    parser.add_argument("--max_texts", type=int, default=1_000_000, help="texts read at most")
    for flag in ("dataset_config", "text_column", "image_column", "audio_column"):
        parser.add_argument(f"--{flag}", default=None)
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--eval_holdout_fraction", type=float, default=0.0)
    parser.add_argument("--streaming", action="store_true")
    args = parser.parse_args(argv)
    data_args = PretrainArguments(**{k: getattr(args, k) for k in (
        "dataset", "dataset_config", "text_column", "image_column", "audio_column", "train_split",
        "eval_holdout_fraction", "streaming")})
    data = load_split(data_args, args.train_split, num_rows=args.max_texts)
    texts = [row.get("text") for row in islice(iter(data), args.max_texts)]
    texts = [text for text in texts if isinstance(text, str) and text.strip()]
    if not texts:
        raise SystemExit(f"--dataset {args.dataset!r}: no text in split {args.train_split!r} (is --text_column right?)")
    tokenizer = build_wordpiece_tokenizer(texts, args.vocab_size, args.min_frequency, args.model_max_length,
                                          save_directory=args.output_dir)
    share, words = unk_share(tokenizer, texts)
    print(f"trained on {len(texts)} texts: {len(tokenizer)} tokens, [UNK] share {100 * share:.2f}%"
          + (f" (e.g. {words})" if words else "") + f"; saved to {args.output_dir}")


if __name__ == "__main__":
    main()
