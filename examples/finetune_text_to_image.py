"""Fine-tune OPT-Tri for text-to-image generation (`OptTriForTextToImage`) on ShapeWorld or on your own captioned images.

    python examples/train_image_tokenizer.py --output_dir outputs/image_tokenizer
    python examples/finetune_text_to_image.py --image_tokenizer outputs/image_tokenizer --output_dir outputs/text2image
    python examples/finetune_text_to_image.py --model outputs/pretrain/final --image_tokenizer ... --output_dir ...
    python examples/finetune_text_to_image.py --image_tokenizer ... --dataset data/pairs.parquet --text_column caption \
        --image_column jpg --output_dir ...

`--dataset` is the built-in ShapeWorld dataset (default) or any source pre-training reads: a metadata folder, parquet /
arrow / `save_to_disk` data with `Image()` columns, WebDataset shards; its columns are named by `--text_column` /
`--image_column`, and rows that lack either or do not decode are skipped and counted. Its evaluation rows (its
validation split, or the rows held out of training by `--eval_holdout_fraction`, the rule of pre-training) are scored
by their code loss (`eval_loss` in `report.json`, with `eval_split`).

The targets are the codes of a trained image tokenizer (`OptTriImageVQModel`): every training image is encoded once,
before training, into its `grid x grid` codes, and the model learns them by teacher forcing (next-code cross-entropy)
conditioned on the caption. `--model` is an OPT-Tri checkpoint (a pre-training checkpoint loads its encoders and, when it fits
the tokenizer, the image decoder that DIR trained) or a preset folder such as `configuration/tiny` (random
initialisation). The image decoder config is set to the tokenizer's codebook and code grid when the folder's
disagrees.

By default scenes have one shape (`--max_shapes 1`), so each caption names one colour and the colour measurement of
`examples/evaluate_text_to_image.py` (run at the end, unless `--skip_eval`) is well defined.

It writes to `--output_dir`: the model and the processor (`save_pretrained`), `metrics.jsonl` (the training loss),
`color_report.json` and `generated_grid.png` (the evaluation) and `report.json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modeling_opt_tri.modeling_opt_tri import OptTriForTextToImage
from modeling_opt_tri.modeling_opt_tri_vq import OptTriImageVQModel
from modeling_opt_tri.training import text_to_code
from modeling_opt_tri.training.arguments import CheckedArgumentParser, string

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_text_to_image import evaluate  # noqa: E402  (the measurement script next to this one)


def build_parser() -> CheckedArgumentParser:
    parser = CheckedArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--image_tokenizer", required=True, rule=string(), help="trained OptTriImageVQModel folder")
    text_to_code.add_training_arguments(parser, default_model=str(REPO_ROOT / "configuration" / "tiny"),
                                        default_output_dir="outputs/text2image")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    tokenizer = OptTriImageVQModel.from_pretrained(args.image_tokenizer).eval()
    return text_to_code.run(args, OptTriForTextToImage, tokenizer, evaluate, image_tokenizer=tokenizer)


if __name__ == "__main__":
    main()
