"""The model card (README.md) of a pre-training run's `final/` folder: the Hub metadata block, what the model was
trained on, its objectives and steps, the evaluation table the run printed, the loss curves and a usage snippet.

`save_pretrained` already writes a short card (`default_model_card` in the Hub file) that knows only the model;
`write_model_card` replaces it with the card of the run, from the summary `run_pretraining` returns.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..modeling_opt_tri import MODEL_CARD_MARKER, USAGE_SNIPPET, model_card_metadata

#: How the built-in data set is named in the card when no data set was given.
SYNTHETIC_DATASET = "the built-in procedurally generated tri-modal world (coloured shapes, captions, spoken audio)"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _retrieval_section(retrieval: dict[str, dict[str, float]] | None, split: str | None = None,
                       skipped: str | None = None) -> str:
    if not retrieval:
        return f"{skipped}\n" if skipped else "No retrieval evaluation was run (`--evaluate false`).\n"
    ks = list(next(iter(retrieval.values())).keys())
    rows = [[direction] + [f"{100 * values[k]:.1f}%" for k in ks] for direction, values in retrieval.items()]
    where = f"split {split}" if split else "the held-out split"
    return f"Zero-shot retrieval on {where}:\n\n" + _markdown_table(["direction"] + ks, rows) + "\n"


def _loss_section(loss_table: dict[str, tuple[float, float]] | None) -> str:
    if not loss_table:
        return ""
    rows = [[name, f"{first:.4f}", f"{last:.4f}"] for name, (first, last) in loss_table.items()]
    return "\n" + _markdown_table(["loss", "first steps (mean)", "last steps (mean)"], rows) + "\n"


def model_card_text(model, summary: dict[str, Any], dataset: str | None = None, license: str = "apache-2.0",
                    model_id: str | None = None, loss_curve_name: str | None = None) -> str:
    """
    The card of a pre-training run.

    Args:
        model: the trained model (its config gives the objectives and sizes).
        summary: `run_pretraining`'s summary (`steps`, `rows_seen`, `loss_table`, `retrieval`, ...).
        dataset: the Hub id or path of the training data (`None`: the built-in synthetic data set).
        license: the card's `license` field.
        model_id: the id the usage snippet loads (a Hub repo id or a folder).
        loss_curve_name: file name of the loss-curve image next to the card, if any.
    """
    objectives = {name: weight for name, weight in model.config.objectives.items() if weight > 0}
    datasets = [dataset] if dataset and not Path(dataset).exists() else []  # the field takes Hub ids, not paths
    metadata = model_card_metadata(model, license=license, datasets=datasets)
    trained_on = f"`{dataset}`" if dataset else SYNTHETIC_DATASET
    objective_text = ", ".join(f"{name} (weight {weight:g})" for name, weight in objectives.items())
    parts = [
        metadata,
        f"# OPT-Tri: {type(model).__name__}\n\n{MODEL_CARD_MARKER}\n",
        "A tri-modal (text, image, audio) model pre-trained with OPT-Tri (OPT / UNITER objectives). Its code travels "
        "with the weights: load it with `trust_remote_code=True`.\n",
        "## Training\n",
        f"- Data: {trained_on}; {summary.get('rows_seen', 0)} rows seen, {summary.get('rows_skipped', 0)} corrupt rows "
        "skipped.",
        f"- Objectives: {objective_text}; masking policy `{model.config.masking_policy}`.",
        f"- Steps: {summary.get('steps', 0)} optimizer steps ({summary.get('skipped_optimizer_steps', 0)} skipped).\n",
        _loss_section(summary.get("loss_table")),
        f"![loss curves]({loss_curve_name})\n" if loss_curve_name else "",
        "## Evaluation\n",
        _retrieval_section(summary.get("retrieval"), summary.get("eval_split"), summary.get("evaluation_skipped")),
        "## Usage\n",
        "```python\n" + USAGE_SNIPPET.format(model_id=model_id or "path/to/this/folder") + "```\n",
    ]
    return "\n".join(part for part in parts if part)


def write_model_card(folder: str | Path, model, summary: dict[str, Any], dataset: str | None = None,
                     license: str = "apache-2.0", model_id: str | None = None) -> Path:
    """Write `folder/README.md` (and copy the loss-curve image `summary["loss_curve"]` next to it). The usage
    snippet loads `model_id`, by default the folder itself. Returns the card's path."""
    folder = Path(folder)
    curve = summary.get("loss_curve")
    curve_name = None
    if curve and Path(curve).is_file():
        curve_name = Path(curve).name
        if Path(curve).resolve() != (folder / curve_name).resolve():
            shutil.copyfile(curve, folder / curve_name)
    text = model_card_text(model, summary, dataset, license, model_id or str(folder.resolve()), curve_name)
    card = folder / "README.md"
    card.write_text(text, encoding="utf-8")
    return card
