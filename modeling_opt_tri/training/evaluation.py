"""Cross-modal retrieval evaluation: R@1/5/10 in all six directions between text, image and audio, by the dual
encoder's similarities and, optionally, after re-ranking each query's shortlist with the cross-encoder (ITM)."""

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
        chunks["text"].append(base.get_text_features(batch["input_ids"][keep], batch["attention_mask"][keep]).pooler_output.float().cpu())
        chunks["image"].append(base.get_image_features(batch["pixel_values"][keep]).pooler_output.float().cpu())
        chunks["audio"].append(
            base.get_audio_features(batch["input_features"][keep], batch["audio_attention_mask"][keep]).pooler_output.float().cpu()
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


def format_retrieval_table(results: dict[str, dict[str, float]], num_items: int, split: str | None = None) -> str:
    ks = list(next(iter(results.values())).keys())
    where = f"of split {split}" if split else "held-out"
    lines = [f"Retrieval on {num_items} {where} items (chance R@1 = {100.0 / num_items:.2f}%)"]
    lines.append(f"{'direction':<16}" + "".join(f"{k:>9}" for k in ks))
    for direction, values in results.items():
        lines.append(f"{direction:<16}" + "".join(f"{100 * values[k]:>8.1f}%" for k in ks))
    return "\n".join(lines)


_INPUT_KEYS = {
    "text": ("input_ids", "attention_mask", "token_type_ids"),
    "image": ("pixel_values",),
    "audio": ("input_features", "audio_attention_mask"),
}


def _pad_cat(parts: list[torch.Tensor], length: int) -> torch.Tensor:
    """Concatenate `(n_i, L_i, ...)` tensors along dim 0 after zero-padding dim 1 to `length`."""
    padded = [torch.nn.functional.pad(p, (0, 0) * (p.ndim - 2) + (0, length - p.shape[1])) for p in parts]
    return torch.cat(padded)


@torch.no_grad()
def encode_for_reranking(model, dataloader, device=None, progress: bool = True):
    """
    For an `OptTriForRetrieval`: per modality, the embeddings `(N, projection_dim)` and the unimodal states and
    masks `(N, L, d)` / `(N, L)` (padded to the longest row) of the rows that have all three modalities. Every
    row's states stay on the model's device (e.g. 5,000 base-size images: 197 x 768 floats each, about 3 GB), which
    suits held-out splits of a few thousand rows.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    chunks: dict[str, dict[str, list[torch.Tensor]]] = {m: {"embeds": [], "states": [], "mask": []} for m in _INPUT_KEYS}
    for batch in tqdm(dataloader, desc="encoding", disable=not progress, leave=False):
        if "input_ids" not in batch or "pixel_values" not in batch or "input_features" not in batch:
            continue
        keep = batch["attention_mask"].bool().any(1) & batch["image_mask"].bool() & batch["audio_attention_mask"].bool().any(1)
        if not keep.any():
            continue
        for modality, keys in _INPUT_KEYS.items():
            inputs = {k: batch[k][keep].to(device) for k in keys if k in batch}
            embeds, (states, mask) = model.encode(modality, inputs)
            chunks[modality]["embeds"].append(embeds.float())
            chunks[modality]["states"].append(states)
            chunks[modality]["mask"].append(mask)
    if was_training:
        model.train()
    if not chunks["text"]["embeds"]:
        raise ValueError("No evaluation row has all of text, image and audio: retrieval cannot be evaluated")
    encoded = {}
    for modality, parts in chunks.items():
        length = max(s.shape[1] for s in parts["states"])
        encoded[modality] = (
            torch.cat(parts["embeds"]), _pad_cat(parts["states"], length), _pad_cat(parts["mask"], length)
        )
    return encoded


@torch.no_grad()
def reranked_retrieval_metrics(
    model, encoded, top_k: int = 10, batch_size: int = 256, ks: tuple[int, ...] = (1, 5, 10),
    similarity_weight: float = 1.0,
) -> dict[str, dict[str, float]]:
    """
    R@K in the six directions after re-ranking each query's dual-encoder top-`top_k` by
    `OptTriForRetrieval.shortlist_scores` (the ITM log matching probability plus `similarity_weight` times the dual
    encoder's logit; 0: ITM alone); `encoded` from `encode_for_reranking`. A true item outside the shortlist counts as
    a miss at every K <= top_k, so R@top_k is the dual encoder's (up to ties at the shortlist's edge, which
    `recall_at_k` counts in the query's favour). Only K <= top_k are reported.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    results = {}
    for query, gallery in DIRECTIONS:
        q_embeds, q_states, q_mask = encoded[query]
        g_embeds, g_states, g_mask = encoded[gallery]
        similarity = q_embeds @ g_embeds.t()
        k = min(top_k, g_embeds.shape[0])
        shortlist = similarity.topk(k, dim=1).indices  # (Q, k)
        scores, _ = model.shortlist_scores(
            query, (q_states, q_mask), gallery, (g_states, g_mask), shortlist, similarity, similarity_weight, batch_size
        )
        target = torch.arange(shortlist.shape[0], device=shortlist.device)[:, None]
        found = shortlist == target  # (Q, k): where the true item sits in the shortlist, if at all
        true_score = torch.where(found, scores, torch.full_like(scores, float("-inf"))).amax(1, keepdim=True)
        # rank among the shortlist = shortlisted items scored strictly higher (ties favour the query)
        rank = torch.where(found.any(1), (scores > true_score).sum(1), torch.full_like(found[:, 0], k, dtype=torch.long))
        results[f"{query}->{gallery}"] = {f"R@{K}": float((rank < K).float().mean()) for K in ks if K <= k}
    return results
