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


def present_rows(batch: dict) -> dict[str, torch.Tensor]:
    """`(B,)` bool per modality whose inputs the batch holds: the rows that have it."""
    present = {}
    if "input_ids" in batch:
        present["text"] = batch["attention_mask"].bool().any(1)
    if "pixel_values" in batch:
        present["image"] = batch["image_mask"].bool()
    if "input_features" in batch:
        present["audio"] = batch["audio_attention_mask"].bool().any(1)
    return present


def complete_rows(chunks: list[tuple[dict[str, torch.Tensor], dict]], extra: tuple[str, ...] = ()) -> tuple[list[str], list[dict]]:
    """
    The evaluated modalities (every modality some row has, in the order text, image, audio; at least two) and, per
    batch, its values restricted to the rows that have all of them. `chunks`: per batch, its `present_rows` and a
    dict of per-modality values `(B, ...)` (or tuples of them), plus the `extra` per-row values it holds.
    """
    modalities = [m for m in ("text", "image", "audio") if any(m in present and present[m].any() for present, _ in chunks)]
    if len(modalities) < 2:
        raise ValueError(f"The evaluation rows have only {modalities or 'no modality'}: retrieval needs two modalities")
    kept = []
    for present, values in chunks:
        if not all(m in present for m in modalities):
            continue
        keep = torch.stack([present[m] for m in modalities]).all(0)
        if keep.any():
            pick = lambda v: tuple(x[keep.to(x.device)] for x in v) if isinstance(v, tuple) else v[keep.to(v.device)]  # noqa: E731
            kept.append({m: pick(values[m]) for m in (*modalities, *extra) if m in values})
    if not kept:
        raise ValueError(f"No evaluation row has all of {', '.join(modalities)}: retrieval cannot be evaluated")
    return modalities, kept


@torch.no_grad()
def embed_batches(model, dataloader, device=None, progress: bool = True) -> dict[str, torch.Tensor]:
    """
    Projected, normalised embeddings `(N, projection_dim)` per modality for the rows that have every modality of the
    evaluation data (all three, or the two of a bimodal dataset such as audio-text; see `complete_rows`).
    `model` is an `OptTriModel` or any OPT-Tri head (its `base_model` is used).
    """
    base = model.base_model
    was_training = base.training
    base.eval()
    device = device or next(base.parameters()).device
    chunks, texts = [], {}
    for batch in tqdm(dataloader, desc="embedding", disable=not progress, leave=False):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        present = present_rows(batch)
        values = {}
        if "text" in present:
            values["text"] = base.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output
            values["text_groups"] = _text_groups(batch, texts)
        if "image" in present:
            values["image"] = base.get_image_features(batch["pixel_values"]).pooler_output
        if "audio" in present:
            values["audio"] = base.get_audio_features(batch["input_features"], batch["audio_attention_mask"]).pooler_output
        chunks.append((present, {m: v.cpu() if m == "text_groups" else v.float().cpu() for m, v in values.items()}))
    if was_training:
        base.train()
    modalities, kept = complete_rows(chunks, extra=("text_groups",))
    return {m: torch.cat([values[m] for values in kept]) for m in modalities + [k for k in ("text_groups",) if k in kept[0]]}


def _text_groups(batch: dict, seen: dict[tuple, int]) -> torch.Tensor:
    """`(B,)` an id per distinct text (its token ids under the mask), numbered across batches in `seen`."""
    ids = [tuple(row[mask.bool()].tolist()) for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    return torch.tensor([seen.setdefault(key, len(seen)) for key in ids], dtype=torch.long)


def directions(per_modality: dict) -> list[tuple[str, str]]:
    """The retrieval directions between the modalities that `per_modality` holds."""
    return [(q, g) for q, g in DIRECTIONS if q in per_modality and g in per_modality]


def recall_at_k(
    similarity: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10), positives: torch.Tensor | None = None
) -> dict[str, float]:
    """Recall@K for queries (rows) against a gallery (columns): query i matches gallery item i of a square `(N, N)`
    `similarity`, or, given `positives (Q, G)` bool, every item j with `positives[i, j]` (class-level matching; every
    query needs one)."""
    if positives is not None:
        if positives.shape != similarity.shape or not positives.any(1).all():
            raise ValueError("positives must have the shape of similarity and at least one item per query")
    elif similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be a square (N, N) matrix, got {tuple(similarity.shape)}")
    if positives is None:
        target = similarity.diagonal()[:, None]
    else:
        target = similarity.masked_fill(~positives, float("-inf")).amax(1, keepdim=True)  # the best-scored match
    # rank = number of gallery items scoring strictly higher than the true one (ties count in the query's favour)
    rank = (similarity > target).sum(1)
    return {f"R@{k}": float((rank < k).float().mean()) for k in ks}


