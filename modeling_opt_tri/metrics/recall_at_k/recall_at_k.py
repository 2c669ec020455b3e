"""Recall@K, mean rank and median rank for cross-modal retrieval (text<->image, text<->audio, image<->audio)."""

from __future__ import annotations

import numbers
import statistics
from typing import Any, Hashable, Iterable, Sequence

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{karpathy2015deep,
  title={Deep Visual-Semantic Alignments for Generating Image Descriptions},
  author={Karpathy, Andrej and Fei-Fei, Li},
  booktitle={CVPR},
  year={2015}
}
"""

_DESCRIPTION = """\
Retrieval metrics for one direction of cross-modal retrieval (e.g. text->image). For every query the model ranks the
gallery; the rank of a query is the 1-based position of its first correct gallery item. R@K is the fraction of queries
whose rank is <= K (the usual image-text retrieval definition: a hit if any correct item is in the top K). Mean and
median rank summarise the rank distribution (lower is better).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `str` or `int`): per query, gallery ids ranked best first. Usually the whole
        gallery; if a list is truncated and holds no correct id, that query's rank is `len(list) + 1` (a lower bound)
        and it counts as a miss for every K. Ids must be unique within a list.
    references (`list` of `list` of `str` or `int`): per query, the correct gallery ids (at least one; e.g. the 5
        captions of an image for image->text retrieval).
    ks (`list` of `int`, *optional*, defaults to `[1, 5, 10]`): the cut-offs.
Returns:
    `dict`: `"R@<k>"` for each k (fraction in [0, 1]), `"mean_rank"` and `"median_rank"` (1 is best).
Examples:
    >>> recall = evaluate.load("modeling_opt_tri/metrics/recall_at_k")
    >>> recall.compute(predictions=[["img2", "img1"], ["img2", "img1"]], references=[["img1"], ["img2"]], ks=[1, 2])
    {'R@1': 0.5, 'R@2': 1.0, 'mean_rank': 1.5, 'median_rank': 1.5}
"""


def _check_ks(ks: Iterable[int]) -> list[int]:
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1 for k in ks):
        raise ValueError(f"`ks` must be a non-empty list of positive integers, got {ks!r}")
    return [int(k) for k in ks]


def first_hit_ranks(predictions: Sequence[Sequence[Hashable]], references: Sequence[Iterable[Hashable]]) -> list[int]:
    """1-based rank of the first correct id for each query (len(ranking) + 1 when none is listed)."""
    if len(predictions) != len(references):
        raise ValueError(
            f"Mismatch in the number of predictions ({len(predictions)}) and references ({len(references)})"
        )
    if len(predictions) == 0:
        raise ValueError("No queries given: predictions and references are empty")
    ranks = []
    for i, (ranking, positives) in enumerate(zip(predictions, references)):
        positives = set(positives)
        if not positives:
            raise ValueError(f"Query {i} has no correct gallery id in its references (empty references)")
        ranking = list(ranking)
        if len(set(ranking)) != len(ranking):
            raise ValueError(f"Query {i}: the ranked gallery list contains duplicate ids")
        rank = next((pos for pos, gid in enumerate(ranking, start=1) if gid in positives), len(ranking) + 1)
        ranks.append(rank)
    return ranks


def recall_at_k(
    predictions: Sequence[Sequence[Hashable]],
    references: Sequence[Iterable[Hashable]],
    ks: Iterable[int] = (1, 5, 10),
) -> dict[str, float]:
    """Plain-Python Recall@K / mean rank / median rank (same inputs and outputs as the `evaluate` metric)."""
    ks = _check_ks(ks)
    return _summarise(first_hit_ranks(predictions, references), ks)


def _summarise(ranks: list[int], ks: list[int]) -> dict[str, float]:
    out: dict[str, float] = {f"R@{k}": sum(r <= k for r in ranks) / len(ranks) for k in ks}
    out["mean_rank"] = float(statistics.fmean(ranks))
    out["median_rank"] = float(statistics.median(ranks))
    return out


def _as_matrix(similarity: Any) -> np.ndarray:
    if hasattr(similarity, "detach"):  # torch tensor
        similarity = similarity.detach().float().cpu().numpy()
    matrix = np.asarray(similarity, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"`similarity` must be a non-empty 2-D (num_queries, num_gallery) matrix, got {matrix.shape}")
    if np.isnan(matrix).any():
        raise ValueError("`similarity` contains NaN")
    return matrix


def _gallery_ids(gallery_ids: Sequence[Hashable] | None, width: int) -> list[Hashable]:
    ids = list(range(width)) if gallery_ids is None else list(gallery_ids)
    if len(ids) != width:
        raise ValueError(f"{len(ids)} gallery_ids for a similarity matrix with {width} columns")
    if len(set(ids)) != width:
        raise ValueError("`gallery_ids` contains duplicates")
    return ids


def rank_gallery(similarity: Any, gallery_ids: Sequence[Hashable] | None = None) -> list[list[Hashable]]:
    """Turn a (num_queries, num_gallery) similarity matrix (list, numpy or torch) into ranked gallery-id lists.

    Higher similarity ranks first; ties keep gallery order (stable sort). `gallery_ids` default to column indices.
    """
    matrix = _as_matrix(similarity)
    ids = _gallery_ids(gallery_ids, matrix.shape[1])
    order = np.argsort(-matrix, axis=1, kind="stable")
    return [[ids[j] for j in row] for row in order.tolist()]


def retrieval_metrics_from_similarity(
    similarity: Any,
    positives: Sequence[Iterable[Hashable]],
    gallery_ids: Sequence[Hashable] | None = None,
    ks: Iterable[int] = (1, 5, 10),
) -> dict[str, float]:
    """Same result as `recall_at_k(rank_gallery(similarity, gallery_ids), positives, ks)`, vectorised.

    `positives[i]` lists the correct gallery ids of query i (column indices when `gallery_ids` is None); for a
    paired batch (query i matches gallery item i) pass `positives=[[i] for i in range(n)]`.
    """
    ks = _check_ks(ks)
    matrix = _as_matrix(similarity)
    ids = _gallery_ids(gallery_ids, matrix.shape[1])
    if len(positives) != matrix.shape[0]:
        raise ValueError(f"Mismatch in the number of queries ({matrix.shape[0]}) and positives ({len(positives)})")
    column = {gid: j for j, gid in enumerate(ids)}
    ranks = []
    cols = np.arange(matrix.shape[1])
    for i, pos in enumerate(positives):
        pos_cols = sorted({column[gid] for gid in pos if gid in column})
        if not pos_cols:
            raise ValueError(f"Query {i} has no correct gallery id among the gallery (empty references)")
        row = matrix[i]
        best = max(pos_cols, key=lambda j: (row[j], -j))  # first positive in stable descending order
        ranks.append(1 + int(np.sum(row > row[best])) + int(np.sum((row == row[best]) & (cols < best))))
    return _summarise(ranks, ks)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RecallAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("string")),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Sequence(datasets.Value("int64")),
                        "references": datasets.Sequence(datasets.Value("int64")),
                    }
                ),
            ],
        )

    def _compute(self, predictions, references, ks=(1, 5, 10)):
        return recall_at_k(predictions, references, ks)
