"""A catalogue of bad inputs, each with the behaviour we promise for it.

Every entry of `CASES` is `(name, callable, expectation)`:

- `Raises(error, match)`: the call raises `error` (or a subclass) whose message matches `match`, i.e. names the input
  and the problem. The innermost frame must be OPT-Tri's own code: an error from deep inside torch, transformers or
  PIL does not count as handled.
- `Returns(check, what)`: the input is normalised as documented (e.g. grayscale -> three equal RGB channels);
  `check(result)` must be true.
- `Warns(match, check, what)`: as `Returns`, and a warning matching `match` is logged (e.g. truncation).
- `Exits(match)`: a command-line run (a subprocess) fails with a non-zero status, and the last line of its stderr
  (the error message) matches `match`, raised from our code, not torch's.

One parametrised test drives the table; `test_catalogue_size` checks and prints how many cases it holds. The CLI cases
are `slow`: they start Python processes, run all at once the first time one of them is needed.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT, tiny_batch, tiny_config
from modeling_opt_tri import (
    OptTriAudioModel,
    OptTriConfig,
    OptTriFeatureExtractor,
    OptTriForPreTraining,
    OptTriImageProcessor,
    OptTriModel,
    OptTriProcessor,
)
from modeling_opt_tri.data import CorruptSampleError, decode_audio, decode_image, load_metadata_folder
from modeling_opt_tri.data.collate import TriModalCollator
from modeling_opt_tri.tokenizer_training import build_wordpiece_tokenizer
from modeling_opt_tri.training.pretrain import PretrainArguments, check_arguments

PACKAGE_DIR = REPO_ROOT / "modeling_opt_tri"
SR = 16000  # the feature extractor's rate


# ----------------------------------------------------------------------------------------------------------------------
# Expectations
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raises:
    error: type[BaseException]
    match: str


@dataclass(frozen=True)
class Returns:
    check: Callable[[Any], bool]
    what: str


@dataclass(frozen=True)
class Warns:
    match: str
    check: Callable[[Any], bool]
    what: str


@dataclass(frozen=True)
class Exits:
    match: str


# ----------------------------------------------------------------------------------------------------------------------
# Shared, lazily built objects (tiny, local, no downloads)
# ----------------------------------------------------------------------------------------------------------------------


@functools.cache
def _workdir() -> Path:
    holder = tempfile.TemporaryDirectory(prefix="opt_tri_bad_inputs_")
    _workdir.holder = holder  # keep it alive for the session; removed at interpreter exit
    return Path(holder.name)


@functools.cache
def _processor() -> OptTriProcessor:
    corpus = ["a red circle", "a blue square on the left", "two small green triangles"] * 4
    tokenizer = build_wordpiece_tokenizer(corpus, vocab_size=60, model_max_length=16)
    return OptTriProcessor(
        image_processor=OptTriImageProcessor(image_size=32),
        feature_extractor=OptTriFeatureExtractor(feature_size=16, max_length_seconds=1.0),
        tokenizer=tokenizer,
    )


def _image_processor() -> OptTriImageProcessor:
    return _processor().image_processor


def _feature_extractor() -> OptTriFeatureExtractor:
    return _processor().feature_extractor


@functools.cache
def _model() -> OptTriModel:
    torch.manual_seed(0)
    return OptTriModel(tiny_config()).eval()


@functools.cache
def _pretraining_model() -> OptTriForPreTraining:
    torch.manual_seed(0)
    return OptTriForPreTraining(tiny_config())


@functools.cache
def _bert_dir() -> str:
    """A saved tiny BertModel: a checkpoint of another model type."""
    from transformers import BertConfig, BertModel

    path = _workdir() / "bert"
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(path)
    return str(path)


def _batch(**changes) -> dict[str, torch.Tensor]:
    batch = tiny_batch()
    batch.update(changes)
    return {k: v for k, v in batch.items() if v is not None}


def _folder(name: str, metadata: bytes | str | None, files: dict[str, bytes] | None = None) -> str:
    """A dataset folder holding `metadata` as its metadata.jsonl (none when None) and `files`."""
    root = _workdir() / name
    root.mkdir(exist_ok=True)
    if metadata is not None:
        data = metadata.encode() if isinstance(metadata, str) else metadata
        (root / "metadata.jsonl").write_bytes(data)
    for relative, content in (files or {}).items():
        (root / relative).write_bytes(content)
    return str(root)


def _png(size=(16, 16), mode="RGB", color=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav(samples: np.ndarray, rate: int = SR) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _tone(seconds: float, rate: int = SR, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


@contextlib.contextmanager
def _logged_warnings():
    """Collect the warnings our modules log (they use `transformers.utils.logging.get_logger(__name__)`)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger(PACKAGE_DIR.name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


# ----------------------------------------------------------------------------------------------------------------------
# Individual inputs that need more than a lambda
# ----------------------------------------------------------------------------------------------------------------------


def _pixels(image, **kwargs) -> np.ndarray:
    return _image_processor()(image, do_normalize=False, **kwargs)["pixel_values"][0]  # (3, S, S) in [0, 1]


def _gray_image() -> Image.Image:
    return Image.fromarray((np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8), mode="L")


def _gray_is_equal_rgb(pixels: np.ndarray) -> bool:
    expected = np.asarray(_gray_image(), dtype=np.float32) / 255.0
    return all(np.allclose(pixels[c], expected, atol=1e-6) for c in range(3))


def _image_16bit() -> Image.Image:
    values = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16"), image.mode
    return image


def _is_16bit_scaled(pixels: np.ndarray) -> bool:
    expected = np.asarray(_image_16bit(), dtype=np.float32) / 65535.0
    return all(np.allclose(pixels[c], expected, atol=1e-6) for c in range(3))


def _collate(rows):
    return TriModalCollator(_processor())(rows)


def _cli_case(name: str) -> Callable[[], subprocess.CompletedProcess]:
    return lambda: _cli_results()[name]


def _pretrain_cli(*extra: str) -> list[str]:
    output = _workdir() / "cli_output"
    return [
        sys.executable, str(REPO_ROOT / "examples" / "pretrain.py"), "--preset", str(REPO_ROOT / "configuration" / "tiny"),
        "--output_dir", str(output), "--train_rows", "8", "--eval_rows", "8", "--batch_size", "4", "--max_steps", "1",
        "--progress", "false", "--tensorboard", "false", "--evaluate", "false", *extra,
    ]


def _evaluate_cli(model: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "examples" / "evaluate_retrieval.py"), "--model", model, "--eval_rows", "8"]


@functools.cache
def _cli_results() -> dict[str, subprocess.CompletedProcess]:
    """Run every CLI case at once (each is a Python start-up, ~5 s of CPU), then hand out the results."""
    commands = {
        "pretrain_missing_dataset": _pretrain_cli("--dataset", str(_workdir() / "no_such_dataset")),
        "pretrain_bad_mixed_precision": _pretrain_cli("--mixed_precision", "fp32"),
        "pretrain_unknown_objective": _pretrain_cli("--objectives", "mlm=1,foo=2"),
        "pretrain_bad_itm_rows": _pretrain_cli("--itm_rows_per_sample", "2"),
        "evaluate_missing_model": _evaluate_cli(str(_workdir() / "no_such_model")),
        "evaluate_bert_checkpoint": _evaluate_cli(_bert_dir()),
        "evaluate_negative_rerank": [*_evaluate_cli(str(_workdir() / "no_such_model")), "--rerank", "-1"],
        "evaluate_negative_rerank_weight": [
            *_evaluate_cli(str(_workdir() / "no_such_model")), "--rerank", "5", "--rerank_similarity_weight", "-1"
        ],
    }
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
        HF_DATASETS_CACHE=str(_workdir() / "hf_datasets"), PYTHONUNBUFFERED="1",
    )
    processes = {
        name: subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, command in commands.items()
    }
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(commands[name], process.returncode, stdout, stderr)
    return results


# ----------------------------------------------------------------------------------------------------------------------
# The catalogue
# ----------------------------------------------------------------------------------------------------------------------

_TRUNCATED_PNG = _png()[:60]
_SLOW_CASES = set()


def _cli(name: str, match: str):
    _SLOW_CASES.add(f"cli:{name}")
    return (f"cli:{name}", _cli_case(name), Exits(match))


