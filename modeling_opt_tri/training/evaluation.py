"""Cross-modal retrieval evaluation: R@1/5/10 between text, image and audio (six directions for tri-modal data), by
the dual encoder's similarities and, optionally, after re-ranking each query's shortlist with the cross-encoder (ITM).

Every direction is measured on the evaluation rows that have both of its modalities, so a mixture of text-image and
text-audio sources is evaluated in both pairs, and a bimodal dataset (e.g. spoken digits) in its two directions."""

from __future__ import annotations

from dataclasses import dataclass, field

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

_INPUT_KEYS = {
    "text": ("input_ids", "attention_mask", "token_type_ids"),
    "image": ("pixel_values",),
    "audio": ("input_features", "input_values", "audio_attention_mask"),  # input_values: raw-waveform towers
}


def present_rows(batch: dict) -> dict[str, torch.Tensor]:
    """`(B,)` bool per modality whose inputs the batch holds: the rows that have it."""
    present = {}
    if "input_ids" in batch:
        present["text"] = batch["attention_mask"].bool().any(1)
    if "pixel_values" in batch:
        present["image"] = batch["image_mask"].bool()
    audio = batch.get("input_features", batch.get("input_values"))
    if audio is not None:
        mask = batch.get("audio_attention_mask")
        present["audio"] = mask.bool().any(1) if mask is not None else torch.ones(audio.shape[0], dtype=torch.bool)
        if "audio_mask" in batch:  # the processor's per-row flag of the raw-waveform layouts
            present["audio"] = present["audio"] & batch["audio_mask"].bool()
    return present


