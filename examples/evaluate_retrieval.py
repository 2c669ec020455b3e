"""Evaluate cross-modal retrieval (R@1/5/10, six directions) of an OPT-Tri checkpoint on a held-out split.

    python examples/evaluate_retrieval.py --model outputs/tiny/final
"""

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder (save_pretrained output)")
    parser.add_argument("--dataset", default="builtin", help="'builtin', a metadata.jsonl folder or a dataset name")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--eval_rows", type=int, default=200, help="rows of the built-in dataset")
    parser.add_argument("--seed", type=int, default=42, help="seed of the built-in dataset (as in pre-training)")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()
    if not os.path.isdir(args.model):
        parser.error(f"--model {args.model!r}: no such checkpoint folder (a save_pretrained output)")
    # imported after the arguments are checked, so that a mistyped flag fails in a fraction of a second
    from modeling_opt_tri import OptTriModel, OptTriProcessor
    from modeling_opt_tri.training.pretrain import PretrainArguments, evaluate_retrieval

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # a pre-training checkpoint's heads are unused here; no need to list them
    model = OptTriModel.from_pretrained(args.model).eval()
    processor = OptTriProcessor.from_pretrained(args.model)
    settings = PretrainArguments(dataset=args.dataset, eval_split=args.split, eval_rows=args.eval_rows, seed=args.seed,
                                 eval_batch_size=args.batch_size)
    evaluate_retrieval(model, processor, settings)


if __name__ == "__main__":
    main()
