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
from modeling_opt_tri.tokenization import build_wordpiece_tokenizer
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
     Raises(CorruptSampleError, r"row 1: dict value: sampling_rate must be positive, got 0")),
    ("decode_audio:sampling_rate_negative", lambda: decode_audio({"array": _tone(0.1), "sampling_rate": -1}, "row 1"),
     Raises(CorruptSampleError, r"row 1: dict value: sampling_rate must be positive, got -1")),
    ("decode_audio:sampling_rate_none", lambda: decode_audio({"array": _tone(0.1), "sampling_rate": None}, "row 1"),
     Raises(CorruptSampleError, r"row 1: dict value: missing or invalid sampling_rate None")),
    ("decode_audio:sampling_rate_fractional", lambda: decode_audio({"array": _tone(0.1), "sampling_rate": 16000.7}, "r"),
     Raises(CorruptSampleError, r"sampling_rate must be a whole number of Hz, got 16000.7")),
    ("decode_audio:sampling_rate_inf", lambda: decode_audio({"array": _tone(0.1), "sampling_rate": float("inf")}, "r"),
     Raises(CorruptSampleError, r"missing or invalid sampling_rate inf")),
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
     Returns(lambda b: b["num_skipped_rows"] == 1 and "row s: dict value: sampling_rate must be positive" in
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
    _cli("pretrain_bad_itm_rows", r"^ValueError: itm_rows_per_sample must be 1 or 3, got 2"),
    _cli("evaluate_missing_model", r"error: --model '.*no_such_model': no such checkpoint folder"),
    _cli("evaluate_negative_rerank", r"error: --rerank must be 0 \(off\) or a positive shortlist size, got -1"),
    _cli("evaluate_bert_checkpoint", r"^ValueError: Cannot build OptTriConfig \(model_type 'opt_tri'\) from a config of "
                                     r"model_type 'bert'"),
]


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
    assert len(CASES) >= 30, f"only {len(CASES)} bad-input cases"
    per_area = Counter(name.split(":")[0] for name in names)
    kinds = Counter(type(expectation).__name__ for _, _, expectation in CASES)
    print(f"\nbad-input catalogue: {len(CASES)} cases ({len(_SLOW_CASES)} CLI subprocess cases marked slow)")
    print("  by area: " + ", ".join(f"{area}={count}" for area, count in sorted(per_area.items())))
    print("  by expectation: " + ", ".join(f"{kind}={count}" for kind, count in sorted(kinds.items())))