@dataclass
class RetrievalSet:
    """
    Encoded evaluation rows. Per modality: `rows (n,)` the ids (ascending) of the rows that have it, `embeds (n, d)`
    their normalised retrieval embeddings and, for re-ranking, `parts` (the unimodal states `(n, L, d)` and mask
    `(n, L)`, padded to the longest row). `groups (N,)`: with `match="text"`, one id per distinct text (rows without
    text get ids of their own), so rows with the same text count as the same item.
    """

    rows: dict[str, torch.Tensor]
    embeds: dict[str, torch.Tensor]
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    groups: torch.Tensor | None = None

    def directions(self) -> list[tuple[str, str]]:
        """The directions between the modalities some rows have."""
        return [(q, g) for q, g in DIRECTIONS if q in self.rows and g in self.rows]

    def common(self, a: str, b: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions into `a`'s and `b`'s tensors of the rows that have both, in the same row order."""
        in_a = torch.isin(self.rows[a], self.rows[b]).nonzero().flatten()
        in_b = torch.isin(self.rows[b], self.rows[a]).nonzero().flatten()
        return in_a, in_b


@torch.no_grad()
def encode_rows(model, dataloader, device=None, progress: bool = True, states: bool = False,
                match: str = "row") -> RetrievalSet:
    """
    Encode every modality of each evaluation row that has it (only those rows go through the tower). `model`: an
    OPT-Tri model or head (its `base_model`'s `get_*_features` give the embeddings) or, with `states=True`, an
    `OptTriForRetrieval` (its `encode` also gives the states the cross-encoder fuses; they stay on the model's
    device, e.g. 5,000 base-size images: 197 x 768 floats each, about 3 GB). `match="text"` also numbers the texts.
    """
    if match not in ("row", "text"):
        raise ValueError(f"match must be 'row' or 'text', got {match!r}")
    encoder = model if states else model.base_model
    was_training = encoder.training
    encoder.eval()
    device = device or next(encoder.parameters()).device
    rows, embeds, parts, groups, texts, offset = {}, {}, {}, [], {}, 0
    for batch in tqdm(dataloader, desc="encoding", disable=not progress, leave=False):
        present = present_rows(batch)
        size = next(iter(present.values())).shape[0] if present else 0
        for modality, has in present.items():
            index = has.nonzero().flatten()
            if index.numel() == 0:
                continue
            inputs = {k: batch[k][index].to(device) for k in _INPUT_KEYS[modality] if k in batch}
            if "input_values" in inputs:  # the model's one name for a tower's audio input
                inputs["input_features"] = inputs.pop("input_values")
            if states:
                embedding, part = encoder.encode(modality, inputs)
                parts.setdefault(modality, []).append(part)
            else:
                embedding = getattr(encoder, f"get_{modality}_features")(**inputs).pooler_output
            rows.setdefault(modality, []).append(index + offset)
            embeds.setdefault(modality, []).append(embedding.float() if states else embedding.float().cpu())
        if match == "text":
            groups.append(_text_groups(batch, present.get("text"), texts, offset, size))
        offset += size
    if was_training:
        encoder.train()
    if len(rows) < 2:
        raise ValueError(f"The evaluation rows have only {sorted(rows) or 'no modality'}: retrieval needs two modalities")
    result = RetrievalSet({m: torch.cat(r) for m, r in rows.items()}, {m: torch.cat(e) for m, e in embeds.items()})
    for modality, pieces in parts.items():
        length = max(part[0].shape[1] for part in pieces)
        result.parts[modality] = tuple(_pad_cat([part[i] for part in pieces], length) for i in range(2))
    result.groups = torch.cat(groups) if groups else None
    return result


def embed_batches(model, dataloader, device=None, progress: bool = True, match: str = "row") -> RetrievalSet:
    """The dual encoder's embeddings of the evaluation rows ([`encode_rows`] without states)."""
    return encode_rows(model, dataloader, device, progress, states=False, match=match)


def encode_for_reranking(model, dataloader, device=None, progress: bool = True) -> RetrievalSet:
    """For an `OptTriForRetrieval`: embeddings and the unimodal states the cross-encoder fuses ([`encode_rows`])."""
    return encode_rows(model, dataloader, device, progress, states=True)


def _text_groups(batch: dict, has_text: torch.Tensor | None, seen: dict[tuple, int], offset: int, size: int) -> torch.Tensor:
    """`(B,)` an id per distinct text (its token ids under the mask), numbered across batches in `seen`; a row
    without text gets `-(row id + 1)`, which no other row has."""
    groups = -(torch.arange(size) + offset + 1)
    if has_text is not None:
        for i in has_text.nonzero().flatten().tolist():
            key = tuple(batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist())
            groups[i] = seen.setdefault(key, len(seen))
    return groups


def _pad_cat(parts: list[torch.Tensor], length: int) -> torch.Tensor:
    """Concatenate `(n_i, L_i, ...)` tensors along dim 0 after zero-padding dim 1 to `length`."""
    padded = [torch.nn.functional.pad(p, (0, 0) * (p.ndim - 2) + (0, length - p.shape[1])) for p in parts]
    return torch.cat(padded)


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


def retrieval_metrics(encoded: RetrievalSet, ks: tuple[int, ...] = (1, 5, 10), match: str = "row") -> dict[str, dict[str, float]]:
    """
    `{"text->image": {"R@1": ..., ...}, ...}` for every direction, on the rows that have both of its modalities.
    `match="row"`: a query's own row is its one match; `match="text"` (the set encoded with it): every row with the
    same text matches (class-level, e.g. spoken digits whose text is the digit's name), and a text gallery holds
    each distinct text once, so `audio->text` R@1 is zero-shot classification accuracy.
    """
    if match not in ("row", "text"):
        raise ValueError(f"match must be 'row' or 'text', got {match!r}")
    if match == "text" and encoded.groups is None:
        raise ValueError("match='text' needs the texts numbered: encode the rows with match='text'")
    results = {}
    for query, gallery in encoded.directions():
        q_index, g_index = encoded.common(query, gallery)
        similarity = encoded.embeds[query][q_index] @ encoded.embeds[gallery][g_index].t()
        positives = None
        if match == "text":
            groups = encoded.groups[encoded.rows[query][q_index]]
            columns = torch.arange(len(groups))
            if gallery == "text":  # each distinct text once: the first row of each group
                _, inverse = torch.unique(groups, return_inverse=True)
                first = torch.full((int(inverse.max()) + 1,), len(groups), dtype=torch.long)
                columns = first.scatter_reduce(0, inverse, columns, reduce="amin")
            similarity, positives = similarity[:, columns], groups[:, None] == groups[columns][None, :]
        results[f"{query}->{gallery}"] = recall_at_k(similarity, ks, positives)
    return results


def direction_sizes(encoded: RetrievalSet) -> dict[str, int]:
    """The number of evaluated rows of each direction."""
    return {f"{q}->{g}": len(encoded.common(q, g)[0]) for q, g in encoded.directions()}


def format_retrieval_table(
    results: dict[str, dict[str, float]], sizes: dict[str, int] | int, split: str | None = None, match: str = "row"
) -> str:
    """The table of `results`; `sizes`: the rows of each direction (or one number for all); a column `rows` is
    added when directions differ."""
    sizes = sizes if isinstance(sizes, dict) else {direction: sizes for direction in results}
    ks = list(next(iter(results.values())).keys())
    where = f"of split {split}" if split else "held-out"
    items = max(sizes.values())
    if match == "text":
        lines = [f"Class-level retrieval on {items} {where} items (a hit: any item with the query's text)"]
    else:
        lines = [f"Retrieval on {items} {where} items (chance R@1 = {100.0 / items:.2f}%)"]
    uneven = len(set(sizes.values())) > 1
    lines.append(f"{'direction':<16}" + "".join(f"{k:>9}" for k in ks) + (f"{'rows':>8}" if uneven else ""))
    for direction, values in results.items():
        row = f"{direction:<16}" + "".join(f"{100 * values[k]:>8.1f}%" for k in ks)
        lines.append(row + (f"{sizes[direction]:>8}" if uneven else ""))
    return "\n".join(lines)


@torch.no_grad()
def reranked_retrieval_metrics(
    model, encoded, top_k: int = 10, batch_size: int = 256, ks: tuple[int, ...] = (1, 5, 10),
    similarity_weight: float = 1.0,
) -> dict[str, dict[str, float]]:
    """
    R@K in the directions between the encoded modalities after re-ranking each query's dual-encoder top-`top_k` by
    `OptTriForRetrieval.shortlist_scores` (the ITM log matching probability plus `similarity_weight` times the dual
    encoder's logit; 0: ITM alone); `encoded` from `encode_for_reranking`, each direction on the rows that have both
    modalities. A true item outside the shortlist counts as
    a miss at every K <= top_k, so R@top_k is the dual encoder's (up to ties at the shortlist's edge, which
    `recall_at_k` counts in the query's favour). Only K <= top_k are reported.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    results = {}
    for query, gallery in encoded.directions():
        q_index, g_index = encoded.common(query, gallery)
        q_embeds, g_embeds = encoded.embeds[query][q_index], encoded.embeds[gallery][g_index]
        q_states, q_mask = (t[q_index] for t in encoded.parts[query])
        g_states, g_mask = (t[g_index] for t in encoded.parts[gallery])
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
