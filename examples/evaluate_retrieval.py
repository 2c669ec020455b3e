"""Evaluate cross-modal retrieval (R@1/5/10, six directions) of an OPT-Tri checkpoint on a held-out split.

    python examples/evaluate_retrieval.py --model outputs/tiny/final
    python examples/evaluate_retrieval.py --model outputs/tiny/final --rerank 10   # also re-rank the top 10 by ITM
"""

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint folder (save_pretrained output)")
    parser.add_argument("--dataset", default="builtin", help="'builtin', a metadata.jsonl folder or a dataset name")
    parser.add_argument("--split", "--eval_split", default="validation")
    parser.add_argument("--eval_holdout_fraction", type=float, default=0.0,
                        help="for data without --split: evaluate on the rows pre-training held out with this fraction "
                             "(the same fraction and --seed as pre-training)")
    parser.add_argument("--eval_rows", type=int, default=200, help="rows of the built-in dataset")
    parser.add_argument("--seed", type=int, default=42, help="seed of the built-in dataset (as in pre-training)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--rerank", type=int, default=0, metavar="K",
                        help="also report R@K after re-ranking each query's top K by the ITM cross-encoder (0: off)")
    parser.add_argument("--rerank_similarity_weight", type=float, default=1.0,
                        help="re-ranking score = ITM log matching probability + this x the dual encoder's logit "
                             "(0: the ITM head alone)")
    parser.add_argument("--match", choices=["row", "text"], default="row",
                        help="'row': a query's own row is its match; 'text': any row with the same text matches "
                             "(class-level, e.g. spoken digits with the digit's name as text; not with --rerank)")
    parser.add_argument("--output_json", default=None,
                        help="also write the tables as JSON here ({'split', 'dual', 'reranked'})")
    args = parser.parse_args()
    if args.rerank < 0:
        parser.error(f"--rerank must be 0 (off) or a positive shortlist size, got {args.rerank}")
    if not args.rerank_similarity_weight >= 0:
        parser.error(f"--rerank_similarity_weight must be a number >= 0, got {args.rerank_similarity_weight}")
    if args.rerank and args.match != "row":
        parser.error("--rerank scores each query's own row: use it with --match row")
    if not 0 <= args.eval_holdout_fraction < 1:
        parser.error(f"--eval_holdout_fraction must be a number >= 0 and < 1, got {args.eval_holdout_fraction}")
    if not os.path.isdir(args.model):
        parser.error(f"--model {args.model!r}: no such checkpoint folder (a save_pretrained output)")
    # imported after the arguments are checked, so that a mistyped flag fails in a fraction of a second
    from modeling_opt_tri import OptTriForRetrieval, OptTriModel, OptTriProcessor
    from modeling_opt_tri.data.sources import NoEvaluationSplitError
    from modeling_opt_tri.training.pretrain import PretrainArguments, evaluate_retrieval, plan_data

    from transformers.utils import logging as hf_logging

    settings = PretrainArguments(dataset=args.dataset, eval_split=args.split, eval_rows=args.eval_rows, seed=args.seed,
                                 eval_batch_size=args.batch_size, eval_holdout_fraction=args.eval_holdout_fraction)
    try:
        plan = plan_data(settings)  # which rows to read: a source without the split needs --eval_holdout_fraction
    except (NoEvaluationSplitError, ValueError) as error:
        parser.error(str(error))
    hf_logging.set_verbosity_error()  # a pre-training checkpoint's heads are unused here; no need to list them
    # with --rerank, one retrieval model (its ITM head loads from a pre-training checkpoint) serves both tables
    model = (OptTriForRetrieval if args.rerank else OptTriModel).from_pretrained(args.model).eval()
    processor = OptTriProcessor.from_pretrained(args.model)
    tables = {"split": plan.name(), "dual": evaluate_retrieval(model, processor, settings, plan, args.match), "reranked": None}
    if args.rerank:
        import torch

        from modeling_opt_tri.data.collate import TriModalCollator
        from modeling_opt_tri.training.evaluation import (
            direction_sizes,
            encode_for_reranking,
            format_retrieval_table,
            reranked_retrieval_metrics,
        )
        from modeling_opt_tri.training.pretrain import load_evaluation_rows

        data = load_evaluation_rows(settings, plan)  # the rows the table above was computed on
        loader = torch.utils.data.DataLoader(
            list(data), batch_size=args.batch_size, collate_fn=TriModalCollator(processor)
        )
        encoded = encode_for_reranking(model, loader)
        results = reranked_retrieval_metrics(
            model, encoded, top_k=args.rerank, similarity_weight=args.rerank_similarity_weight
        )
        table = format_retrieval_table(results, direction_sizes(encoded))
        how = f"ITM + {args.rerank_similarity_weight:g} x dual logit" if args.rerank_similarity_weight else "ITM alone"
        print(table.replace("Retrieval on", f"After re-ranking the top {args.rerank} ({how}): retrieval on", 1))
        tables["reranked"] = results
    if args.output_json:
        import json

        with open(args.output_json, "w") as handle:
            json.dump(tables, handle, indent=1)


if __name__ == "__main__":
    main()