CASES: list[tuple[str, Callable[[], Any], Raises | Returns | Warns | Exits]] = [
    # ---- image processor: corrupt values and documented normalisation --------------------------------------------
    ("image_processor:grayscale_becomes_equal_rgb", lambda: _pixels(_gray_image()),
     Returns(_gray_is_equal_rgb, "L image -> three equal channels, value/255")),
    ("image_processor:grayscale_numpy_2d", lambda: _pixels(np.asarray(_gray_image())),
     Returns(_gray_is_equal_rgb, "[H, W] uint8 array -> three equal channels")),
    ("image_processor:rgba_composited_on_white", lambda: _pixels(Image.new("RGBA", (32, 32), (255, 0, 0, 0))),
     Returns(lambda p: np.allclose(p, 1.0), "fully transparent RGBA -> white (alpha over white, as in training)")),
    ("image_processor:16bit_pil_scaled", lambda: _pixels(_image_16bit()),
     Returns(_is_16bit_scaled, "I;16 image -> value/65535 on three equal channels")),
    ("image_processor:16bit_numpy_scaled", lambda: _pixels(np.full((32, 32, 3), 32768, np.uint16)),
     Returns(lambda p: np.allclose(p, 32768 / 65535), "uint16 array -> value/65535")),
    ("image_processor:zero_size_image", lambda: _image_processor()(Image.new("RGB", (0, 0))),
     Raises(ValueError, r"images\[0\]: image has zero size: 0x0")),
    ("image_processor:zero_size_array", lambda: _image_processor()(np.zeros((0, 5, 3), np.uint8)),
     Raises(ValueError, r"images\[0\]: image has zero size")),
    ("image_processor:nan_pixels", lambda: _image_processor()([None, np.full((8, 8, 3), np.nan, np.float32)]),
     Raises(ValueError, r"images\[1\]: image contains NaN or inf")),
    ("image_processor:inf_pixels_tensor", lambda: _image_processor()(torch.full((3, 8, 8), float("inf"))),
     Raises(ValueError, r"images\[0\]: image contains NaN or inf")),
    ("image_processor:float_pixels_0_255", lambda: _image_processor()(np.full((8, 8, 3), 255.0, np.float32)),
     Raises(ValueError, r"images\[0\]: float images must have values in \[0, 1\], got range \[255, 255\]")),
    ("image_processor:int64_pixels_above_16_bit", lambda: _image_processor()(np.full((8, 8, 3), 70000, np.int64)),
     Raises(ValueError, r"images\[0\]: integer image of dtype int64 has values up to 70000, above the 16-bit range")),
    ("image_processor:five_channels", lambda: _image_processor()(np.zeros((8, 8, 5), np.uint8)),
     Raises(ValueError, r"images\[0\]: image of shape \(8, 8, 5\) has no channel axis with 1, 3 or 4 channels")),
    ("image_processor:empty_list", lambda: _image_processor()([]),
     Raises(ValueError, r"images is an empty list")),
    # ---- feature extractor ---------------------------------------------------------------------------------------
    ("feature_extractor:silent_audio_finite", lambda: _feature_extractor()(np.zeros(SR // 2, np.float32), sampling_rate=SR),
     Returns(lambda f: np.isfinite(f["input_features"]).all() and f["audio_attention_mask"].sum() == 51,
             "all-zero clip -> finite features (log floor), every frame real")),
    ("feature_extractor:clipped_audio_finite",
     lambda: _feature_extractor()(np.sign(_tone(0.5, amplitude=1.0)).astype(np.float32), sampling_rate=SR),
     Returns(lambda f: np.isfinite(f["input_features"]).all(), "hard-clipped (+-1 square) clip -> finite features")),
    ("feature_extractor:very_long_audio_truncated",
     lambda: _feature_extractor()([np.zeros(5 * SR, np.float32), np.zeros(SR // 4, np.float32)], sampling_rate=SR),
     Warns(r"1 of 2 audio clips were longer than max_length_seconds=1.0 and were truncated",
           lambda f: f["audio_attention_mask"][0].sum() == 1 + SR // 160 and f["input_features"].shape[-1] == 104,
           "5 s clip cut to max_length_seconds=1.0 (101 frames)")),
    ("feature_extractor:empty_audio", lambda: _feature_extractor()([_tone(0.1), np.zeros(0, np.float32)], sampling_rate=SR),
     Raises(ValueError, r"audio\[1\]: audio is empty \(0 samples\)")),
    ("feature_extractor:stereo_audio", lambda: _feature_extractor()(np.zeros((SR, 2), np.float32), sampling_rate=SR),
     Raises(ValueError, r"audio\[0\]: audio must be mono \(1-D\), got a 2-D array of shape \(16000, 2\) \(stereo")),
    ("feature_extractor:nan_audio", lambda: _feature_extractor()(np.full(1600, np.nan, np.float32), sampling_rate=SR),
     Raises(ValueError, r"audio\[0\]: audio contains NaN or inf")),
    ("feature_extractor:inf_audio", lambda: _feature_extractor()(torch.full((1600,), float("-inf")), sampling_rate=SR),
     Raises(ValueError, r"audio\[0\]: audio contains NaN or inf")),
    ("feature_extractor:sampling_rate_zero", lambda: _feature_extractor()(_tone(0.1), sampling_rate=0),
     Raises(ValueError, r"sampling_rate must be a positive int \(Hz\), got 0")),
    ("feature_extractor:sampling_rate_negative", lambda: _feature_extractor()(_tone(0.1), sampling_rate=-8000),
     Raises(ValueError, r"sampling_rate must be a positive int \(Hz\), got -8000")),
    ("feature_extractor:sampling_rate_none", lambda: _feature_extractor()(_tone(0.1), sampling_rate=None),
     Raises(ValueError, r"sampling_rate is required")),
    ("feature_extractor:sampling_rate_float", lambda: _feature_extractor()(_tone(0.1), sampling_rate=16000.5),
     Raises(ValueError, r"sampling_rate must be a positive int \(Hz\), got 16000.5")),
    ("feature_extractor:int64_samples_outside_int16", lambda: _feature_extractor()(np.full(1600, 40000, np.int64), sampling_rate=SR),
     Raises(ValueError, r"audio\[0\]: int64 audio samples .* lie in \[40000, 40000\], outside \[-32768, 32767\]")),
    # ---- processor -----------------------------------------------------------------------------------------------
    ("processor:no_modality", lambda: _processor()(),
     Raises(ValueError, r"no modality given")),
    ("processor:audio_without_sampling_rate", lambda: _processor()(audio=[_tone(0.1)]),
     Raises(ValueError, r"audio was given without sampling_rate")),
    ("processor:audio_sampling_rate_zero", lambda: _processor()(audio=[_tone(0.1)], sampling_rate=0),
     Raises(ValueError, r"sampling_rate must be a positive int \(Hz\), got 0")),
    ("processor:mismatched_batch_sizes", lambda: _processor()(text=["a red circle", "a blue square"], images=[_gray_image()]),
     Raises(ValueError, r"batch sizes of the modalities differ: text has 2, images has 1 rows")),
    ("processor:empty_string_is_cls_sep", lambda: _processor()(text=[""]),
     Returns(lambda b: b["input_ids"].tolist() == [[2, 3]] and b["attention_mask"].tolist() == [[1, 1]],
             "'' -> [CLS] [SEP], both attended")),
    ("processor:text_past_max_length_truncated", lambda: _processor()(text=["a red circle " * 40, "a blue square"]),
     Warns(r"1 of 2 text rows were longer than max_length=16 tokens and were truncated",
           lambda b: b["input_ids"].shape == (2, 16) and b["input_ids"][0, -1].item() == 3,
           "cut to model_max_length=16, still ending in [SEP]")),
    ("processor:max_length_zero", lambda: _processor()(text=["a red circle"], max_length=0),
     Raises(ValueError, r"max_length must be a positive int \(a number of tokens\), got 0")),
    ("processor:max_length_negative", lambda: _processor()(text=["a red circle"], max_length=-1),
     Raises(ValueError, r"max_length must be a positive int \(a number of tokens\), got -1")),
    ("processor:max_length_below_special_tokens", lambda: _processor()(text=["a red circle"], max_length=1),
     Raises(ValueError, r"max_length=1 is shorter than the 2 special tokens")),
    ("processor:bytes_text", lambda: _processor()(text=["a red circle", "caf\xe9".encode("latin-1")]),
     Raises(TypeError, r"text\[1\] is a bytes, expected str or None")),
    ("processor:empty_text_list", lambda: _processor()(text=[]),
     Raises(ValueError, r"text is an empty list")),
    # ---- model: dtypes, shapes, values ---------------------------------------------------------------------------
    ("model:int_pixel_values", lambda: _model()(**_batch(pixel_values=torch.zeros(4, 3, 32, 32, dtype=torch.uint8))),
     Raises(TypeError, r"pixel_values must be a floating-point tensor .* got dtype torch.uint8")),
    ("model:float_input_ids", lambda: _model()(**_batch(input_ids=tiny_batch()["input_ids"].float())),
     Raises(TypeError, r"input_ids must be an integer tensor of token ids, got dtype torch.float32")),
    ("model:int_input_features", lambda: _model()(input_features=torch.zeros(4, 16, 40, dtype=torch.int64)),
     Raises(TypeError, r"input_features must be a floating-point tensor .* got dtype torch.int64")),
    ("model:numpy_pixel_values", lambda: _model()(pixel_values=np.zeros((4, 3, 32, 32), np.float32)),
     Raises(TypeError, r"pixel_values must be a torch.Tensor, got ndarray")),
    ("model:mismatched_batch_sizes", lambda: _model()(**_batch(pixel_values=torch.zeros(2, 3, 32, 32))),
     Raises(ValueError, r"batch sizes of the modalities do not match: .*'input_ids': 4, 'pixel_values': 2")),
    ("model:empty_batch", lambda: _model()(input_ids=torch.zeros(0, 5, dtype=torch.long)),
     Raises(ValueError, r"The batch is empty: input_ids has batch size 0")),
    ("model:no_modality", lambda: _model()(),
     Raises(ValueError, r"No modality given")),
    ("model:nan_pixel_values", lambda: _model()(**_batch(pixel_values=torch.full((4, 3, 32, 32), float("nan")))),
     Raises(ValueError, r"pixel_values contains NaN or inf")),
    ("model:inf_input_features", lambda: _model()(input_features=torch.full((4, 16, 40), float("inf"))),
     Raises(ValueError, r"input_features contains NaN or inf")),
    ("model:attention_mask_wrong_shape", lambda: _model()(**_batch(attention_mask=torch.ones(4, 3, dtype=torch.long))),
     Raises(ValueError, r"attention_mask must have shape \(4, 10\) to match the inputs; got \(4, 3\)")),
    ("model:audio_mask_wrong_shape", lambda: _model()(**_batch(audio_attention_mask=torch.ones(4, 7, dtype=torch.long))),
     Raises(ValueError, r"audio_attention_mask must have shape \(4, 40\) to match the inputs; got \(4, 7\)")),
    ("model:text_past_max_positions", lambda: _model()(input_ids=torch.randint(5, 100, (2, 100))),
     Raises(ValueError, r"input_ids has 100 tokens per row, more than text_config.max_position_embeddings=64")),
    ("model:input_ids_out_of_vocabulary", lambda: _model()(input_ids=torch.full((2, 5), 100)),
     Raises(ValueError, r"input_ids must be in \[0, 100\); got values in \[100, 100\]")),
    ("model:token_type_ids_out_of_range",
     lambda: _model()(**_batch(token_type_ids=torch.full((4, 10), 5, dtype=torch.long))),
     Raises(ValueError, r"token_type_ids must be in \[0, 2\); got values in \[5, 5\]")),
    ("model:pixel_values_wrong_size", lambda: _model()(pixel_values=torch.zeros(2, 3, 64, 64)),
     Raises(ValueError, r"pixel_values must have shape \(batch, 3, 32, 32\); got \(2, 3, 64, 64\)")),
    ("model:audio_too_long", lambda: _model()(input_features=torch.zeros(2, 16, 1000)),
     Raises(ValueError, r"audio is too long: 1000 frames give 250 audio tokens")),
    ("pretraining:int_pixel_values",
     lambda: _pretraining_model()(**_batch(pixel_values=torch.zeros(4, 3, 32, 32, dtype=torch.int32))),
     Raises(TypeError, r"pixel_values must be a floating-point tensor .* got dtype torch.int32")),
    ("pretraining:float_input_ids", lambda: _pretraining_model()(**_batch(input_ids=tiny_batch()["input_ids"].double())),
     Raises(TypeError, r"input_ids must be an integer tensor of token ids, got dtype torch.float64")),
    ("pretraining:nan_input_features",
     lambda: _pretraining_model()(**_batch(input_features=torch.full((4, 16, 40), float("nan")))),
     Raises(ValueError, r"input_features contains NaN or inf")),
    ("pretraining:mismatched_batch_sizes",
     lambda: _pretraining_model()(**_batch(input_features=torch.zeros(3, 16, 40), audio_attention_mask=None)),
     Raises(ValueError, r"batch sizes of the modalities do not match: .*'input_features': 3")),
    ("pretraining:image_mask_wrong_shape",
     lambda: _pretraining_model()(**_batch(image_mask=torch.ones(3, dtype=torch.long))),
     Raises(ValueError, r"image_mask must have shape \(4,\) to match the inputs; got \(3,\)")),
    ("pretraining:unknown_task", lambda: _pretraining_model()(**_batch(), tasks=["mlm", "foo"]),
     Raises(ValueError, r"Unknown pre-training tasks \['foo'\]")),
    # ---- configs -------------------------------------------------------------------------------------------------
    ("config:fusion_hidden_not_divisible_by_heads",
     lambda: tiny_config(cross_modal_config=dict(hidden_size=50, num_hidden_layers=1, num_attention_heads=4)),
     Raises(ValueError, r"OptTriFusionConfig: hidden_size \(50\) must be divisible by num_attention_heads \(4\)")),
    ("config:text_hidden_not_divisible_by_heads",
     lambda: tiny_config(text_config=dict(vocab_size=100, hidden_size=30, num_attention_heads=4)),
     Raises(ValueError, r"BertConfig: hidden_size \(30\) must be divisible by num_attention_heads \(4\)")),
    ("config:audio_heads_zero", lambda: tiny_config(audio_config=dict(hidden_size=32, num_attention_heads=0)),
     Raises(ValueError, r"OptTriAudioConfig.num_attention_heads must be a positive int, got 0")),
    ("config:image_size_not_divisible_by_patch",
     lambda: tiny_config(vision_config=dict(model_type="vit", image_size=30, patch_size=8, hidden_size=32,
                                            num_attention_heads=2)),
     Raises(ValueError, r"vision_config.image_size \(30\) must be divisible by patch_size \(8\)")),
    ("config:patch_size_zero",
     lambda: tiny_config(vision_config=dict(model_type="vit", image_size=32, patch_size=0, hidden_size=32,
                                            num_attention_heads=2)),
     Raises(ValueError, r"ViTConfig.patch_size must be a positive int, got 0")),
    ("config:projection_dim_zero", lambda: tiny_config(projection_dim=0),
     Raises(ValueError, r"OptTriConfig.projection_dim must be a positive int, got 0")),
    ("config:negative_probability", lambda: tiny_config(mlm_probability=-0.1),
     Raises(ValueError, r"mlm_probability must be a float in \[0, 1\), got -0.1")),
    ("config:probability_nan", lambda: tiny_config(modality_mask_probability=float("nan")),
     Raises(ValueError, r"modality_mask_probability must be a float in \[0, 1\), got nan")),
    ("config:negative_objective_weight", lambda: tiny_config(objectives={"mlm": -1.0}),
     Raises(ValueError, r"objectives\['mlm'\] must be a non-negative number, got -1.0")),
    ("config:string_hidden_size", lambda: tiny_config(audio_config=dict(hidden_size="32")),
     Raises(ValueError, r"OptTriAudioConfig.hidden_size must be a positive int, got '32'")),
    ("config:logit_scale_nan", lambda: tiny_config(logit_scale_init_value=float("nan")),
     Raises(ValueError, r"logit_scale_init_value must be a finite number, got nan")),
    # ---- checkpoints of another model type, paths that do not exist ----------------------------------------------
    ("config:from_pretrained_bert_checkpoint", lambda: OptTriConfig.from_pretrained(_bert_dir()),
     Raises(ValueError, r"Cannot build OptTriConfig \(model_type 'opt_tri'\) from a config of model_type 'bert'")),
    ("model:from_pretrained_bert_checkpoint", lambda: OptTriModel.from_pretrained(_bert_dir()),
     Raises(ValueError, r"OptTriConfig \(model_type 'opt_tri'\) from a config of model_type 'bert'")),
    ("pretraining:from_pretrained_bert_checkpoint", lambda: OptTriForPreTraining.from_pretrained(_bert_dir()),
     Raises(ValueError, r"OptTriConfig \(model_type 'opt_tri'\) from a config of model_type 'bert'")),
    ("audio_model:from_pretrained_bert_checkpoint", lambda: OptTriAudioModel.from_pretrained(_bert_dir()),
     Raises(ValueError, r"OptTriAudioConfig \(model_type 'opt_tri_audio'\) from a config of model_type 'bert'")),
    ("config:from_pretrained_missing_folder", lambda: OptTriConfig.from_pretrained(str(_workdir() / "no" / "such")),
     Raises(FileNotFoundError, r"no/such' does not exist: it is neither a local checkpoint folder nor a valid Hub")),
    # ---- metadata folders ----------------------------------------------------------------------------------------
    ("folder:path_does_not_exist", lambda: load_metadata_folder(_workdir() / "no_such_folder"),
     Raises(FileNotFoundError, r"dataset folder '.*no_such_folder' does not exist")),
    ("folder:no_metadata_file", lambda: load_metadata_folder(_folder("no_metadata", None)),
     Raises(FileNotFoundError, r"no metadata.jsonl in dataset folder '.*no_metadata'")),
    ("folder:missing_modality_columns", lambda: load_metadata_folder(_folder("no_columns", '{"caption": "a red circle"}\n')),
     Raises(ValueError, r"no_columns/metadata.jsonl:1: row has none of 'text', 'image' or 'audio'")),
    ("folder:text_column_not_a_string",
     lambda: load_metadata_folder(_folder("text_int", '{"text": "ok"}\n{"text": 5}\n')),
     Raises(ValueError, r"text_int/metadata.jsonl:2: column 'text' must be a string, got int")),
    ("folder:non_utf8_metadata", lambda: load_metadata_folder(_folder("latin1", b'{"text": "caf\xe9"}\n')),
     Raises(ValueError, r"latin1/metadata.jsonl:1: line 1 is not valid UTF-8")),
    ("folder:path_escapes_folder", lambda: load_metadata_folder(_folder("escape", '{"image": "../../etc/passwd"}\n')),
     Raises(ValueError, r"image path '../../etc/passwd' escapes the dataset folder")),
    ("folder:missing_media_file_is_loaded_lazily",
     lambda: load_metadata_folder(_folder("lazy", '{"text": "x", "image": "gone.png"}\n'))[0],
     Returns(lambda row: row["image"].endswith("lazy/gone.png") and row["audio"] is None,
             "paths are resolved, not opened: a missing file costs one skipped row at decode time")),
    # ---- decoding ------------------------------------------------------------------------------------------------
    ("decode_image:truncated_png", lambda: decode_image(_TRUNCATED_PNG, context="row 7"),
     Raises(CorruptSampleError, r"row 7: bytes: unreadable or truncated image")),
    ("decode_image:corrupt_bytes", lambda: decode_image({"bytes": b"GIF89a not really", "path": "x.gif"}, context="row 8"),
     Raises(CorruptSampleError, r"row 8: file 'x.gif': unreadable or truncated image")),
    ("decode_image:empty_bytes", lambda: decode_image(b"", context="row 9"),
     Raises(CorruptSampleError, r"row 9: bytes: empty image bytes")),
    ("decode_image:path_does_not_exist", lambda: decode_image(str(_workdir() / "gone.png"), context="row 3"),
     Raises(CorruptSampleError, r"row 3: file '.*gone.png': image file does not exist")),
    ("decode_image:zero_size_array", lambda: decode_image(np.zeros((0, 4, 3), np.uint8), context="row 4"),
     Raises(CorruptSampleError, r"row 4: ndarray: image has zero size: shape \(0, 4, 3\)")),
    ("decode_image:nan_array", lambda: decode_image(np.full((4, 4, 3), np.nan), context="row 5"),
     Raises(CorruptSampleError, r"row 5: ndarray: image contains NaN or inf")),
    ("decode_image:grayscale_becomes_equal_rgb", lambda: np.asarray(decode_image(Image.new("L", (4, 4), 77))),
     Returns(lambda a: a.shape == (4, 4, 3) and (a == 77).all(), "L -> RGB with three equal channels")),
    ("decode_image:rgba_composited_on_white",
     lambda: np.asarray(decode_image(_png((4, 4), "RGBA", (255, 0, 0, 0)))),
     Returns(lambda a: (a == 255).all(), "fully transparent pixels -> white (alpha over white)")),
    ("decode_image:16bit_rescaled", lambda: np.asarray(decode_image(Image.fromarray(np.full((4, 4), 65535, np.uint16)))),
     Returns(lambda a: a.shape == (4, 4, 3) and (a == 255).all(), "16-bit 65535 -> 255 on three channels")),
    ("decode_audio:sampling_rate_zero", lambda: decode_audio({"array": _tone(0.1), "sampling_rate": 0}, context="row 1"),
     Raises(CorruptSampleError, r"row 1: dict value: sampling_rate must be a positive int \(Hz\), got 0")),
    ("decode_audio:sampling_rate_negative", lambda: decode_audio({"array": _tone(0.1), "sampling_rate": -1}, "row 1"),
     Raises(CorruptSampleError, r"row 1: dict value: sampling_rate must be a positive int \(Hz\), got -1")),
    ("decode_audio:sampling_rate_none", lambda: decode_audio({"array": _tone(0.1), "sampling_rate": None}, "row 1"),
     Raises(CorruptSampleError, r"row 1: dict value: sampling_rate must be a positive int \(Hz\), got None")),
    ("decode_audio:sampling_rate_fractional", lambda: decode_audio({"array": _tone(0.1), "sampling_rate": 16000.7}, "r"),
     Raises(CorruptSampleError, r"sampling_rate must be a whole number of Hz, got 16000.7")),
    ("decode_audio:sampling_rate_inf", lambda: decode_audio({"array": _tone(0.1), "sampling_rate": float("inf")}, "r"),
     Raises(CorruptSampleError, r"sampling_rate must be a positive int \(Hz\), got inf")),
    ("decode_audio:nan_samples", lambda: decode_audio({"array": np.full(10, np.nan), "sampling_rate": SR}, "row 2"),
     Raises(CorruptSampleError, r"row 2: dict value: audio contains NaN or inf samples")),
    ("decode_audio:empty", lambda: decode_audio({"array": np.zeros(0, np.float32), "sampling_rate": SR}, "row 2"),
     Raises(CorruptSampleError, r"row 2: dict value: empty audio \(0 samples\)")),
    ("decode_audio:truncated_wav", lambda: decode_audio(_wav(_tone(0.1))[:30], context="row 6"),
     Raises(CorruptSampleError, r"row 6: bytes: unreadable or truncated audio")),
    ("decode_audio:path_does_not_exist", lambda: decode_audio(str(_workdir() / "gone.wav"), context="row 6"),
     Raises(CorruptSampleError, r"row 6: file '.*gone.wav': audio file does not exist")),
    ("decode_audio:stereo_downmixed",
     lambda: decode_audio({"array": np.stack([np.full(100, 0.5), np.full(100, -0.1)], axis=1), "sampling_rate": SR}),
     Returns(lambda r: r[0].shape == (100,) and np.allclose(r[0], 0.2) and r[1] == SR, "[N, 2] -> mean of channels")),
    ("decode_audio:stereo_wav_downmixed",
     lambda: decode_audio(_wav(np.stack([np.full(800, 0.5), np.full(800, -0.5)], axis=1), rate=8000)),
     Returns(lambda r: r[0].shape == (800,) and np.allclose(r[0], 0.0, atol=1e-4) and r[1] == 8000,
             "stereo WAV -> mono mean, file rate kept")),
    # ---- collator ------------------------------------------------------------------------------------------------
    ("collator:non_utf8_text_skipped_and_counted",
     lambda: _collate([{"id": "r0", "text": b"\xff\xfe broken"}, {"id": "r1", "text": "a red circle"}]),
     Returns(lambda b: b["num_skipped_rows"] == 1 and "row r0: text is not valid UTF-8" in b["skipped_reasons"][0]
             and b["input_ids"].shape[0] == 1, "the bad row is skipped, counted and named; the batch goes on")),
    ("collator:every_row_bad", lambda: _collate([{"id": "a", "text": b"\xff"}, {"id": "b", "image": _TRUNCATED_PNG}]),
     Returns(lambda b: set(b) == {"num_skipped_rows", "skipped_reasons"} and b["num_skipped_rows"] == 2
             and "row b: bytes: unreadable or truncated image" in b["skipped_reasons"][1],
             "only the counters when no row survives")),
    ("collator:blank_text_only_row_skipped", lambda: _collate([{"text": "   "}, {"text": "a red circle"}]),
     Returns(lambda b: b["num_skipped_rows"] == 1 and "row 0: the row has no text, image or audio" in b["skipped_reasons"][0],
             "blank text counts as no text")),
    ("collator:bad_sampling_rate_row_skipped",
     lambda: _collate([{"id": "s", "text": "a", "audio": {"array": _tone(0.1), "sampling_rate": 0}}, {"text": "b"}]),
     Returns(lambda b: b["num_skipped_rows"] == 1 and "row s: dict value: sampling_rate must be a positive int" in
             b["skipped_reasons"][0], "sampling_rate 0 -> row skipped and counted")),
    ("collator:row_not_a_dict", lambda: _collate(["just a string", {"text": "a red circle"}]),
     Returns(lambda b: b["num_skipped_rows"] == 1 and "row 0: expected a dict of columns, got str" in b["skipped_reasons"][0],
             "a non-dict row is skipped and counted, not an AttributeError")),
    ("collator:silent_audio_at_8khz_finite",
     lambda: _collate([{"text": "a red circle", "audio": {"array": np.zeros(800, np.float32), "sampling_rate": 8000}}]),
     Returns(lambda b: bool(torch.isfinite(b["input_features"]).all()) and b["num_skipped_rows"] == 0,
             "silence at another rate is resampled and gives finite features")),
    # ---- pre-training arguments (checked before anything is built) ------------------------------------------------
    ("pretrain_args:missing_preset", lambda: check_arguments(PretrainArguments(preset=str(_workdir() / "no_preset"))),
     Raises(FileNotFoundError, r"--preset '.*no_preset': no such file or folder")),
    ("pretrain_args:missing_init_text", lambda: check_arguments(PretrainArguments(init_text="./no/such/bert")),
     Raises(FileNotFoundError, r"--init_text './no/such/bert': no such file or folder")),
    ("pretrain_args:bad_schedule", lambda: check_arguments(PretrainArguments(schedule="round_robin")),
     Raises(ValueError, r"--schedule must be 'weighted' or 'mix', got 'round_robin'")),
    ("pretrain_args:mix_ratio_not_a_number", lambda: check_arguments(PretrainArguments(mix_ratios="mlm=x")),
     Raises(ValueError, r"mix ratio 'mlm': weight 'x' is not a number")),
    # ---- command-line tools (subprocesses) -----------------------------------------------------------------------
    _cli("pretrain_missing_dataset", r"^FileNotFoundError: --dataset '.*no_such_dataset': no such file or folder"),
    _cli("pretrain_bad_mixed_precision", r"^ValueError: --mixed_precision must be no, fp16 or bf16, got 'fp32'"),
    _cli("pretrain_unknown_objective", r"^ValueError: Unknown objective 'foo'; known: \["),
    _cli("pretrain_bad_itm_rows", r"^ValueError: --itm_rows_per_sample must be 1 or 3 \(or unset\), got 2"),
    _cli("evaluate_missing_model", r"error: --model '.*no_such_model': no such checkpoint folder"),
    _cli("evaluate_negative_rerank", r"error: --rerank must be 0 \(off\) or a positive shortlist size, got -1"),
    _cli("evaluate_negative_rerank_weight", r"error: --rerank_similarity_weight must be a number >= 0, got -1.0"),
    _cli("evaluate_bert_checkpoint", r"^ValueError: Cannot build OptTriConfig \(model_type 'opt_tri'\) from a config of "
                                     r"model_type 'bert'"),
]


# ----------------------------------------------------------------------------------------------------------------------
# Round 2 (issue 14): decoding faults. Training (the collator decodes with `decode_image`, then processes) and
# inference (`processor(images=...)`) must see the same pixels; integer samples and pixels follow one documented rule;
# absurd sampling rates, FIFOs and decompression bombs are corrupt rows in the data path and clear errors in the API.
# ----------------------------------------------------------------------------------------------------------------------

_DEEP_TOLERANCE = 0.5 / 255 + 1e-6  # decode_image rounds 16-bit / float pixels to 8 bits; the processor keeps floats


def _both_paths(image) -> tuple[np.ndarray, np.ndarray]:
    """(training pixels, inference pixels) of one image: processor(decode_image(x)) and processor(x)."""
    return _pixels(decode_image(image)), _pixels(image)


def _agree(tolerance: float = 0.0) -> Callable[[tuple[np.ndarray, np.ndarray]], bool]:
    return lambda pair: float(np.abs(pair[0] - pair[1]).max()) <= tolerance


def _mode_image(mode: str, seed: int = 0) -> Image.Image:
    """A 32x32 PIL image of `mode` with varied content (every band random, alpha included)."""
    rng = np.random.default_rng(seed)
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (32, 32)).astype(bool))
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (32, 32)).astype(np.int32))
    if mode == "I;8bit":  # mode "I" holding 8-bit values, as `image.convert("I")` of an "L" image gives
        return Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).convert("I")
    if mode.startswith("I;16"):
        image = Image.fromarray(rng.integers(0, 65536, (32, 32)).astype(np.uint16))
        return image if mode == "I;16" else image.convert(mode) if mode != "I;16B" else Image.frombytes(
            "I;16B", (32, 32), np.asarray(image).astype(">u2").tobytes())
    if mode == "F":
        return Image.fromarray(rng.random((32, 32), dtype=np.float32))
    if mode == "P+transparency":
        image = Image.fromarray(rng.integers(0, 8, (32, 32), dtype=np.uint8), mode="L").convert("P")
        image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        image.info["transparency"] = 3
        return image
    if mode == "RGB+transparency":  # a PNG tRNS colour key
        image = Image.fromarray(rng.integers(0, 2, (32, 32, 3), dtype=np.uint8) * 255)
        image.info["transparency"] = (255, 255, 255)
        return image
    bands = len(Image.new(mode, (1, 1)).getbands())
    return Image.frombytes(mode, (32, 32), rng.integers(0, 256, 32 * 32 * bands, dtype=np.uint8).tobytes())


