"""Corpus BLEU-1..4 (Papineni et al., 2002) with multiple references and mteval-13a tokenisation."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import datasets
import evaluate

_CITATION = """\
@inproceedings{papineni2002bleu,
  title={{BLEU}: a Method for Automatic Evaluation of Machine Translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle={ACL},
  pages={311--318},
  year={2002}
}
"""

_DESCRIPTION = """\
Corpus-level BLEU. Modified (clipped) n-gram precisions are pooled over the corpus: each candidate n-gram count is
clipped by its maximum count in any single reference of that candidate. BLEU-n is the brevity penalty times the
geometric mean of the precisions of orders 1..n with uniform weights (the coco-caption Bleu_1..Bleu_4 convention).
The brevity penalty is exp(1 - r/c) when the total candidate length c is below the effective reference length r
(per candidate, the reference length closest to its length, the shorter one on ties), 1 otherwise.
Text is tokenised like mteval-v13a / sacrebleu's "13a" tokenizer by default.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the candidate texts.
    references (`list` of `list` of `str`, or `list` of `str`): one or more references per candidate.
    max_order (`int`, *optional*, defaults to 4): highest n-gram order; `bleu` is BLEU-`max_order`.
    tokenize (`str`, *optional*, defaults to `"13a"`): `"13a"` (mteval-v13a rules, as sacrebleu) or `"none"`
        (split on whitespace, for pre-tokenised text).
    lowercase (`bool`, *optional*, defaults to `False`): lowercase everything before tokenising.
    smooth (`str` or `bool`, *optional*, defaults to `"none"`): `"none"`/`False` (a zero precision gives 0),
        `"add1"`/`True` (Lin & Och 2004: add 1 to matches and totals of every order, as HF `evaluate`'s bleu with
        smooth=True) or `"exp"` (mteval/sacrebleu default: the k-th zero precision becomes 1 / (2^k * total)).
Returns:
    `dict`: `bleu` (= BLEU-`max_order`), `bleu_1` ... `bleu_<max_order>`, `precisions` (list), `brevity_penalty`,
    `length_ratio` (c / r), `translation_length` (c), `reference_length` (r). Scores are in [0, 1].
Examples:
    >>> bleu = evaluate.load("modeling_opt_tri/metrics/bleu")
    >>> bleu.compute(predictions=["the cat is on the mat"], references=[["the cat is on the mat", "a cat"]])["bleu"]
    1.0
"""

_SMOOTHING = {"none": "none", "add1": "add1", "exp": "exp", False: "none", True: "add1", None: "none"}
_13A_RULES = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # symbols and punctuation (not . , -)
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period and comma unless preceded by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period and comma unless followed by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash when preceded by a digit
]


def tokenize_13a(line: str) -> list[str]:
    """mteval-v13a tokenisation (identical to sacrebleu's `Tokenizer13a`), as a token list."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _13A_RULES:
        line = pattern.sub(repl, line)
    return line.split()


def _ngrams(tokens: list[str], max_order: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1))


def _closest_ref_length(hyp_len: int, ref_lens: list[int]) -> int:
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def corpus_bleu(
    predictions: Sequence[str],
    references: Sequence[Sequence[str] | str],
    max_order: int = 4,
    tokenize: str = "13a",
    lowercase: bool = False,
    smooth: str | bool = "none",
) -> dict:
    """Plain-Python corpus BLEU (same inputs and outputs as the `evaluate` metric)."""
    if len(predictions) != len(references):
        raise ValueError(
            f"Mismatch in the number of predictions ({len(predictions)}) and references ({len(references)})"
        )
    if len(predictions) == 0:
        raise ValueError("No predictions given: predictions and references are empty")
    if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
        raise ValueError(f"`max_order` must be a positive integer, got {max_order!r}")
    if tokenize not in ("13a", "none"):
        raise ValueError(f'`tokenize` must be "13a" or "none", got {tokenize!r}')
    try:
        smooth = _SMOOTHING[smooth]
    except (KeyError, TypeError):
        raise ValueError(f'`smooth` must be one of "none", "add1", "exp", True, False; got {smooth!r}') from None

    def tok(text: str) -> list[str]:
        if not isinstance(text, str):
            raise ValueError(f"Expected a string, got {type(text).__name__}: {text!r}")
        text = text.lower() if lowercase else text
        return tokenize_13a(text) if tokenize == "13a" else text.split()

    matches = [0] * max_order
    totals = [0] * max_order
    hyp_length = ref_length = 0
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise ValueError(f"Prediction {i} has no references (empty references)")
        hyp = tok(pred)
        ref_toks = [tok(r) for r in refs]
        hyp_length += len(hyp)
        ref_length += _closest_ref_length(len(hyp), [len(r) for r in ref_toks])
        max_ref_counts: Counter = Counter()
        for r in ref_toks:
            max_ref_counts |= _ngrams(r, max_order)  # element-wise max
        for ngram, count in _ngrams(hyp, max_order).items():
            matches[len(ngram) - 1] += min(count, max_ref_counts[ngram])
        for n in range(1, max_order + 1):
            totals[n - 1] += max(len(hyp) - n + 1, 0)

    precisions = []
    zeros_seen = 0
    for m, t in zip(matches, totals):
        if smooth == "add1":
            precisions.append((m + 1.0) / (t + 1.0))
        elif t == 0:
            precisions.append(0.0)
        elif m == 0 and smooth == "exp":
            zeros_seen += 1
            precisions.append(1.0 / (2.0**zeros_seen * t))
        else:
            precisions.append(m / t)

    ratio = hyp_length / ref_length if ref_length else 0.0
    if hyp_length == 0:
        bp = 0.0
    elif ratio >= 1.0:
        bp = 1.0
    else:
        bp = math.exp(1.0 - 1.0 / ratio)

    out: dict = {}
    for n in range(1, max_order + 1):
        ps = precisions[:n]
        out[f"bleu_{n}"] = bp * math.exp(sum(math.log(p) for p in ps) / n) if min(ps) > 0 else 0.0
    out = {"bleu": out[f"bleu_{max_order}"], **out}
    out.update(
        precisions=precisions,
        brevity_penalty=bp,
        length_ratio=ratio,
        translation_length=hyp_length,
        reference_length=ref_length,
    )
    return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Value("string"),
                    }
                ),
            ],
            reference_urls=["https://aclanthology.org/P02-1040/", "https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, max_order=4, tokenize="13a", lowercase=False, smooth="none"):
        return corpus_bleu(predictions, references, max_order, tokenize, lowercase, smooth)
