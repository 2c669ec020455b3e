"""Ablate the pre-training recipe: the default objective set against itself with one objective family removed.

Each variant pre-trains with the same preset, data, seed and steps (`examples/pretrain.py`), is evaluated by
`examples/evaluate_retrieval.py` (dual-encoder R@1 and R@1 after ITM re-ranking of the top `--rerank`), and, unless
`--finetune none`, fine-tuned briefly for VQA (`examples/finetune_vqa.py`) and captioning
(`examples/finetune_captioning.py`). One table is printed and written to `<output_dir>/ablation.json`.

    python benchmarks/ablation.py --output_dir outputs/ablation --max_steps 1000
    python benchmarks/ablation.py --output_dir outputs/ablation_fsdd --dataset my_speech_parquet --finetune none \
        --eval_holdout_fraction 0.2

`--equal_time` also re-runs every variant with as many steps as the default recipe's wall time buys it (from the
equal-step runs' median samples/s), so a cheaper recipe is compared at the same cost.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a clone without installing: the package next to this folder

from modeling_opt_tri.modeling_opt_tri_phases import (  # noqa: E402 (the objective levels the model runs)
    RECONSTRUCTION_OBJECTIVES,
    SAMPLE_OBJECTIVES,
    TOKEN_OBJECTIVES,
)

FAMILIES = {
    "token-level": tuple(name for names in TOKEN_OBJECTIVES.values() for name in names),
    "modality-level": tuple(RECONSTRUCTION_OBJECTIVES.values()),
    "sample-level": tuple(SAMPLE_OBJECTIVES),
}
VARIANTS = ("default", "no_token_level", "no_modality_level", "no_sample_level", "contrastive_only")


def variant_objectives(default: dict[str, float], variant: str) -> dict[str, float]:
    """The positive objective weights of `variant`, derived from the default recipe's weights."""
    active = {name: weight for name, weight in default.items() if weight > 0}
    unplaced = sorted(set(active) - {name for names in FAMILIES.values() for name in names})
    if unplaced:
        raise ValueError(f"objectives {unplaced} belong to no family of {sorted(FAMILIES)}: the ablation cannot remove them")
    if variant == "default":
        return active
    if variant == "contrastive_only":
        return {"contrastive": active.get("contrastive", 1.0)}
    family = variant.removeprefix("no_").replace("_", "-")
    if family not in FAMILIES:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    return {name: weight for name, weight in active.items() if name not in FAMILIES[family]}


def run(command: list[str], log: Path) -> float:
    """Run a script of ours, its output to `log`; returns the wall time. A failure names the log."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(command[:3])} ... failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - start


def mean_r1(table: dict | None) -> float | None:
    """Mean R@1 over the directions of a retrieval table (those the data has)."""
    return sum(v["R@1"] for v in table.values()) / len(table) if table else None


def train_and_evaluate(variant: str, objectives: dict[str, float], steps: int, folder: Path, args) -> dict:
    """Pre-train one variant, evaluate its retrieval, and fine-tune it briefly; the row of the table."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = ",".join(f"{name}={weight:g}" for name, weight in objectives.items())
    pretrain = [sys.executable, "examples/pretrain.py", "--preset", args.preset, "--dataset", args.dataset,
                "--output_dir", str(folder), "--max_steps", str(steps), "--seed", str(args.seed),
                "--objectives", weights, "--evaluate", "false", "--eval_holdout_fraction", str(args.eval_holdout_fraction),
                *shlex.split(args.pretrain_args)]
    seconds = run(pretrain, folder / "pretrain.log")
    summary = json.loads((folder / "summary.json").read_text())
    rerank = args.rerank if objectives.get("itm", 0) > 0 else 0  # without ITM training there is no re-ranker
    evaluate = [sys.executable, "examples/evaluate_retrieval.py", "--model", str(folder / "final"),
                "--dataset", args.dataset, "--seed", str(args.seed), "--rerank", str(rerank),
                "--eval_holdout_fraction", str(args.eval_holdout_fraction),
                "--output_json", str(folder / "retrieval.json"), *shlex.split(args.evaluate_args)]
    run(evaluate, folder / "evaluate.log")
    tables = json.loads((folder / "retrieval.json").read_text())
    row = {"variant": variant, "steps": steps, "objectives": weights, "pretrain_seconds": round(seconds, 1),
           "samples_per_second": summary.get("samples_per_second"), "split": tables["split"],
           "mean_r1_dual": mean_r1(tables["dual"]), "mean_r1_reranked": mean_r1(tables["reranked"])}
    if "vqa" in args.finetune:
        run([sys.executable, "examples/finetune_vqa.py", "--model", str(folder / "final"), "--dataset", args.dataset,
             "--output_dir", str(folder / "vqa"), "--max_steps", str(args.finetune_steps), "--seed", str(args.seed),
             *shlex.split(args.finetune_args)],
            folder / "vqa.log")
        row["vqa_accuracy"] = json.loads((folder / "vqa" / "vqa_metrics.json").read_text())["vqa_accuracy"]
    if "captioning" in args.finetune:
        run([sys.executable, "examples/finetune_captioning.py", "--model", str(folder / "final"),
             "--output_dir", str(folder / "captioning"), "--max_steps", str(args.finetune_steps),
             "--seed", str(args.seed), *shlex.split(args.finetune_args)], folder / "captioning.log")
        metrics = json.loads((folder / "captioning" / "caption_metrics.json").read_text())
        row["caption_accuracy"] = metrics["color_and_shape_accuracy"]
    return row