def _png_bytes_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _file_paths(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Training from the PNG file's bytes vs inference on `Image.open` of the same file."""
    data = _png_bytes_of(image)
    return _pixels(decode_image(data)), _pixels(Image.open(io.BytesIO(data)))


def _array(dtype, seed: int = 0, shape=(32, 32, 3), high=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = np.dtype(dtype).kind
    if kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if kind == "f":
        return rng.random(shape).astype(dtype)
    top = high if high is not None else min(int(np.iinfo(dtype).max), 65535)
    return rng.integers(0, top + 1, shape).astype(dtype)


def _jpeg_rotated() -> bytes:
    """A 32x16 JPEG whose EXIF orientation (6: rotate 90 degrees clockwise) makes it 16x32 when shown."""
    image = Image.fromarray(np.repeat(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], 16, 0).repeat(3, 2))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def _exif_paths() -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """(decoded shape, training pixels, inference pixels) of a JPEG with an EXIF rotation."""
    data = _jpeg_rotated()
    decoded = decode_image(data)
    return np.asarray(decoded).shape, _pixels(decoded), _pixels(Image.open(io.BytesIO(data)))


def _chw_agrees(chw, **kwargs) -> bool:
    """`chw` gives the pixels of its HWC transpose read as channels-last."""
    hwc = np.ascontiguousarray(np.moveaxis(np.asarray(chw), 0, -1))
    return np.array_equal(_pixels(chw, **kwargs), _pixels(hwc, input_data_format="channels_last"))


def _small_chw(seed=0, channels=3, size=4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (channels, size, size), dtype=np.uint8)


# ---- audio --------------------------------------------------------------------------------------------------------


def _features(clip, rate=SR) -> np.ndarray:
    return _feature_extractor()(clip, sampling_rate=rate)["input_features"]


def _audio_paths(samples) -> bool:
    """decode_audio of an integer array and the feature extractor on the array give the same features."""
    wave, rate = decode_audio({"array": samples, "sampling_rate": SR})
    return np.array_equal(_features(wave, rate), _features(samples))


def _wav_at(rate: int, samples: int = 40000, subtype: str = "PCM_16") -> bytes:
    """A WAV file whose header says `rate` Hz (an 80 KB file at 1 Hz claims 11 hours)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(samples, np.float32), rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _resampled_lengths(func) -> tuple[Any, list[int]]:
    """Run `func` and record the input length of every `scipy.signal.resample_poly` call."""
    import scipy.signal

    original, lengths = scipy.signal.resample_poly, []

    def recording(x, up, down, *args, **kwargs):
        lengths.append(len(x))
        return original(x, up, down, *args, **kwargs)

    scipy.signal.resample_poly = recording
    try:
        return func(), lengths
    finally:
        scipy.signal.resample_poly = original


def _long_clip_features():
    """60 s at 44.1 kHz through a feature extractor that keeps 1 s: features + how much was resampled."""
    clip = np.random.default_rng(0).standard_normal(60 * 44100).astype(np.float32) * 0.1
    return _resampled_lengths(lambda: _feature_extractor()(clip, sampling_rate=44100))


def _cut_first_is_exact() -> bool:
    from scipy.signal import resample_poly

    clip = np.random.default_rng(1).standard_normal(3 * 44100).astype(np.float32) * 0.1
    whole = resample_poly(clip, 160, 441).astype(np.float32)[:SR]  # 44.1 kHz -> 16 kHz, then cut to 1 s
    features = _feature_extractor()(clip, sampling_rate=44100)["input_features"]
    return np.array_equal(features, _feature_extractor()(whole, sampling_rate=SR)["input_features"])


@functools.cache
def _long_wav_path() -> str:
    """A 60 s WAV at 8 kHz (960 KB)."""
    import soundfile

    path = _workdir() / "long_8k.wav"
    soundfile.write(path, (np.random.default_rng(0).standard_normal(60 * 8000) * 0.1).astype(np.float32), 8000,
                    subtype="PCM_16")
    return str(path)


def _collate_long_wav():
    return _resampled_lengths(lambda: _collate([{"text": "a red circle", "audio": _long_wav_path()}]))


# ---- non-regular files -------------------------------------------------------------------------------------------


def _fifo(name: str) -> str:
    path = _workdir() / name
    if not path.exists():
        os.mkfifo(path)
    return str(path)


def _bounded(func: Callable[[], Any], fifo: str | None = None, seconds: float = 10.0) -> Callable[[], Any]:
    """`func` run in a thread; if it is still running after `seconds` (blocked on a FIFO), unblock it and fail."""
    import threading

    def run():
        outcome: dict[str, Any] = {}

        def target():
            try:
                outcome["value"] = func()
            except BaseException as error:  # re-raised in the caller's thread, traceback kept
                outcome["error"] = error

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(seconds)
        if thread.is_alive():
            if fifo is not None:  # a writer that closes at once gives the blocked reader EOF
                with contextlib.suppress(OSError):
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(seconds)
            raise AssertionError(f"the call was still running after {seconds} s (blocked on a FIFO?)")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    return run


# ---- decompression bombs -----------------------------------------------------------------------------------------


@functools.cache
def _png_bomb(width: int = 12000, height: int = 12000) -> bytes:
    """A valid 1-bit PNG of `width` x `height` black pixels that compresses to a few KB (17 KB at 12000 px)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed bits
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height, 9))
            + chunk(b"IEND", b""))


