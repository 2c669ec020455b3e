"""Offline evaluation metrics for OPT-Tri, packaged as local `evaluate` modules.

Each metric lives in ``modeling_opt_tri/metrics/<name>/<name>.py`` as one self-contained `evaluate.Metric` subclass
(plus the plain functions it wraps), so `evaluate.load` reads it from disk and never contacts the Hub::

    from modeling_opt_tri.metrics import load_metric, metric_path

    bleu = load_metric("bleu")                 # == evaluate.load(metric_path("bleu"))
    bleu.compute(predictions=["a cat sat"], references=[["a cat sat", "the cat sat"]])

The plain functions are also importable from here, without any `evaluate` cache files or Arrow tables, e.g. for a
validation loop: `recall_at_k`, `rank_gallery`, `retrieval_metrics_from_similarity`, `vqa_accuracy`,
`normalize_vqa_answer`, `corpus_bleu`, `tokenize_13a`, `cider_d`, `word_error_rate`.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

METRICS_DIR = Path(__file__).resolve().parent
AVAILABLE_METRICS = ("bleu", "cider", "recall_at_k", "vqa_accuracy", "wer")

# public plain function -> the metric script that defines it
_FUNCTIONS = {
    "recall_at_k": "recall_at_k",
    "rank_gallery": "recall_at_k",
    "retrieval_metrics_from_similarity": "recall_at_k",
    "vqa_accuracy": "vqa_accuracy",
    "normalize_vqa_answer": "vqa_accuracy",
    "corpus_bleu": "bleu",
    "tokenize_13a": "bleu",
    "cider_d": "cider",
    "word_error_rate": "wer",
}

__all__ = ["AVAILABLE_METRICS", "METRICS_DIR", "load_metric", "metric_path", *_FUNCTIONS]


def metric_path(name: str) -> str:
    """Absolute path of the folder holding metric `name` (what `evaluate.load` takes)."""
    if name not in AVAILABLE_METRICS:
        raise ValueError(f"Unknown metric {name!r}; available: {', '.join(AVAILABLE_METRICS)}")
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"Metric script {path / f'{name}.py'} is missing (broken install?)")
    return str(path)


def load_metric(name: str, **kwargs):
    """`evaluate.load(metric_path(name), **kwargs)`: loads from the local file, no network needed."""
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)


@functools.lru_cache(maxsize=None)
def _script_module(name: str) -> ModuleType:
    """Import a metric script as a regular module (its plain functions need no `evaluate.load`)."""
    module_name = f"{__name__}._scripts.{name}"
    spec = importlib.util.spec_from_file_location(module_name, Path(metric_path(name)) / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def __getattr__(attr: str):
    if attr in _FUNCTIONS:
        return getattr(_script_module(_FUNCTIONS[attr]), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def __dir__():
    return sorted([*globals(), *_FUNCTIONS])