def format_table(rows: list[dict]) -> str:
    columns = [("variant", "{}"), ("steps", "{}"), ("pretrain_seconds", "{:.0f}"), ("mean_r1_dual", "{:.1%}"),
               ("mean_r1_reranked", "{:.1%}"), ("vqa_accuracy", "{:.1%}"), ("caption_accuracy", "{:.1%}")]
    columns = [(key, fmt) for key, fmt in columns if any(row.get(key) is not None for row in rows)]
    lines = [" | ".join(key for key, _ in columns), " | ".join("---" for _ in columns)]
    for row in rows:
        lines.append(" | ".join("-" if row.get(key) is None else fmt.format(row[key]) for key, fmt in columns))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--preset", default="configuration/tiny")
    parser.add_argument("--dataset", default="builtin")
    parser.add_argument("--max_steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--eval_holdout_fraction", type=float, default=0.0,
                        help="for data without a validation split: the fraction held out of pre-training and evaluated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--rerank", type=int, default=10, help="shortlist re-ranked by ITM (0: off)")
    parser.add_argument("--finetune", default="vqa,captioning", help="'vqa', 'captioning', both, or 'none'")
    parser.add_argument("--finetune_steps", type=int, default=200)
    parser.add_argument("--equal_time", action="store_true", help="also compare at the default recipe's wall time")
    parser.add_argument("--pretrain_args", default="", help="further options of examples/pretrain.py")
    parser.add_argument("--evaluate_args", default="", help="further options of examples/evaluate_retrieval.py")
    parser.add_argument("--finetune_args", default="", help="further options of both fine-tuning scripts")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        parser.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    if args.max_steps < 1 or args.finetune_steps < 1:
        parser.error("--max_steps and --finetune_steps must be >= 1")
    args.finetune = set() if args.finetune == "none" else set(args.finetune.split(","))
    if args.finetune - {"vqa", "captioning"}:
        parser.error(f"--finetune must name 'vqa' and/or 'captioning', or be 'none'; got {sorted(args.finetune)}")
    default = json.loads((REPO / args.preset / "config.json").read_text())["objectives"]
    out = Path(args.output_dir)
    rows = [train_and_evaluate(v, variant_objectives(default, v), args.max_steps, out / v, args) for v in variants]
    if args.equal_time and "default" in variants:
        budget = next(r for r in rows if r["variant"] == "default")
        for row in [r for r in rows if r["variant"] != "default"]:
            steps = round(args.max_steps * row["samples_per_second"] / budget["samples_per_second"])
            timed = train_and_evaluate(row["variant"], variant_objectives(default, row["variant"]), steps,
                                       out / f"{row['variant']}_equal_time", args)
            rows.append({**timed, "variant": f"{row['variant']} (equal time)"})
    print(format_table(rows))
    (out / "ablation.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