def _bomb_path() -> str:
    path = _workdir() / "bomb.png"
    if not path.exists():
        path.write_bytes(_png_bomb())
    return str(path)


def _peak_memory(func) -> tuple[Any, int]:
    """(result or the error raised, peak bytes allocated through Python's allocators while `func` ran)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = func()
    except Exception as error:  # noqa: BLE001 - the caller checks which
        result = error
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak


# ---- length budgets -----------------------------------------------------------------------------------------------


@functools.cache
def _ten_minute_wav() -> str:
    """A 10-minute clip at 1 kHz (1.2 MB): the budget must count it as the 1 s the feature extractor keeps."""
    path = _workdir() / "ten_minutes.wav"
    if not path.exists():
        path.write_bytes(_wav_at(1000, samples=600 * 1000))
    return str(path)


def _lengths(rows: dict[str, list]) -> list[tuple[int, int]]:
    import datasets

    from modeling_opt_tri.data.collate import row_lengths

    dataset = datasets.Dataset.from_dict(rows)
    return row_lengths(dataset, _processor().tokenizer, max_audio_seconds=_feature_extractor().max_length_seconds)


def _budget_sampler():
    from modeling_opt_tri.data.collate import LengthGroupedBatchSampler

    lengths = _lengths({"text": ["a red circle " * 200, "a blue square"], "audio": [_ten_minute_wav(), None]})
    return LengthGroupedBatchSampler(lengths, batch_size=2, max_tokens=2 * (100 + 16))


def _collator(**kwargs) -> TriModalCollator:
    return TriModalCollator(_processor(), **kwargs)


def _image_row(image, **kwargs):
    return TriModalCollator(_processor(), **kwargs)([{"id": "big", "text": "a red circle", "image": image}])


def _skipped(fragment: str) -> Callable[[dict], bool]:
    return lambda b: b["num_skipped_rows"] == 1 and fragment in b["skipped_reasons"][0]


_PIL_MODES = ["1", "L", "LA", "La", "P", "PA", "P+transparency", "RGB", "RGB+transparency", "RGBA", "RGBa", "RGBX",
              "CMYK", "YCbCr", "LAB", "HSV", "I", "I;8bit", "I;16", "I;16B", "F"]
_DEEP_MODES = {"I", "I;16", "I;16B", "F"}
_PNG_MODES = ["1", "L", "LA", "P", "P+transparency", "RGB", "RGB+transparency", "RGBA", "I;16"]
_DTYPES = [np.uint8, np.uint16, np.int8, np.int16, np.int32, np.int64, np.uint32, np.float16, np.float32, np.float64,
           bool]
_DEEP_DTYPES = {np.uint16, np.int16, np.int32, np.int64, np.uint32, np.float16, np.float32, np.float64}

ROUND2_CASES: list[tuple[str, Callable[[], Any], Raises | Returns | Warns | Exits]] = [
    # ---- item 10: every PIL mode, in memory and from a PNG file, gives the same pixels in training and inference --
    *[(f"same_pixels:pil_mode_{mode}", functools.partial(lambda m: _both_paths(_mode_image(m)), mode),
       Returns(_agree(_DEEP_TOLERANCE if mode in _DEEP_MODES else 0.0), f"mode {mode}: training == inference"))
      for mode in _PIL_MODES],
    *[(f"same_pixels:png_file_{mode}", functools.partial(lambda m: _file_paths(_mode_image(m)), mode),
       Returns(_agree(_DEEP_TOLERANCE if mode.startswith("I;16") else 0.0), f"PNG of mode {mode}: same pixels"))
      for mode in _PNG_MODES],
    # ---- items 9/10: every NumPy dtype (HWC and CHW) and torch tensors, through both paths --------------------------
    *[(f"same_pixels:numpy_{np.dtype(dtype).name}", functools.partial(lambda d: _both_paths(_array(d)), dtype),
       Returns(_agree(_DEEP_TOLERANCE if dtype in _DEEP_DTYPES else 0.0), f"{np.dtype(dtype).name} HWC: same pixels"))
      for dtype in _DTYPES],
    *[(f"same_pixels:numpy_chw_{np.dtype(dtype).name}",
       functools.partial(lambda d: _both_paths(np.ascontiguousarray(np.moveaxis(_array(d, seed=3), -1, 0))), dtype),
       Returns(_agree(_DEEP_TOLERANCE if dtype in _DEEP_DTYPES else 0.0), f"{np.dtype(dtype).name} CHW: same pixels"))
      for dtype in (np.uint8, np.uint16, np.float32)],
    *[(f"same_pixels:torch_{name}", functools.partial(lambda t: _both_paths(t), tensor),
       Returns(_agree(_DEEP_TOLERANCE if name != "uint8" else 0.0), f"torch {name} CHW: same pixels"))
      for name, tensor in [("uint8", torch.from_numpy(_array(np.uint8)).permute(2, 0, 1)),
                           ("float32", torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))),
                           ("bfloat16", torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)).bfloat16()),
                           ("int16", torch.from_numpy(_array(np.int16, high=255)).permute(2, 0, 1))]],
    ("same_pixels:rgba_array_composited_like_rgba_image",
     lambda: (_pixels(_array(np.uint8, shape=(32, 32, 4))), _pixels(Image.alpha_composite(
         Image.new("RGBA", (32, 32), (255,) * 4), Image.fromarray(_array(np.uint8, shape=(32, 32, 4)))))),
     Returns(_agree(0.0), "an RGBA array is composited over white exactly as PIL composites the RGBA image")),
    ("same_pixels:exif_orientation_applied_in_both", _exif_paths,
     Returns(lambda r: r[0] == (32, 16, 3) and np.array_equal(r[1], r[2]),
             "EXIF orientation 6 turns the 16-high JPEG upright, in training and at inference alike")),
    ("same_pixels:mode_I_8bit_is_not_white_or_black",
     lambda: _both_paths(Image.new("L", (32, 32), 128).convert("I")),
     Returns(lambda p: np.allclose(p[0], 128 / 255) and np.allclose(p[1], 128 / 255),
             "mode I with values 0..255 (convert('I') of L) is 8-bit in both paths: grey 128 stays 128")),
    # ---- item 9: integer pixels have one documented rule ------------------------------------------------------------
    ("decode_image:int32_40000_is_16_bit_grey", lambda: np.asarray(decode_image(np.full((8, 8), 40000, np.int32))),
     Returns(lambda a: (a == round(40000 / 65535 * 255)).all(), "int32 40000 -> 16-bit -> 156 of 255, not black")),
    ("image_processor:int32_40000_is_16_bit_grey", lambda: _pixels(np.full((8, 8), 40000, np.int32)),
     Returns(lambda p: np.allclose(p, 40000 / 65535, atol=1e-3), "int32 40000 -> value / 65535")),
    ("image_processor:int64_8bit_values", lambda: _pixels(np.full((8, 8, 3), 200, np.int64)),
     Returns(lambda p: np.allclose(p, 200 / 255), "int64 values in 0..255 (np.array of Python ints) -> 8-bit")),
    ("decode_image:negative_int_pixels", lambda: decode_image(np.full((8, 8), -5, np.int16), context="row 2"),
     Raises(CorruptSampleError, r"row 2: ndarray: integer image of dtype int16 has negative values \(min -5\)")),
    ("image_processor:negative_int_pixels", lambda: _image_processor()(np.full((8, 8), -5, np.int32)),
     Raises(ValueError, r"images\[0\]: integer image of dtype int32 has negative values")),
    ("decode_image:int_pixels_above_16_bit", lambda: decode_image(np.full((8, 8), 70000, np.int32), context="row 2"),
     Raises(CorruptSampleError, r"row 2: ndarray: integer image of dtype int32 has values up to 70000")),
    ("decode_image:mode_I_above_16_bit", lambda: decode_image(Image.new("I", (8, 8), 2**20), context="row 2"),
     Raises(CorruptSampleError, r"row 2: Image: integer image of dtype int32 has values up to 1048576")),
    ("decode_image:float_0_255_refused_as_at_inference",
     lambda: decode_image(np.full((8, 8, 3), 200.0, np.float32), context="row 2"),
     Raises(CorruptSampleError, r"row 2: ndarray: float images must have values in \[0, 1\], got range \[200, 200\]")),
    ("decode_image:mode_F_0_255_refused", lambda: decode_image(Image.new("L", (8, 8), 200).convert("F"), "row 2"),
     Raises(CorruptSampleError, r"row 2: Image: float images must have values in \[0, 1\]")),
    ("decode_image:uint16_small_values_are_16_bit", lambda: np.asarray(decode_image(np.full((8, 8), 255, np.uint16))),
     Returns(lambda a: (a == 1).all(), "uint16 255 -> 255/65535 -> 1 of 255 (by width, as the processor does)")),
    ("image_processor:big_endian_uint16", lambda: _pixels(np.full((8, 8), 65535, ">u2")),
     Returns(lambda p: np.allclose(p, 1.0), "big-endian uint16 ('>u2', from I;16B) is 16-bit, not an unknown dtype")),
    ("decode_image:bfloat16_tensor", lambda: np.asarray(decode_image(torch.ones(3, 8, 8, dtype=torch.bfloat16))),
     Returns(lambda a: a.shape == (8, 8, 3) and (a == 255).all(), "bfloat16 CHW tensor -> white, not a torch error")),
    ("decode_image:complex_pixels", lambda: decode_image(np.zeros((8, 8), np.complex64), context="row 2"),
     Raises(CorruptSampleError, r"row 2: ndarray: unsupported image dtype complex64")),
    ("decode_image:four_dimensional_array", lambda: decode_image(np.zeros((2, 8, 8, 3), np.uint8), context="row 2"),
     Raises(CorruptSampleError, r"row 2: ndarray: an image must have 2 .* dimensions, got 4")),
    ("collator:premultiplied_La_row", lambda: _collate([{"id": "la", "image": _mode_image("La")}, {"text": "x"}]),
     Returns(lambda b: b["num_skipped_rows"] == 0 and b["pixel_values"].shape[0] == 2,
             "a premultiplied 'La' image decodes (composited over white) instead of a raw PIL ValueError")),
    # ---- item 11: channel axis as transformers infers it; input_data_format settles ambiguous shapes --------------
    ("image_processor:chw_width_4_is_chw", lambda: _chw_agrees(_small_chw()),
     Returns(bool, "(3, 4, 4) is [C, H, W] (the first axis wins, as in transformers), not HWC with 4 channels")),
    ("image_processor:chw_width_3_is_chw", lambda: _chw_agrees(_small_chw(size=3)),
     Returns(bool, "(3, 3, 3) is [C, H, W]")),
    ("image_processor:chw_width_1_is_chw", lambda: _chw_agrees(_small_chw(channels=1, size=5)[:, :, :1].repeat(1, 0)),
     Returns(bool, "(1, 5, 1) is [C, H, W]: one channel, 5x1 pixels")),
    ("image_processor:chw_tensor_width_4", lambda: _chw_agrees(torch.from_numpy(_small_chw(seed=2))),
     Returns(bool, "a (3, 4, 4) tensor is [C, H, W] as well")),
    ("image_processor:chw_rgba_width_3",
     lambda: _pixels(np.full((4, 3, 3), 255, np.uint8), input_data_format="channels_first").shape,
     Returns(lambda s: s == (3, 32, 32), "(4, 3, 3) with input_data_format='channels_first': RGBA 3x3")),
    ("image_processor:ambiguous_default_is_channels_first",
     lambda: np.array_equal(_pixels(_small_chw(size=5)[:, :, :3]), _pixels(_small_chw(size=5)[:, :, :3],
                                                                            input_data_format="channels_first")),
     Returns(bool, "(3, 5, 3) is read as [C, H, W] unless input_data_format says otherwise")),
    ("image_processor:input_data_format_channels_last",
     lambda: np.array_equal(_pixels(np.full((3, 5, 3), 9, np.uint8), input_data_format="channels_last"),
                            _pixels(Image.new("RGB", (5, 3), (9, 9, 9)))),
     Returns(bool, "(3, 5, 3) with input_data_format='channels_last' is a 3x5 RGB image")),
    ("image_processor:ambiguous_shape_warns", lambda: _pixels(_small_chw()),
     Warns(r"channel axis of an image of shape \(3, 4, 4\) is ambiguous; reading it as \[C, H, W\]",
           lambda p: p.shape == (3, 32, 32), "a warning names the shape and input_data_format")),
    ("image_processor:bad_input_data_format", lambda: _image_processor()(_small_chw(), input_data_format="HWC"),
     Raises(ValueError, r"images\[0\]: input_data_format must be 'channels_first' or 'channels_last', got 'HWC'")),
    ("image_processor:input_data_format_wrong_axis",
     lambda: _image_processor()(np.zeros((8, 8, 3), np.uint8), input_data_format="channels_first"),
     Raises(ValueError, r"images\[0\]: image of shape \(8, 8, 3\) has 8 entries on its channel axis \(channels_first\)")),
    ("processor:input_data_format_reaches_images",
     lambda: (_processor()(images=[_small_chw(channels=4, size=3)], input_data_format="channels_first")["pixel_values"],
              _processor()(images=[Image.fromarray(np.moveaxis(_small_chw(channels=4, size=3), 0, -1))])["pixel_values"]),
     Returns(lambda p: np.array_equal(p[0], p[1]),
             "processor(..., input_data_format='channels_first') reads (4, 3, 3) as a 3x3 RGBA image")),
    ("decode_image:chw_width_4_is_chw", lambda: decode_image(_small_chw()).size,
     Returns(lambda size: size == (4, 4), "decode_image reads (3, 4, 4) as a 4x4 RGB image too")),
    ("image_processor:two_channels", lambda: _image_processor()(np.zeros((8, 8, 2), np.uint8)),
     Raises(ValueError, r"images\[0\]: image of shape \(8, 8, 2\) has no channel axis with 1, 3 or 4 channels")),
    # ---- item 9: integer audio samples have one documented rule, the same in decoding and the feature extractor ---
    ("decode_audio:python_int_list_is_int16",
     lambda: decode_audio({"array": [20000, -20000] * 800, "sampling_rate": SR})[0][:2],
     Returns(lambda w: np.allclose(w, [20000 / 32768, -20000 / 32768]), "Python ints -> int16 scale, not 2**63")),
    ("feature_extractor:python_int_list_is_int16",
     lambda: np.array_equal(_features([20000, -20000] * 800), _features(np.array([20000, -20000] * 800, np.int16))),
     Returns(bool, "a list of Python ints gives the features of the int16 array")),
    ("decode_audio:python_ints_outside_int16",
     lambda: decode_audio({"array": [40000, -40000] * 10, "sampling_rate": SR}, context="row 3"),
     Raises(CorruptSampleError, r"row 3: dict value: int64 audio samples .* outside \[-32768, 32767\]; pass a numpy int32")),
    ("feature_extractor:python_ints_outside_int16", lambda: _features([40000, -40000] * 10),
     Raises(ValueError, r"audio\[0\]: int64 audio samples \(e.g. a list of Python ints\) are read as 16-bit PCM")),
    *[(f"same_audio:{np.dtype(dtype).name}_pcm", functools.partial(
        lambda d: _audio_paths(np.random.default_rng(0).integers(np.iinfo(d).min, np.iinfo(d).max, 1600).astype(d)),
        dtype), Returns(bool, f"{np.dtype(dtype).name} PCM: decode_audio and the feature extractor scale it alike"))
      for dtype in (np.int8, np.uint8, np.int16, np.int32)],
    ("same_audio:int64_in_int16_range",
     lambda: _audio_paths(np.random.default_rng(0).integers(-32768, 32767, 1600)),
     Returns(bool, "int64 in the int16 range: both read it as 16-bit PCM")),
    ("decode_audio:uint16_samples", lambda: decode_audio({"array": np.zeros(10, np.uint16), "sampling_rate": SR}, "r"),
     Raises(CorruptSampleError, r"r: dict value: unsupported audio dtype uint16")),
    ("feature_extractor:uint16_samples", lambda: _features(np.zeros(10, np.uint16)),
     Raises(ValueError, r"audio\[0\]: unsupported audio dtype uint16")),
    ("decode_audio:bool_samples", lambda: decode_audio({"array": np.ones(10, bool), "sampling_rate": SR}, "r"),
     Raises(CorruptSampleError, r"r: dict value: unsupported audio dtype bool")),
    ("decode_audio:complex_samples", lambda: decode_audio({"array": np.ones(10, np.complex64), "sampling_rate": SR}, "r"),
     Raises(CorruptSampleError, r"r: dict value: unsupported audio dtype complex64")),
    ("feature_extractor:int16_tensor", lambda: np.array_equal(_features(torch.full((800,), 16384, dtype=torch.int16)),
                                                              _features(np.full(800, 0.5, np.float32))),
     Returns(bool, "an int16 tensor is scaled by 1/32768 like the int16 array")),
    # ---- item 2: absurd sampling rates; cut before resampling -------------------------------------------------------
    ("decode_audio:wav_header_1_hz", lambda: decode_audio(_wav_at(1), context="row 4"),
     Raises(CorruptSampleError, r"row 4: bytes: sampling_rate 1 Hz is outside the supported range 1000\.\.384000 Hz")),
    ("decode_audio:array_rate_999", lambda: decode_audio({"array": _tone(0.1), "sampling_rate": 999}, "row 4"),
     Raises(CorruptSampleError, r"row 4: dict value: sampling_rate 999 Hz is outside the supported range")),
    ("decode_audio:array_rate_384001", lambda: decode_audio({"array": _tone(0.1), "sampling_rate": 384001}, "row 4"),
     Raises(CorruptSampleError, r"sampling_rate 384001 Hz is outside the supported range")),
    ("decode_audio:rate_1000_accepted", lambda: decode_audio({"array": _tone(0.1), "sampling_rate": 1000})[1],
     Returns(lambda rate: rate == 1000, "1 kHz is the lowest accepted rate")),
    ("decode_audio:rate_384000_accepted", lambda: decode_audio(_wav_at(384000, samples=3840))[1],
     Returns(lambda rate: rate == 384000, "384 kHz is the highest accepted rate")),
    ("decode_audio:rate_as_string", lambda: decode_audio({"array": _tone(0.1), "sampling_rate": "16 kHz"}, "row 4"),
     Raises(CorruptSampleError, r"row 4: dict value: sampling_rate must be a positive int \(Hz\), got '16 kHz'")),
    ("feature_extractor:sampling_rate_1", lambda: _feature_extractor()(_tone(0.1), sampling_rate=1),
     Raises(ValueError, r"sampling_rate 1 Hz is outside the supported range 1000\.\.384000 Hz")),
    ("feature_extractor:sampling_rate_500", lambda: _feature_extractor()(_tone(0.1), sampling_rate=500),
     Raises(ValueError, r"sampling_rate 500 Hz is outside the supported range")),
    ("feature_extractor:sampling_rate_in_megahertz", lambda: _feature_extractor()(_tone(0.1), sampling_rate=16_000_000),
     Raises(ValueError, r"sampling_rate 16000000 Hz is outside the supported range")),
    ("processor:audio_sampling_rate_1", lambda: _processor()(audio=[_tone(0.1)], sampling_rate=1),
     Raises(ValueError, r"sampling_rate 1 Hz is outside the supported range")),
    ("collator:wav_header_1_hz_row_skipped",
     lambda: _peak_memory(lambda: _collate([{"id": "w", "text": "x", "audio": {"bytes": _wav_at(1), "path": "w.wav"}}])),
     Returns(lambda r: _skipped("row w: file 'w.wav': sampling_rate 1 Hz is outside")(r[0]) and r[1] < 50 * 2**20,
             "an 80 KB WAV claiming 1 Hz is a corrupt row, not a 2.4 GiB resample")),
    ("feature_extractor:long_clip_cut_before_resampling", _long_clip_features,
     Warns(r"1 of 1 audio clips were longer than max_length_seconds=1.0",
           lambda r: r[0]["audio_attention_mask"].sum() == 101 and max(r[1]) < 1.1 * 44100,
           "60 s at 44.1 kHz: about 1 s is resampled, not 60 s")),
    ("feature_extractor:cut_first_equals_resample_then_cut", _cut_first_is_exact,
     Returns(bool, "cutting first gives exactly the features of resampling the whole clip, then cutting")),
    ("collator:long_wav_read_and_resampled_cut", _collate_long_wav,
     Returns(lambda r: r[0]["audio_attention_mask"].sum() == 101 and max(r[1]) < 1.1 * 8000,
             "a 60 s WAV at 8 kHz: about 1 s is read and resampled")),
    ("decode_audio:max_seconds_reads_the_start", lambda: decode_audio(_long_wav_path(), max_seconds=2.0)[0].shape,
     Returns(lambda s: 2 * 8000 <= s[0] <= 2.05 * 8000, "max_seconds=2 reads 2 s plus a 20 ms resampling margin")),
    ("decode_audio:max_seconds_cuts_channels_first_arrays",
     lambda: decode_audio({"array": np.zeros((2, 10 * SR), np.float32), "sampling_rate": SR}, max_seconds=1.0)[0].shape,
     Returns(lambda s: SR <= s[0] < 1.1 * SR, "a [2, N] array is cut along its time axis")),
    # ---- item 3: only regular files are read --------------------------------------------------------------------------
    ("decode_image:fifo_path", _bounded(lambda: decode_image(_fifo("image.fifo"), "row 5"), _fifo("image.fifo")),
     Raises(CorruptSampleError, r"row 5: file '.*image.fifo': image path is a FIFO \(named pipe\), not a regular file")),
    ("decode_image:fifo_in_dict", _bounded(lambda: decode_image({"path": _fifo("dict.fifo"), "bytes": None}, "row 5"),
                                           _fifo("dict.fifo")),
     Raises(CorruptSampleError, r"row 5: file '.*dict.fifo': image path is a FIFO")),
    ("decode_audio:fifo_path", _bounded(lambda: decode_audio(_fifo("audio.fifo"), "row 5"), _fifo("audio.fifo")),
     Raises(CorruptSampleError, r"row 5: file '.*audio.fifo': audio path is a FIFO \(named pipe\), not a regular file")),
    ("decode_audio:fifo_in_dict", _bounded(lambda: decode_audio({"path": _fifo("adict.fifo")}, "row 5"),
                                           _fifo("adict.fifo")),
     Raises(CorruptSampleError, r"row 5: file '.*adict.fifo': audio path is a FIFO")),
    ("decode_image:character_device", lambda: decode_image(os.devnull, "row 5"),
     Raises(CorruptSampleError, r"row 5: file '/dev/null': image path is a character device, not a regular file")),
    ("decode_audio:character_device", lambda: decode_audio(os.devnull, "row 5"),
     Raises(CorruptSampleError, r"row 5: file '/dev/null': audio path is a character device")),
    ("decode_audio:directory", lambda: decode_audio(str(_workdir()), "row 5"),
     Raises(CorruptSampleError, r"row 5: file '.*': audio path is a directory, not a regular file")),
    ("decode_image:directory", lambda: decode_image(str(_workdir()), "row 5"),
     Raises(CorruptSampleError, r"row 5: file '.*': image path is a directory, not a regular file")),
    ("collator:fifo_image_row_skipped",
     _bounded(lambda: _collate([{"id": "f", "image": _fifo("row.fifo")}, {"text": "a red circle"}]), _fifo("row.fifo")),
     Returns(_skipped("image path is a FIFO"), "the FIFO row is skipped and counted; the batch goes on")),
    ("row_lengths:fifo_audio_path", _bounded(lambda: _lengths({"text": ["x"], "audio": [_fifo("len.fifo")]}),
                                             _fifo("len.fifo")),
     Returns(lambda lengths: lengths[0][0] == 0, "the length pass does not block on a FIFO (0 frames; skipped later)")),
    # ---- item 4: decompression bombs -----------------------------------------------------------------------------------
    ("decode_image:png_bomb_bytes", lambda: _peak_memory(lambda: decode_image(_png_bomb(), context="row 6")),
     Returns(lambda r: isinstance(r[0], CorruptSampleError) and "12000x12000 = 144000000 pixels is above the limit of "
             "67108864 pixels" in str(r[0]) and r[1] < 20 * 2**20, "a 17 KB PNG of 144 M pixels is refused from its header")),
    ("decode_image:png_bomb_file", lambda: decode_image(_bomb_path(), context="row 6"),
     Raises(CorruptSampleError, r"row 6: file '.*bomb.png': image of 12000x12000 = 144000000 pixels is above the limit")),
    ("decode_image:bomb_above_pil_limit", lambda: decode_image(_png_bomb(15000, 15000), context="row 6"),
     Raises(CorruptSampleError, r"row 6: bytes: image is too large for PIL \(a decompression bomb\?\)")),
    ("collator:png_bomb_row_skipped", lambda: _image_row(_png_bomb()),
     Returns(_skipped("row big: bytes: image of 12000x12000"), "the bomb row is skipped and counted")),
    ("collator:max_image_pixels_configurable", lambda: _image_row(_png((64, 64)), max_image_pixels=1000),
     Returns(_skipped("64x64 = 4096 pixels is above the limit of 1000 pixels"), "a smaller limit applies")),
    ("collator:max_image_pixels_none", lambda: _image_row(_png((64, 64)), max_image_pixels=None),
     Returns(lambda b: b["num_skipped_rows"] == 0, "max_image_pixels=None disables the limit")),
    ("collator:max_image_pixels_invalid", lambda: _collator(max_image_pixels=0),
     Raises(ValueError, r"max_image_pixels must be a positive int or None, got 0")),
    ("decode_image:in_memory_image_above_limit", lambda: decode_image(Image.new("L", (100, 100)), "row 6", max_pixels=5000),
     Raises(CorruptSampleError, r"row 6: Image: image of 100x100 = 10000 pixels is above the limit of 5000 pixels")),
    ("decode_image:array_above_limit", lambda: decode_image(np.zeros((100, 100, 3), np.uint8), "row 6", max_pixels=5000),
     Raises(CorruptSampleError, r"row 6: ndarray: image array of shape \(100, 100, 3\) is above the limit of 5000")),
    # ---- item 12: token budgets count truncated lengths -------------------------------------------------------------
    ("row_lengths:long_caption_capped", lambda: _lengths({"text": ["a red circle " * 200]}),
     Returns(lambda lengths: lengths == [(0, 16)], "a 600-word caption counts as the 16 tokens it is cut to")),
    ("row_lengths:ten_minute_clip_capped", lambda: _lengths({"audio": [_ten_minute_wav()]}),
     Returns(lambda lengths: lengths == [(100, 0)], "a 10-minute clip counts as the 1 s (100 frames) it is cut to")),
    ("row_lengths:budget_accepts_rows_that_fit_once_cut", lambda: len(_budget_sampler()),
     Returns(lambda batches: batches >= 1, "max_tokens=232 accepts rows that are 116 tokens once truncated")),
    ("row_lengths:audio_bytes_measured", lambda: _lengths({"audio": [{"bytes": _wav_at(8000, 4000), "path": None}]}),
     Returns(lambda lengths: lengths == [(50, 0)], "audio stored as bytes is measured from its header, not 0")),
    ("row_lengths:absurd_rate_counts_zero", lambda: _lengths({"audio": [{"bytes": _wav_at(1), "path": None}]}),
     Returns(lambda lengths: lengths == [(0, 0)], "a 1 Hz header is not 40000 s of audio (the row fails later)")),
]
CASES += ROUND2_CASES


def _frames_read(func) -> tuple[Any, list[int]]:
    """Run `func` and record how many frames every `soundfile.SoundFile.read` call returned."""
    import soundfile

    original, frames = soundfile.SoundFile.read, []

    def recording(self, *args, **kwargs):
        data = original(self, *args, **kwargs)
        frames.append(len(data))
        return data

    soundfile.SoundFile.read = recording
    try:
        return func(), frames
    finally:
        soundfile.SoundFile.read = original


@functools.cache
def _long_16k_wav_path() -> str:
    """A 30 s WAV at the feature extractor's rate (960 KB): no resampling, so only the read can be cut."""
    path = _workdir() / "long_16k.wav"
    path.write_bytes(_wav(_tone(30.0)))
    return str(path)


