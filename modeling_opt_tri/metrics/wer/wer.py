"""Corpus word error rate (and character error rate) via Levenshtein alignment."""

from __future__ import annotations

from typing import Sequence

import datasets
import evaluate

_CITATION = """\
@inproceedings{morris2004,
  title={From {WER} and {RIL} to {MER} and {WIL}: improved evaluation measures for connected speech recognition},
  author={Morris, Andrew Cameron and Maier, Viktoria and Green, Phil},
  booktitle={INTERSPEECH},
  year={2004}
}
"""

_DESCRIPTION = """\
Word error rate: each prediction is aligned to its reference with a minimum-edit-distance (Levenshtein) alignment and
WER = (substitutions + deletions + insertions) / number of reference words, pooled over the corpus (total edits over
total reference words, not an average of per-sentence rates). It can exceed 1 when there are many insertions.
With `cer=True` the same is computed over characters (character error rate).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the hypotheses (e.g. ASR transcripts).
    references (`list` of `str`): the reference transcripts; together they must contain at least one word/character.
    cer (`bool`, *optional*, defaults to `False`): character error rate instead of word error rate. Whitespace runs
        are collapsed to one space and ends stripped; spaces count as characters.
    lowercase (`bool`, *optional*, defaults to `False`): lowercase both sides first.
Returns:
    `dict`: `"wer"` (or `"cer"`), `"substitutions"`, `"deletions"`, `"insertions"`, `"hits"` and
    `"reference_length"` (totals over the corpus).
Examples:
    >>> wer = evaluate.load("modeling_opt_tri/metrics/wer")
    >>> wer.compute(predictions=["the cat sat"], references=["the cat sat down"])["wer"]
    0.25
"""


def edit_operations(hyp: Sequence[str], ref: Sequence[str]) -> tuple[int, int, int, int]:
    """(substitutions, deletions, insertions, hits) of a minimum-edit-distance alignment of `hyp` to `ref`.

    Among the alignments with the fewest edits it picks the one with the fewest substitutions, i.e. the most hits
    (tools differ here, e.g. jiwer may split the same edit count differently; the error rate is the same).
    """
    n, m = len(ref), len(hyp)
    big = n + m + 1  # cell cost = edits * big + substitutions: lexicographic (edits, substitutions) in one int
    prev = [j * big for j in range(m + 1)]  # ref[:0] vs hyp[:j]: j insertions
    for i in range(1, n + 1):
        word = ref[i - 1]
        cur = [i * big]  # ref[:i] vs hyp[:0]: i deletions
        for j in range(1, m + 1):
            diag = prev[j - 1] if word == hyp[j - 1] else prev[j - 1] + big + 1
            cur.append(min(diag, prev[j] + big, cur[j - 1] + big))
        prev = cur
    edits, subs = divmod(prev[m], big)
    # along any alignment, insertions - deletions = m - n and insertions + deletions = edits - substitutions
    insertions = (edits - subs + m - n) // 2
    deletions = edits - subs - insertions
    return subs, deletions, insertions, n - subs - deletions


def word_error_rate(
    predictions: Sequence[str], references: Sequence[str], cer: bool = False, lowercase: bool = False
) -> dict:
    """Plain-Python corpus WER/CER (same inputs and outputs as the `evaluate` metric)."""
    if len(predictions) != len(references):
        raise ValueError(
            f"Mismatch in the number of predictions ({len(predictions)}) and references ({len(references)})"
        )
    if len(predictions) == 0:
        raise ValueError("No predictions given: predictions and references are empty")

    def units(text: str, i: int) -> list[str]:
        if not isinstance(text, str):
            raise ValueError(f"Item {i}: expected a string, got {type(text).__name__}")
        text = text.lower() if lowercase else text
        return list(" ".join(text.split())) if cer else text.split()

    subs = dels = ins = hits = ref_len = 0
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        ref_units = units(ref, i)
        s, d, n_ins, h = edit_operations(units(pred, i), ref_units)
        subs, dels, ins, hits, ref_len = subs + s, dels + d, ins + n_ins, hits + h, ref_len + len(ref_units)
    if ref_len == 0:
        unit = "characters" if cer else "words"
        raise ValueError(f"The references contain no {unit} (empty references): the error rate is undefined")
    return {
        "cer" if cer else "wer": (subs + dels + ins) / ref_len,
        "substitutions": subs,
        "deletions": dels,
        "insertions": ins,
        "hits": hits,
        "reference_length": ref_len,
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Wer(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                }
            ),
            reference_urls=["https://en.wikipedia.org/wiki/Word_error_rate"],
        )

    def _compute(self, predictions, references, cer=False, lowercase=False):
        return word_error_rate(predictions, references, cer, lowercase)
