"""Pre-train OPT-Tri with accelerate.

Single process (CPU or one GPU):
    python examples/pretrain.py --preset configuration/tiny --output_dir outputs/tiny
Several processes (DDP), mixed precision:
    accelerate launch --num_processes 2 examples/pretrain.py --preset configuration/base --mixed_precision bf16

Every flag is a field of `modeling_opt_tri.training.pretrain.PretrainArguments` (see --help); each bad value is refused
before any work starts.

SIGTERM or Ctrl-C (SIGINT) finishes the current optimizer step, writes a checkpoint and exits with status 128 + signal
(143 for SIGTERM, 130 for SIGINT: the run did not finish, so a scheduler may requeue it); the message names the
checkpoint, and `--resume_from_checkpoint latest` continues exactly. A second signal exits at once.
"""

import sys

from modeling_opt_tri.training.arguments import DataclassArgumentParser
from modeling_opt_tri.training.pretrain import PretrainArguments, TrainingInterrupted, run_pretraining


def main(argv=None) -> None:
    (args,) = DataclassArgumentParser(PretrainArguments).parse_args_into_dataclasses(args=argv)
    try:
        run_pretraining(args)
    except TrainingInterrupted as interrupted:
        print(interrupted, file=sys.stderr, flush=True)
        sys.exit(interrupted.exit_code)


if __name__ == "__main__":
    main(sys.argv[1:])