def _symlink_loop() -> str:
    path = _workdir() / "loop.png"
    if not os.path.lexists(path):
        os.symlink(path, path)
    return str(path)


ROUND2_PROBED_CASES: list[tuple[str, Callable[[], Any], Raises | Returns | Warns | Exits]] = [
    # ---- faults found beyond the issue's list ------------------------------------------------------------------------
    ("feature_extractor:float_audio_at_int16_scale", lambda: _features(np.full(1600, 20000.0, np.float32)),
     Raises(ValueError, r"audio\[0\]: float audio samples should lie in about \[-1, 1\], but these reach 20000: integer "
                        r"PCM stored as floats\?")),
    ("feature_extractor:float_audio_overflowing_to_inf", lambda: _features(np.full(1600, 1e20)),
     Raises(ValueError, r"audio\[0\]: float audio samples should lie in about \[-1, 1\], but these reach 1e\+20")),
    ("decode_audio:float_audio_at_int16_scale",
     lambda: decode_audio({"array": np.full(1600, -32768.0), "sampling_rate": SR}, context="row 8"),
     Raises(CorruptSampleError, r"row 8: dict value: float audio samples should lie in about \[-1, 1\], but these reach "
                                r"32768")),
    ("decode_audio:zero_dimensional_array_with_limit",
     lambda: decode_audio({"array": 0.5, "sampling_rate": SR}, context="row 8", max_seconds=1.0),
     Raises(CorruptSampleError, r"row 8: dict value: audio array has unsupported shape \(\) \(expected 1-D or 2-D\)")),
    ("decode_image:nul_byte_in_path", lambda: decode_image("bad\x00name.png", context="row 8"),
     Raises(CorruptSampleError, r"row 8: file .*: cannot open the image file \(embedded null byte\)")),
    ("decode_audio:nul_byte_in_path", lambda: decode_audio({"path": "bad\x00name.wav"}, context="row 8"),
     Raises(CorruptSampleError, r"row 8: file .*: cannot open the audio file \(embedded null byte\)")),
    ("decode_image:symlink_loop", lambda: decode_image(_symlink_loop(), context="row 8"),
     Raises(CorruptSampleError, r"row 8: file '.*loop.png': cannot open the image file \(Too many levels of symbolic")),
    ("collator:long_wav_read_only_to_the_limit", lambda: _frames_read(lambda: _collate([{"audio": _long_16k_wav_path()}])),
     Returns(lambda r: r[0]["audio_attention_mask"].sum() == 101 and sum(r[1]) < 1.1 * SR,
             "a 30 s WAV is read only to max_length_seconds (+20 ms), not whole into memory")),
    ("processor:text_not_a_string_or_list", lambda: _processor()(text=5),
     Raises(TypeError, r"text must be a string or a list of strings \(None for a row without text\), got int")),
    ("image_processor:meta_tensor", lambda: _image_processor()(torch.empty(3, 8, 8, device="meta")),
     Raises(ValueError, r"images\[0\]: image tensor of shape \(3, 8, 8\) is on the meta device")),
    ("feature_extractor:meta_tensor", lambda: _feature_extractor()(torch.empty(800, device="meta"), sampling_rate=SR),
     Raises(ValueError, r"audio\[0\]: audio tensor of shape \(800,\) is on the meta device")),
    ("decode_image:string_array", lambda: decode_image(np.array([["a", "b"]]), context="row 8"),
     Raises(CorruptSampleError, r"row 8: ndarray: unsupported image dtype <U1")),
    ("decode_audio:bfloat16_tensor",
     lambda: decode_audio({"array": torch.full((800,), 0.5, dtype=torch.bfloat16), "sampling_rate": SR})[0],
     Returns(lambda w: w.dtype == np.float32 and np.allclose(w, 0.5), "a bfloat16 tensor is widened, not 'not numeric'")),
    ("decode_image:empty_file", lambda: decode_image(_folder("empty_files", None, {"e.png": b""}) + "/e.png", "row 8"),
     Raises(CorruptSampleError, r"row 8: file '.*e.png': unreadable or truncated image")),
    ("decode_audio:empty_file", lambda: decode_audio(_folder("empty_files", None, {"e.wav": b""}) + "/e.wav", "row 8"),
     Raises(CorruptSampleError, r"row 8: file '.*e.wav': unreadable or truncated audio")),
]
ROUND2_PROBED_CASES += [
    ("image_processor:image_size_zero_per_call", lambda: _image_processor()(np.zeros((8, 8, 3), np.uint8), image_size=0),
     Raises(ValueError, r"image_size must be a positive int, got 0")),
    ("image_processor:image_size_negative_per_call", lambda: _image_processor()(np.zeros((8, 8, 3), np.uint8),
                                                                                image_size=-5),
     Raises(ValueError, r"image_size must be a positive int, got -5")),
    ("image_processor:image_size_float_per_call", lambda: _image_processor()(np.zeros((8, 8, 3), np.uint8),
                                                                             image_size=3.7),
     Raises(ValueError, r"image_size must be a positive int, got 3.7")),
    ("image_processor:do_normalize_string", lambda: _image_processor()(np.zeros((8, 8, 3), np.uint8), do_normalize="no"),
     Raises(ValueError, r"do_normalize must be True or False, got 'no'")),
    ("image_processor:image_mean_nan", lambda: OptTriImageProcessor(image_mean=[float("nan")] * 3),
     Raises(ValueError, r"image_mean values must be finite, got \[nan, nan, nan\]")),
    ("image_processor:unknown_resample_filter", lambda: OptTriImageProcessor(resample=99),
     Raises(ValueError, r"resample must be a PIL filter \(NEAREST=0, .*\), got 99")),
    ("feature_extractor:max_length_below_one_sample", lambda: OptTriFeatureExtractor(max_length_seconds=1e-9),
     Raises(ValueError, r"max_length_seconds must be a finite number of seconds of at least one sample")),
    ("feature_extractor:max_length_infinite", lambda: OptTriFeatureExtractor(max_length_seconds=float("inf")),
     Raises(ValueError, r"max_length_seconds must be a finite number .* got inf")),
]
CASES += ROUND2_PROBED_CASES


