"""Pre-train OPT-Tri with accelerate.

Single process (CPU or one GPU):
    python examples/pretrain.py --preset configuration/tiny --output_dir outputs/tiny
Several processes (DDP), mixed precision:
    accelerate launch --num_processes 2 examples/pretrain.py --preset configuration/base --mixed_precision bf16

Every flag is a field of `modeling_opt_tri.training.pretrain.PretrainArguments` (see --help).
"""

import sys

from transformers import HfArgumentParser

from modeling_opt_tri.training.pretrain import PretrainArguments, run_pretraining


def main(argv=None) -> None:
    (args,) = HfArgumentParser(PretrainArguments).parse_args_into_dataclasses(args=argv)
    run_pretraining(args)


if __name__ == "__main__":
    main(sys.argv[1:])
