"""Cross-modal retrieval evaluation: R@1/5/10 in all six directions between text, image and audio."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

DIRECTIONS = (
    ("text", "image"),
    ("image", "text"),
    ("text", "audio"),
    ("audio", "text"),
    ("image", "audio"),
    ("audio", "image"),
)


@torch.no_grad()
def embed_batches(model, dataloader, device=None, progress: bool = True) -> dict[str, torch.Tensor]:
    """
    Projected, normalised embeddings `(N, projection_dim)` per modality for the rows that have all three modalities.
    `model` is an `OptTriModel` or any OPT-Tri head (its `base_model` is used).
    """
    base = model.base_model
    was_training = base.training
    base.eval()
    device = device or next(base.parameters()).device
    chunks: dict[str, list[torch.Tensor]] = {"text": [], "image": [], "audio": []}
    for batch in tqdm(dataloader, desc="embedding", disable=not progress, leave=False):
        if "input_ids" not in batch or "pixel_values" not in batch or "input_features" not in batch:
            continue
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        keep = batch["attention_mask"].bool().any(1) & batch["image_mask"].bool() & batch["audio_attention_mask"].bool().any(1)
        if not keep.any():
            continue
        chunks["text"].append(base.get_text_features(batch["input_ids"][keep], batch["attention_mask"][keep]).float().cpu())
        chunks["image"].append(base.get_image_features(batch["pixel_values"][keep]).float().cpu())
        chunks["audio"].append(
            base.get_audio_features(batch["input_features"][keep], batch["audio_attention_mask"][keep]).float().cpu()
        )
    if was_training:
        base.train()
    if not chunks["text"]:
        raise ValueError("No evaluation row has all of text, image and audio: retrieval cannot be evaluated")
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def recall_at_k(similarity: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K for queries (rows) against a gallery (columns) where query i matches gallery item i."""
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square (N, N) matrix, got {tuple(similarity.shape)}")
    target = similarity.diagonal()[:, None]
    # rank = number of gallery items scoring strictly higher than the true one (ties count in the query's favour)
    rank = (similarity > target).sum(1)
    return {f"R@{k}": float((rank < k).float().mean()) for k in ks}


def retrieval_metrics(embeddings: dict[str, torch.Tensor], ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """`{"text->image": {"R@1": ..., ...}, ...}` for the six directions."""
    results = {}
    for query, gallery in DIRECTIONS:
        similarity = embeddings[query] @ embeddings[gallery].t()
        results[f"{query}->{gallery}"] = recall_at_k(similarity, ks)
    return results


def format_retrieval_table(results: dict[str, dict[str, float]], num_items: int) -> str:
    ks = list(next(iter(results.values())).keys())
    lines = [f"Retrieval on {num_items} held-out items (chance R@1 = {100.0 / num_items:.2f}%)"]
    lines.append(f"{'direction':<16}" + "".join(f"{k:>9}" for k in ks))
    for direction, values in results.items():
        lines.append(f"{direction:<16}" + "".join(f"{100 * values[k]:>8.1f}%" for k in ks))
    return "\n".join(lines)
