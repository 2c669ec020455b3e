"""Fine-tune OPT-Tri for cross-modal retrieval (any pair of modalities) with the HF Trainer.

    python examples/finetune_retrieval.py --model outputs/tiny/final --output_dir outputs/ret --query text --gallery image
    python examples/finetune_retrieval.py --model configuration/tiny --output_dir outputs/ret-ia --query image --gallery audio

Training minimises the symmetric contrastive loss of the dual encoder plus (`--itm_loss_weight`) the matching loss of
the cross-encoder on hard negatives, as UNITER/ALBEF fine-tune for retrieval. The evaluation embeds the held-out split
and reports R@1/5/10, mean and median rank (our offline `recall_at_k` metric) in both directions, first from the
dual-encoder similarities, then after re-ranking each query's top `--rerank_top_k` candidates with the ITM head.

ShapeWorld repeats captions (e.g. "a red circle"), so a gallery item whose caption is the query's caption (up to case
and a final period) also counts as correct; `strict` results count only the paired item.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Trainer

from modeling_opt_tri import OptTriProcessor
from modeling_opt_tri.metrics import load_metric, rank_gallery
from modeling_opt_tri.modeling_opt_tri import OptTriForRetrieval
from modeling_opt_tri.training.arguments import CheckedArgumentParser, choice, integer, number
from modeling_opt_tri.training.finetune import (
    TaskCollator,
    add_finetune_arguments,
    load_model,
    load_train_and_evaluation,
    prepare_for_training,
    save_and_push,
    training_arguments,
)

INPUT_KEYS = {
    "text": ("input_ids", "attention_mask", "token_type_ids"),
    "image": ("pixel_values",),
    "audio": ("input_features", "audio_attention_mask"),
}


def _inputs(batch: dict, modality: str) -> dict:
    return {k: batch[k] for k in INPUT_KEYS[modality] if k in batch}


@torch.no_grad()
def embed(model, collator, dataset, modality: str, batch_size: int) -> torch.Tensor:
    rows = range(len(dataset))
    embeds = []
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in rows[start : start + batch_size]])
        embeds.append(model.encode(modality, _inputs(batch, modality))[0])
    return torch.cat(embeds)


def positives(dataset, strict: bool) -> list[list[int]]:
    """Correct gallery items of each query: itself, and (not strict) the items with the same caption."""
    if strict or "text" not in dataset.column_names:
        return [[i] for i in range(len(dataset))]
    keys = [(t or "").lower().strip().rstrip(".").strip() + f"#{i}" * (not t) for i, t in enumerate(dataset["text"])]
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return [groups[key] for key in keys]


@torch.no_grad()
def reranked_rankings(model, collator, dataset, query: str, gallery: str, top_k: int, batch_size: int) -> list[list[int]]:
    """Full rankings: each query's top-k reordered by the ITM head, then the rest by similarity."""
    everything = collator([dataset[i] for i in range(len(dataset))])
    candidates = _inputs(everything, gallery)
    rankings = []
    for start in range(0, len(dataset), batch_size):
        queries = {k: v[start : start + batch_size] for k, v in _inputs(everything, query).items()}
        out = model.rerank(queries, candidates, query_modality=query, candidate_modality=gallery, top_k=top_k)
        order = out.similarity.argsort(dim=1, descending=True, stable=True)
        for head, full in zip(out.indices.tolist(), order.tolist()):
            shortlisted = set(head)
            rankings.append(head + [j for j in full if j not in shortlisted])
    return rankings


def evaluate_retrieval(model, processor, dataset, query: str, gallery: str, top_k: int, batch_size: int = 64) -> dict:
    model.eval()
    collator = TaskCollator(processor, [query, gallery])
    q = embed(model, collator, dataset, query, batch_size)
    g = embed(model, collator, dataset, gallery, batch_size)
    similarity = q @ g.t()
    metric = load_metric("recall_at_k")
    results: dict[str, dict] = {}
    for strict in (False, True):
        correct = positives(dataset, strict)
        suffix = " (strict)" if strict else ""
        for name, matrix in ((f"{query}->{gallery}", similarity), (f"{gallery}->{query}", similarity.t())):
            results[name + suffix] = metric.compute(predictions=rank_gallery(matrix), references=correct, ks=[1, 5, 10])
        if top_k > 1:
            for name, (a, b) in ((f"{query}->{gallery}", (query, gallery)), (f"{gallery}->{query}", (gallery, query))):
                ranking = reranked_rankings(model, collator, dataset, a, b, top_k, batch_size)
                results[f"{name} reranked top-{top_k}{suffix}"] = metric.compute(
                    predictions=ranking, references=correct, ks=[1, 5, 10]
                )
    return results


def build_parser() -> CheckedArgumentParser:
    parser = CheckedArgumentParser(description=__doc__.splitlines()[0])
    add_finetune_arguments(parser, lr=2e-4)
    parser.add_argument("--query", choices=sorted(INPUT_KEYS), default="text", rule=choice(*sorted(INPUT_KEYS)))
    parser.add_argument("--gallery", choices=sorted(INPUT_KEYS), default="image", rule=choice(*sorted(INPUT_KEYS)))
    parser.add_argument("--itm_loss_weight", type=float, default=1.0, rule=number(0.0),
                        help="0 trains the dual encoder only")
    parser.add_argument("--rerank_top_k", type=int, default=10, rule=integer(0),
                        help="re-rank the top k with the ITM head (0: off)")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.query == args.gallery:
        parser.error("--query and --gallery must be different modalities")

    processor = OptTriProcessor.from_pretrained(args.model)
    train, held_out, eval_split = load_train_and_evaluation(args)  # --dataset, its columns and held-out rows
    collator = TaskCollator(
        processor, [args.query, args.gallery],
        extra={"query_modality": args.query, "gallery_modality": args.gallery, "return_loss": True,
               "itm_loss_weight": args.itm_loss_weight},
    )
    model = load_model(OptTriForRetrieval, args.model, args.seed)
    projections = ["itm_head", *(f"{m}_projection" for m in (args.query, args.gallery))]
    model, optimizer = prepare_for_training(model, args, head_modules=projections)
    trainer = Trainer(
        model=model, args=training_arguments(args, label_names=[], dataloader_drop_last=True), train_dataset=train,
        data_collator=collator, optimizers=(optimizer, None),
    )
    trainer.train()
    model = save_and_push(trainer.model, processor, args.output_dir, args.push_to_hub)
    results = evaluate_retrieval(model, processor, held_out, args.query, args.gallery, args.rerank_top_k)
    width = max(len(k) for k in results)
    print(f"{'direction':<{width}}  R@1    R@5    R@10   mean rank  median rank   ({len(held_out)} rows of {eval_split})")
    for name, r in results.items():
        print(f"{name:<{width}}  {r['R@1']:.3f}  {r['R@5']:.3f}  {r['R@10']:.3f}  {r['mean_rank']:9.1f}  {r['median_rank']:11.1f}")
    (Path(args.output_dir) / "retrieval_metrics.json").write_text(json.dumps({"eval_split": eval_split, **results}, indent=1))


if __name__ == "__main__":
    main()
