"""Diagnose the multi-task recipe: how each pre-training objective shares the gradient of the shared towers.

For each model given (a `save_pretrained` folder, a training checkpoint folder, or `init` for the preset's random
initialisation) and a few batches of the built-in training data, this prints:

- per objective and per parameter group (text / vision / audio towers, cross-modal encoder, projections, heads):
  the norm of the objective's weighted gradient, its share of the sum of norms, and its cosine with the contrastive
  gradient (negative: the objective pulls the tower against the contrastive alignment);
- the global gradient norm of the weighted sum, the factor that clipping to `--max_grad_norm` applies, and the
  contrastive update after clipping in the full recipe against contrastive alone;
- how many rows of a batch each modality pair has in the contrastive and matching losses (they read the clean
  views, so modality-level masking does not remove rows there);
- the ITM negatives: how often a sampled negative is a *false* negative (same colour, shape and count as the
  positive), for hard (softmax over the similarities) and uniform sampling, and the ITM head's error rate on true
  pairs, true negatives and false negatives.

    python benchmarks/diagnose_objectives.py --preset configuration/tiny --models init outputs/tiny/checkpoint-500 \
        outputs/tiny/final --batches 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

GROUPS = {
    "text": ("opt_tri.text_model.",),
    "vision": ("opt_tri.vision_model.",),
    "audio": ("opt_tri.audio_model.",),
    "cross-modal": ("opt_tri.fusion_", "opt_tri.text_to_fusion", "opt_tri.image_to_fusion", "opt_tri.audio_to_fusion",
                    "opt_tri.modality_embeddings"),
    "projections": ("opt_tri.text_projection", "opt_tri.image_projection", "opt_tri.audio_projection",
                    "opt_tri.logit_scale"),
}
PAIRS = (("text", "image"), ("text", "audio"), ("image", "audio"))


def group_of(name: str) -> str:
    """The parameter group of a parameter name (`heads` for the pre-training heads and decoders)."""
    return next((group for group, prefixes in GROUPS.items() if name.startswith(prefixes)), "heads")


def load_model(spec: str, preset: str):
    """`init` (the preset's random initialisation, seed 0), a `save_pretrained` folder, or a training checkpoint
    folder (`model.safetensors`, with the preset's config)."""
    from safetensors.torch import load_file

    from modeling_opt_tri import OptTriConfig, OptTriForPreTraining

    if spec == "init":
        torch.manual_seed(0)
        return OptTriForPreTraining(OptTriConfig.from_pretrained(preset))
    folder = Path(spec)
    if (folder / "config.json").is_file():
        return OptTriForPreTraining.from_pretrained(folder)
    model = OptTriForPreTraining(OptTriConfig.from_pretrained(preset))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model


def objective_gradients(model, batch: dict, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Per objective with a positive weight: the flattened weighted gradient of each parameter group."""
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    out = model(**batch, generator=generator)
    grads = {}
    for name, weight in model.config.objectives.items():
        loss = getattr(out, f"{name}_loss", None)
        if weight <= 0 or loss is None:
            continue
        values = torch.autograd.grad(weight * loss, [p for _, p in params], retain_graph=True, allow_unused=True)
        by_group: dict[str, list[torch.Tensor]] = {}
        for (param_name, p), g in zip(params, values):
            g = torch.zeros_like(p) if g is None else g
            by_group.setdefault(group_of(param_name), []).append(g.flatten())
        grads[name] = {group: torch.cat(parts) for group, parts in by_group.items()}
    return grads


def gradient_report(grads: dict[str, dict[str, torch.Tensor]], max_grad_norm: float) -> dict:
    """Norms, shares, cosines with the contrastive gradient, and the clipping figures of one batch."""
    found = {g for per in grads.values() for g in per}
    groups = [g for g in (*GROUPS, "heads") if g in found]
    norms = {obj: {g: float(per[g].norm()) for g in groups} for obj, per in grads.items()}
    report = {"norm": norms, "share": {}, "cos_contrastive": {}}
    for g in groups:
        total = sum(norms[obj][g] for obj in grads) or 1.0
        for obj in grads:
            report["share"].setdefault(obj, {})[g] = norms[obj][g] / total
            if "contrastive" in grads:
                c = grads["contrastive"][g]
                denominator = float(c.norm() * grads[obj][g].norm()) or 1.0
                report["cos_contrastive"].setdefault(obj, {})[g] = float(c @ grads[obj][g]) / denominator
    summed = torch.cat([sum(grads[obj][g] for obj in grads) for g in groups])
    total_norm = float(summed.norm())
    clip = min(1.0, max_grad_norm / total_norm) if max_grad_norm and total_norm > 0 else 1.0
    report["total_norm"], report["clip_factor"] = total_norm, clip
    if "contrastive" in grads:
        alone = float(torch.cat([grads["contrastive"][g] for g in groups]).norm())
        alone_clipped = min(alone, max_grad_norm) if max_grad_norm else alone
        report["contrastive_update_full"], report["contrastive_update_alone"] = clip * alone, alone_clipped
    return report


@torch.no_grad()
def itm_negatives_report(model, batch: dict, attributes: list[tuple], seed: int) -> dict:
    """False negatives among sampled text-image ITM negatives (hard vs uniform) and the ITM head's error rates."""
    from modeling_opt_tri.modeling_opt_tri_losses import clamped_logit_scale, sample_itm_negatives

    base = model.opt_tri
    text = base.get_text_features(batch["input_ids"], batch["attention_mask"])
    image = base.get_image_features(batch["pixel_values"])
    logits = text.pooler_output @ image.pooler_output.t() * clamped_logit_scale(base.logit_scale)
    same = torch.tensor([[a == b for b in attributes] for a in attributes])
    parts = {
        "text": (text.last_hidden_state, batch["attention_mask"].long()),
        "image": (image.last_hidden_state, torch.ones(image.last_hidden_state.shape[:2], dtype=torch.long)),
    }
    rows = torch.arange(len(attributes))
    report = {}
    for kind, fraction in (("hard", 1.0), ("uniform", 0.0)):
        _, neg_image = sample_itm_negatives(logits, fraction, torch.Generator().manual_seed(seed))
        false = same[rows, neg_image]
        report[f"false_negative_rate_{kind}"] = float(false.float().mean())
        if kind == "hard":
            match = lambda idx: model.itm_head(  # noqa: E731
                base.fuse_selected(parts["text"], (parts["image"][0][idx], parts["image"][1][idx]), None)[0][:, 0]
            ).softmax(-1)[:, 1]
            positive, negative = match(rows), match(neg_image)
            report["itm_error_true_pairs"] = float((positive < 0.5).float().mean())
            true_negative = ~false
            report["itm_error_true_negatives"] = float((negative[true_negative] >= 0.5).float().mean()) if true_negative.any() else None
            report["itm_error_false_negatives"] = float((negative[false] >= 0.5).float().mean()) if false.any() else None
    return report


def batches(processor, num_batches: int, batch_size: int, seed: int):
    """Collated batches of the built-in training split, with each row's (colour, shape, count)."""
    from modeling_opt_tri.data.collate import TriModalCollator
    from modeling_opt_tri.data.synthetic import build_synthetic_dataset

    rows = list(build_synthetic_dataset(num_batches * batch_size, seed=seed, split="train"))
    collate = TriModalCollator(processor)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = collate(chunk)
        yield {k: v for k, v in batch.items() if torch.is_tensor(v)}, [(r["color"], r["shape"], r["count"]) for r in chunk]


def pair_presence(batch: dict) -> dict[str, int]:
    """Rows of the batch with both modalities of each pair (what contrastive / ITM can use)."""
    present = {
        "text": batch["attention_mask"].bool().any(1) if "input_ids" in batch else None,
        "image": batch["image_mask"].bool() if "pixel_values" in batch else None,
        "audio": batch["audio_attention_mask"].bool().any(1) if "input_features" in batch else None,
    }
    return {f"{a}-{b}": int((present[a] & present[b]).sum()) if present[a] is not None and present[b] is not None else 0
            for a, b in PAIRS}


def mean_of(reports: list[dict]) -> dict:
    """The element-wise mean of nested dicts of numbers (None where any is None)."""
    first = reports[0]
    if isinstance(first, dict):
        return {key: mean_of([r[key] for r in reports]) for key in first}
    if any(r is None for r in reports):
        return None
    return sum(reports) / len(reports)


def diagnose(spec: str, args) -> dict:
    from modeling_opt_tri import OptTriProcessor

    model = load_model(spec, args.preset).train()
    processor = OptTriProcessor.from_pretrained(args.preset if spec == "init" or not (Path(spec) / "config.json").is_file() else spec)
    gradient, itm, presence = [], [], []
    for i, (batch, attributes) in enumerate(batches(processor, args.batches, args.batch_size, args.seed)):
        gradient.append(gradient_report(objective_gradients(model, batch, args.seed + i), args.max_grad_norm))
        model.eval()
        itm.append(itm_negatives_report(model, batch, attributes, args.seed + i))
        model.train()
        presence.append(pair_presence(batch))
    return {"gradients": mean_of(gradient), "itm": mean_of(itm), "pair_rows": mean_of(presence)}


def print_report(spec: str, report: dict) -> None:
    g = report["gradients"]
    groups = list(next(iter(g["norm"].values())))
    print(f"\n== {spec} ==")
    print("objective        " + "".join(f"{group:>24}" for group in groups))
    for obj in g["norm"]:
        cells = []
        for group in groups:
            cos = g["cos_contrastive"].get(obj, {}).get(group)
            cells.append(f"{g['norm'][obj][group]:8.3f} {100 * g['share'][obj][group]:5.1f}% {cos if cos is not None else float('nan'):+5.2f}")
        print(f"{obj:<17}" + "".join(f"{c:>24}" for c in cells))
    print("(each cell: gradient norm, share of the group's summed norms, cosine with the contrastive gradient)")
    print(f"global norm {g['total_norm']:.3f}, clip factor {g['clip_factor']:.3f}; contrastive update after clipping: "
          f"{g.get('contrastive_update_full', float('nan')):.3f} in the full recipe, "
          f"{g.get('contrastive_update_alone', float('nan')):.3f} alone")
    print("rows per batch with both modalities:", report["pair_rows"])
    print("ITM (text-image):", {k: (round(v, 3) if v is not None else None) for k, v in report["itm"].items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["init"], help="'init', save_pretrained or checkpoint folders")
    parser.add_argument("--preset", default="configuration/tiny", help="config and processor for 'init' and checkpoints")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="as in pre-training (0: no clipping)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", help="also write the figures as JSON here")
    args = parser.parse_args()
    if args.batches < 1 or args.batch_size < 2:
        parser.error("--batches must be >= 1 and --batch_size >= 2")
    for spec in args.models:
        if spec != "init" and not Path(spec).is_dir():
            parser.error(f"--models {spec!r}: not 'init' and not a folder")
    results = {}
    for spec in args.models:
        results[spec] = diagnose(spec, args)
        print_report(spec, results[spec])
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
