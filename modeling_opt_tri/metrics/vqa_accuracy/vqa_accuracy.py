"""VQA (v2) accuracy with the answer normalisation of the official VQA evaluation script."""

from __future__ import annotations

import re
from typing import Sequence

import datasets
import evaluate

_CITATION = """\
@inproceedings{goyal2017making,
  title={Making the {V} in {VQA} Matter: Elevating the Role of Image Understanding in Visual Question Answering},
  author={Goyal, Yash and Khot, Tejas and Summers-Stay, Douglas and Batra, Dhruv and Parikh, Devi},
  booktitle={CVPR},
  year={2017}
}
@inproceedings{antol2015vqa,
  title={{VQA}: Visual Question Answering},
  author={Antol, Stanislaw and Agrawal, Aishwarya and Lu, Jiasen and Mitchell, Margaret and Batra, Dhruv and
          Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={ICCV},
  year={2015}
}
"""

_DESCRIPTION = """\
VQA accuracy as computed by the official VQA evaluation script (vqaEval.py): for a question with N human answers
(N = 10 in VQAv2), the score is the average over the N leave-one-out subsets of min(#subset answers equal to the
prediction / 3, 1). With 10 answers that gives 0.3 for 1 match, 0.6 for 2, 0.9 for 3 and 1.0 for 4 or more.
Answers are normalised as in the official script: newlines/tabs to spaces, punctuation removed or spaced out,
periods not followed by a digit removed, lowercase, number words zero..ten to digits, articles (a, an, the) dropped,
and apostrophe-less contractions restored ("dont" -> "don't").
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one predicted answer per question.
    references (`list` of `list` of `str`): the human answers of each question (usually 10; at least 1).
    strict_official (`bool`, *optional*, defaults to `False`): reproduce the official script exactly, which only
        strips punctuation from the human answers (not number words/articles) and only when they disagree, because
        the released VQA annotations are already normalised. The default normalises human answers like the
        prediction, which gives the same scores on the official annotations and sensible ones on raw answers
        (e.g. human "Two" matches predicted "2").
Returns:
    `dict`: `"accuracy"`, the mean per-question accuracy in [0, 1] (the official script reports it x100).
    A question with a single human answer has no leave-one-out subset; it scores exact match (1.0 or 0.0).
Examples:
    >>> vqa = evaluate.load("modeling_opt_tri/metrics/vqa_accuracy")
    >>> vqa.compute(predictions=["Two"], references=[["2", "2", "two", "2", "3", "2", "2", "2", "2", "2"]])
    {'accuracy': 1.0}
"""

# Tables of the official VQA evaluation script (vqaEval.py).
_CONTRACTIONS = {
    k: v
    for k, v in (
        pair.split(":")
        for pair in (
            "aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've "
            "couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've "
            "hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's "
            "howd:how'd howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd "
            "itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't mightnt've:mightn't've "
            "mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've neednt:needn't notve:not've "
            "oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at shant:shan't "
            "shed've:she'd've she'dve:she'd've she's:she's shouldve:should've shouldnt:shouldn't "
            "shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd somebodyd've:somebody'd've "
            "somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's someoned:someone'd "
            "someoned've:someone'd've someone'dve:someone'd've someonell:someone'll someones:someone's "
            "somethingd:something'd somethingd've:something'd've something'dve:something'd've "
            "somethingll:something'll thats:that's thered:there'd thered've:there'd've there'dve:there'd've "
            "therere:there're theres:there's theyd:they'd theyd've:they'd've they'dve:they'd've theyll:they'll "
            "theyre:they're theyve:they've twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've "
            "werent:weren't whatll:what'll whatre:what're whats:what's whatve:what've whens:when's whered:where'd "
            "wheres:where's whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's "
            "whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't "
            "wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll "
            "yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've "
            "you'dve:you'd've youll:you'll youre:you're youve:you've"
        ).split()
    )
}
_NUMBER_WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBER_WORDS["none"] = "0"
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = list(";/[]\"{}()=+\\_-><@`,?!")  # no period (see below), colon or apostrophe
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official look-"behind" is a look-ahead for "<=digit"
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    """`processPunctuation` of the official script."""
    out = text
    for p in _PUNCTUATION:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The official call passes re.UNICODE (== 32) as `count`, so at most 32 periods are removed.
    return _PERIOD_STRIP.sub("", out, count=re.UNICODE)


def process_digit_article(text: str) -> str:
    """`processDigitArticle` of the official script."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(answer: str) -> str:
    """Full official normalisation of an answer (what the official script applies to predictions)."""
    return process_digit_article(process_punctuation(_clean(answer)))


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"Mismatch in the number of predictions ({len(predictions)}) and references ({len(references)})"
        )
    if len(predictions) == 0:
        raise ValueError("No questions given: predictions and references are empty")
    for i, (pred, answers) in enumerate(zip(predictions, references)):
        if not isinstance(pred, str):
            raise ValueError(f"Prediction {i} must be a string, got {type(pred).__name__}")
        if isinstance(answers, str) or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"References of question {i} must be a list of strings")
        if len(answers) == 0:
            raise ValueError(f"Question {i} has no human answers (empty references)")


def question_accuracy(prediction: str, answers: Sequence[str], strict_official: bool = False) -> float:
    """Accuracy of one predicted answer against the human answers of one question."""
    pred = normalize_vqa_answer(prediction)
    if strict_official:  # human answers used as given, punctuation-processed only when they disagree
        gts = [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    else:
        gts = [normalize_vqa_answer(a) for a in answers]
    matches = [gt == pred for gt in gts]
    if len(gts) == 1:
        return float(matches[0])
    total = sum(matches)
    # leave answer i out, count the matches among the others
    return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(gts)


def vqa_accuracy(
    predictions: Sequence[str], references: Sequence[Sequence[str]], strict_official: bool = False
) -> dict[str, float]:
    """Plain-Python VQA accuracy (same inputs and output as the `evaluate` metric)."""
    _check(predictions, references)
    scores = [question_accuracy(p, a, strict_official) for p, a in zip(predictions, references)]
    return {"accuracy": sum(scores) / len(scores)}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VqaAccuracy(evaluate.Metric):
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
            reference_urls=["https://visualqa.org/evaluation.html", "https://github.com/GT-Vision-Lab/VQA"],
        )

    def _compute(self, predictions, references, strict_official=False):
        return vqa_accuracy(predictions, references, strict_official)
