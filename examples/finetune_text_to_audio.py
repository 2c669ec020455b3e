"""Fine-tune OPT-Tri for text-to-audio generation (`OptTriForTextToAudio`) on ShapeWorld or on your own captioned clips.

    python examples/train_audio_tokenizer.py --output_dir outputs/audio_tokenizer
    python examples/finetune_text_to_audio.py --audio_tokenizer outputs/audio_tokenizer --output_dir outputs/text2audio
    python examples/finetune_text_to_audio.py --model outputs/pretrain/final --audio_tokenizer ... --output_dir ...
    python examples/finetune_text_to_audio.py --audio_tokenizer ... --dataset data/pairs.parquet --text_column caption \
        --audio_column wav --output_dir ...

`--dataset` is the built-in ShapeWorld dataset (default) or any source pre-training reads: a metadata folder, parquet /
arrow / `save_to_disk` data with `Audio()` columns, WebDataset shards; its columns are named by `--text_column` /
`--audio_column`, and rows that lack either or do not decode are skipped and counted. Its evaluation rows (its
validation split, or the rows held out of training by `--eval_holdout_fraction`, the rule of pre-training) are scored
by their code loss (`eval_loss` in `report.json`, with `eval_split`).

The targets are the codes of a trained audio tokenizer (`OptTriAudioVQModel`, one code per `frames_per_code` log-mel
frames): every training clip is encoded once, before training, and the model learns its codes and then the end code
by teacher forcing (next-code cross-entropy) conditioned on the caption. `--model` is an OPT-Tri checkpoint (a
pre-training checkpoint loads its encoders and, when it matches the tokenizer, the audio decoder that DAR trained) or
a preset folder such as `configuration/tiny` (random initialisation). The audio decoder config is resized to the
tokenizer's codebook when the folder's disagrees.

By default scenes have one shape (`--max_shapes 1`), so each caption names one colour (one pitch) and the measurement
of `examples/evaluate_text_to_audio.py` (run at the end, unless `--skip_eval`) is well defined.

It writes to `--output_dir`: the model and the processor (`save_pretrained`), `metrics.jsonl` (the training loss),
`pitch_report.json` and `generated_<colour>.wav` (the evaluation) and `report.json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modeling_opt_tri.modeling_opt_tri import OptTriForTextToAudio
from modeling_opt_tri.modeling_opt_tri_vq import OptTriAudioVQModel
from modeling_opt_tri.training import text_to_code
from modeling_opt_tri.training.arguments import CheckedArgumentParser, string

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_text_to_audio import evaluate  # noqa: E402  (the measurement script next to this one)


def build_parser() -> CheckedArgumentParser:
    parser = CheckedArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--audio_tokenizer", required=True, rule=string(), help="trained OptTriAudioVQModel folder")
    text_to_code.add_training_arguments(parser, default_model=str(REPO_ROOT / "configuration" / "tiny"),
                                        default_output_dir="outputs/text2audio")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    tokenizer = OptTriAudioVQModel.from_pretrained(args.audio_tokenizer).eval()
    return text_to_code.run(args, OptTriForTextToAudio, tokenizer, evaluate, audio_tokenizer=tokenizer)


if __name__ == "__main__":
    main()