def _text_groups_of(embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
    groups = embeddings.get("text_groups")
    if groups is None:
        raise ValueError("matching by text needs the evaluation rows' text")
    return groups


def retrieval_metrics(
    embeddings: dict[str, torch.Tensor], ks: tuple[int, ...] = (1, 5, 10), match: str = "row"
) -> dict[str, dict[str, float]]:
    """`{"text->image": {"R@1": ..., ...}, ...}` for the directions between the modalities of `embeddings` (six for
    three modalities). `match="row"`: a query's own row is its one match; `match="text"`: every row with the same
    text matches (class-level, e.g. spoken digits whose text is the digit's name), and a text gallery holds each
    distinct text once, so `audio->text` R@1 is zero-shot classification accuracy."""
    if match not in ("row", "text"):
        raise ValueError(f"match must be 'row' or 'text', got {match!r}")
    results = {}
    for query, gallery in directions(embeddings):
        similarity = embeddings[query] @ embeddings[gallery].t()
        positives = None
        if match == "text":
            groups = _text_groups_of(embeddings)
            columns = torch.arange(len(groups))
            if gallery == "text":  # a text gallery holds each distinct text once (zero-shot classification)
                columns = torch.tensor([groups.tolist().index(g) for g in groups.unique().tolist()])
            similarity, positives = similarity[:, columns], groups[:, None] == groups[columns][None, :]
        results[f"{query}->{gallery}"] = recall_at_k(similarity, ks, positives)
    return results


def format_retrieval_table(
    results: dict[str, dict[str, float]], num_items: int, split: str | None = None, match: str = "row"
) -> str:
    ks = list(next(iter(results.values())).keys())
    where = f"of split {split}" if split else "held-out"
    if match == "text":
        lines = [f"Class-level retrieval on {num_items} {where} items (a hit: any item with the query's text)"]
    else:
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
    masks `(N, L, d)` / `(N, L)` (padded to the longest row) of the rows that have every modality of the evaluation
    data (`complete_rows`). Every row's states stay on the model's device (e.g. 5,000 base-size images: 197 x 768
    floats each, about 3 GB), which suits held-out splits of a few thousand rows.
    """
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    chunks = []
    for batch in tqdm(dataloader, desc="encoding", disable=not progress, leave=False):
        present = {m: rows.to(device) for m, rows in present_rows(batch).items()}
        values = {}
        for modality in present:
            inputs = {k: batch[k].to(device) for k in _INPUT_KEYS[modality] if k in batch}
            embeds, (states, mask) = model.encode(modality, inputs)
            values[modality] = (embeds.float(), states, mask)
        chunks.append((present, values))
    if was_training:
        model.train()
    modalities, kept = complete_rows(chunks)
    encoded = {}
    for modality in modalities:
        parts = [values[modality] for values in kept]
        length = max(states.shape[1] for _, states, _ in parts)
        encoded[modality] = (
            torch.cat([embeds for embeds, _, _ in parts]),
            _pad_cat([states for _, states, _ in parts], length),
            _pad_cat([mask for _, _, mask in parts], length),
        )
    return encoded


@torch.no_grad()
def reranked_retrieval_metrics(
    model, encoded, top_k: int = 10, batch_size: int = 256, ks: tuple[int, ...] = (1, 5, 10),
    similarity_weight: float = 1.0,
) -> dict[str, dict[str, float]]:
    """
    R@K in the directions between the encoded modalities after re-ranking each query's dual-encoder top-`top_k` by
    `OptTriForRetrieval.shortlist_scores` (the ITM log matching probability plus `similarity_weight` times the dual
    encoder's logit; 0: ITM alone); `encoded` from `encode_for_reranking`. A true item outside the shortlist counts as
    a miss at every K <= top_k, so R@top_k is the dual encoder's (up to ties at the shortlist's edge, which
    `recall_at_k` counts in the query's favour). Only K <= top_k are reported.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    results = {}
    for query, gallery in directions(encoded):
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