# ----------------------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------------------


def _innermost_frame(excinfo: pytest.ExceptionInfo) -> Path:
    return Path(str(excinfo.traceback[-1].path)).resolve()


def _check_cli(result: subprocess.CompletedProcess, match: str) -> None:
    stderr = result.stderr.strip()
    assert result.returncode != 0, f"expected a failure; exit status 0.\nstderr:\n{stderr[-3000:]}"
    last_line = stderr.splitlines()[-1] if stderr else ""
    assert re.search(match, last_line), f"last stderr line {last_line!r} does not match {match!r}\n{stderr[-3000:]}"
    frames = re.findall(r'File "([^"]+)", line \d+', stderr)
    if frames:  # a traceback: the error must come from our code (or our CLI), not from torch/transformers internals
        innermost = Path(frames[-1]).resolve()
        assert REPO_ROOT in innermost.parents, f"the error was raised in {innermost}, not in OPT-Tri\n{stderr[-3000:]}"


_PARAMS = [
    pytest.param(name, func, expectation, id=name, marks=[pytest.mark.slow] if name in _SLOW_CASES else [])
    for name, func, expectation in CASES
]


@pytest.mark.parametrize("name, func, expectation", _PARAMS)
def test_bad_input(name, func, expectation):
    if isinstance(expectation, Raises):
        with pytest.raises(expectation.error, match=expectation.match) as excinfo:
            func()
        frame = _innermost_frame(excinfo)
        assert PACKAGE_DIR in frame.parents, (
            f"{name}: {excinfo.type.__name__} was raised in {frame}, not by OPT-Tri's own checks: {excinfo.value}"
        )
    elif isinstance(expectation, Returns):
        result = func()
        assert expectation.check(result), f"{name}: expected {expectation.what}; got {result!r}"
    elif isinstance(expectation, Warns):
        with _logged_warnings() as records:
            result = func()
        messages = [record.getMessage() for record in records]
        assert any(re.search(expectation.match, m) for m in messages), f"{name}: no warning matching {expectation.match!r} in {messages}"
        assert expectation.check(result), f"{name}: expected {expectation.what}; got {result!r}"
    elif isinstance(expectation, Exits):
        _check_cli(func(), expectation.match)
    else:  # pragma: no cover
        raise TypeError(f"unknown expectation {expectation!r}")


def test_catalogue_size():
    """The catalogue is large enough and its names are unique; print how many cases it holds per component."""
    names = [name for name, _, _ in CASES]
    assert len(names) == len(set(names)), [n for n, c in Counter(names).items() if c > 1]
    assert len(CASES) > 200, f"only {len(CASES)} bad-input cases"
    per_area = Counter(name.split(":")[0] for name in names)
    kinds = Counter(type(expectation).__name__ for _, _, expectation in CASES)
    print(f"\nbad-input catalogue: {len(CASES)} cases ({len(_SLOW_CASES)} CLI subprocess cases marked slow)")
    print("  by area: " + ", ".join(f"{area}={count}" for area, count in sorted(per_area.items())))
    print("  by expectation: " + ", ".join(f"{kind}={count}" for kind, count in sorted(kinds.items())))
