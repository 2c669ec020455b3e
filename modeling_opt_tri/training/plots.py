"""Plots written by the training scripts (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path


def save_vq_loss_curve(history: list[dict], path: Path, reconstruction_title: str) -> bool:
    """Three panels over the steps of a VQ tokenizer run: reconstruction loss (log scale), code perplexity and the
    cumulative number of dead-code restarts. `history` holds dicts with `step`, `reconstruction_loss`, `perplexity`
    and `num_restarts`. Returns True once the PNG is written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].plot(steps, [h["reconstruction_loss"] for h in history])
    axes[0].set_yscale("log")
    axes[0].set_title(reconstruction_title)
    axes[1].plot(steps, [h["perplexity"] for h in history])
    axes[1].set_title("code perplexity (batch)")
    axes[2].plot(steps, [h["num_restarts"] for h in history])
    axes[2].set_title("dead-code restarts (cumulative)")
    for axis in axes:
        axis.set_xlabel("step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
