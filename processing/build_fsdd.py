"""Write the Free Spoken Digit Dataset as an audio-text folder whose validation split is speakers never trained on.

    python processing/build_fsdd.py --fsdd ../shared/data/fsdd --output_dir data/fsdd_digits --eval_speakers yweweler
    python examples/pretrain.py --preset configuration/tiny --dataset data/fsdd_digits --output_dir outputs/fsdd
    python examples/evaluate_retrieval.py --model outputs/fsdd/final --dataset data/fsdd_digits --match text

The text of a recording is its digit's name ("seven"); `--match text` makes the retrieval table class-level
(zero-shot digit recognition from speech, chance 10%). The recordings are linked, not copied.
"""

import argparse

from modeling_opt_tri.data.fsdd import HELD_OUT_SPEAKER, write_fsdd_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fsdd", required=True, help="the FSDD folder (holding recordings/*.wav)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--eval_speakers", default=HELD_OUT_SPEAKER, help="comma-separated speakers of the validation split")
    parser.add_argument("--takes", type=int, default=None, help="at most this many takes per digit and speaker")
    args = parser.parse_args()
    if args.takes is not None and args.takes < 1:
        parser.error(f"--takes must be >= 1, got {args.takes}")
    speakers = tuple(s.strip() for s in args.eval_speakers.split(",") if s.strip())
    try:
        counts = write_fsdd_folder(args.fsdd, args.output_dir, speakers, args.takes)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    print(f"{args.output_dir}: {counts['train']} training and {counts['validation']} validation recordings "
          f"(validation speakers: {', '.join(speakers)})")


if __name__ == "__main__":
    main()
