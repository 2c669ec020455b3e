"""CIDEr-D (Vedantam et al., 2015) exactly as computed by the coco-caption toolkit (pycocoevalcap `Cider`)."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Sequence

import datasets
import evaluate

_CITATION = """\
@inproceedings{vedantam2015cider,
  title={{CIDEr}: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={CVPR},
  pages={4566--4575},
  year={2015}
}
"""

_DESCRIPTION = """\
CIDEr-D, the captioning metric reported as "CIDEr" by the coco-caption toolkit. Each caption becomes tf-idf vectors of
its 1- to 4-grams, the idf being log(#images / #images whose references contain the n-gram), computed over the
references passed in (so the score depends on the whole evaluated corpus). Per n, the score is the cosine similarity
between candidate and each reference with candidate counts clipped by the reference counts, times a Gaussian length
penalty exp(-delta^2 / (2 * 6^2)); it is averaged over n = 1..4 and over the references, and multiplied by 10.
Mirrors pycocoevalcap's CiderScorer, including its quirk of measuring the length difference `delta` in bigram
counts (= word-count difference for captions of two or more words).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated caption per image.
    references (`list` of `list` of `str`): the reference captions of each image (at least one each).
    tokenize (`str`, *optional*, defaults to `"simple"`): `"simple"` lowercases and strips punctuation like the
        coco-caption PTBTokenizer step (an approximation: no Java tokenizer here), `"none"` splits on whitespace
        only, for captions that are already tokenised (this gives exactly pycocoevalcap's numbers).
    sigma (`float`, *optional*, defaults to 6.0): the width of the length penalty.
Returns:
    `dict`: `"cider"` (corpus mean) and `"scores"` (per-image CIDEr-D), both on the usual 0-10 scale.
Examples:
    >>> cider = evaluate.load("modeling_opt_tri/metrics/cider")
    >>> result = cider.compute(predictions=["a dog runs", "a cat sleeps"],
    ...                        references=[["a dog runs", "a dog is running"], ["a cat is sleeping"]])
    >>> round(result["cider"], 3)
    3.554
"""

_MAX_N = 4
# words (keeping inner hyphens) and clitics such as 's: what PTB tokenisation + coco-caption's punctuation removal keep
_TOKEN = re.compile(r"\w+(?:-\w+)*|'\w+")


def _simple_tokenize(text: str) -> str:
    return " ".join(_TOKEN.findall(text.lower()))


def _precook(sentence: str) -> Counter:
    words = sentence.split()
    return Counter(tuple(words[i : i + n]) for n in range(1, _MAX_N + 1) for i in range(len(words) - n + 1))


def cider_d(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    tokenize: str = "simple",
    sigma: float = 6.0,
) -> dict:
    """Plain-Python CIDEr-D (same inputs and outputs as the `evaluate` metric)."""
    if len(predictions) != len(references):
        raise ValueError(
            f"Mismatch in the number of predictions ({len(predictions)}) and references ({len(references)})"
        )
    if len(predictions) == 0:
        raise ValueError("No predictions given: predictions and references are empty")
    if tokenize not in ("simple", "none"):
        raise ValueError(f'`tokenize` must be "simple" or "none", got {tokenize!r}')
    if not sigma > 0:
        raise ValueError(f"`sigma` must be positive, got {sigma!r}")
    prep = _simple_tokenize if tokenize == "simple" else (lambda s: s)
    tests, crefs = [], []
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if not isinstance(pred, str) or isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"Item {i}: expected a caption string and a list of reference strings")
        if len(refs) == 0:
            raise ValueError(f"Prediction {i} has no references (empty references)")
        tests.append(_precook(prep(pred)))
        crefs.append([_precook(prep(r)) for r in refs])

    document_frequency: Counter = Counter()
    for refs in crefs:
        document_frequency.update({ngram for ref in refs for ngram in ref})
    log_num_images = math.log(float(len(crefs)))

    def counts2vec(counts: Counter):
        vec = [defaultdict(float) for _ in range(_MAX_N)]
        norm = [0.0] * _MAX_N
        length = 0
        for ngram, term_freq in counts.items():
            n = len(ngram) - 1
            df = math.log(max(1.0, document_frequency[ngram]))
            vec[n][ngram] = float(term_freq) * (log_num_images - df)
            norm[n] += vec[n][ngram] ** 2
            if n == 1:  # sic (coco-caption): the "length" counts bigrams
                length += term_freq
        return vec, [math.sqrt(x) for x in norm], length

    def sim(vec_hyp, vec_ref, norm_hyp, norm_ref, length_hyp, length_ref) -> list[float]:
        penalty = math.exp(-(float(length_hyp - length_ref) ** 2) / (2 * sigma**2))
        vals = []
        for n in range(_MAX_N):
            val = 0.0
            for ngram, value in vec_hyp[n].items():  # clipped by the reference tf-idf
                ref_value = vec_ref[n].get(ngram, 0.0)
                val += min(value, ref_value) * ref_value
            if norm_hyp[n] != 0 and norm_ref[n] != 0:
                val /= norm_hyp[n] * norm_ref[n]
            vals.append(val * penalty)
        return vals

    scores = []
    for test, refs in zip(tests, crefs):
        vec, norm, length = counts2vec(test)
        total = [0.0] * _MAX_N
        for ref in refs:
            vec_ref, norm_ref, length_ref = counts2vec(ref)
            total = [a + b for a, b in zip(total, sim(vec, vec_ref, norm, norm_ref, length, length_ref))]
        scores.append(sum(total) / _MAX_N / len(refs) * 10.0)
    return {"cider": sum(scores) / len(scores), "scores": scores}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Cider(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://arxiv.org/abs/1411.5726", "https://github.com/tylin/coco-caption"],
        )

    def _compute(self, predictions, references, tokenize="simple", sigma=6.0):
        return cider_d(predictions, references, tokenize, sigma)
