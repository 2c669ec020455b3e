"""Tests for the OPT-Tri processor stack: tokenizer builder, image processor, feature extractor, processor."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_opt_tri.feature_extraction_opt_tri import LOG_FLOOR, OptTriFeatureExtractor
from modeling_opt_tri.image_processing_opt_tri import OptTriImageProcessor
from modeling_opt_tri.processing_opt_tri import OptTriProcessor
from modeling_opt_tri.tokenizer_training import build_wordpiece_tokenizer


FSDD_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fsdd"
CORPUS = [
    "a red circle above a blue square",
    "the green triangle is small",
    "is the square to the left of the circle? yes",
    "two yellow stars and one purple hexagon",
] * 4
IMAGE_SIZE = 32
MODEL_MAX_LENGTH = 16
SILENT_FEATURE = (math.log(LOG_FLOOR) - (-4.27)) / 4.57  # what a silent frame normalises to


@pytest.fixture(scope="module")
def tokenizer():
    return build_wordpiece_tokenizer(CORPUS, vocab_size=200, model_max_length=MODEL_MAX_LENGTH)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return OptTriProcessor(
        image_processor=OptTriImageProcessor(image_size=IMAGE_SIZE),
        feature_extractor=OptTriFeatureExtractor(),
        tokenizer=tokenizer,
    )


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)


def _wave(seconds: float, rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _fsdd_recordings(count: int) -> list[Path]:
    recordings = FSDD_DIR / "recordings"
    if not recordings.is_dir():
        pytest.skip(f"../shared/data/fsdd not found: {recordings} is missing (Free Spoken Digit Dataset)")
    files = sorted(recordings.glob("*.wav"))[:count]
    if not files:
        pytest.skip(f"../shared/data/fsdd not found: no .wav files in {recordings}")
    return files


# ----------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_ids_and_reload(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    ids = tokenizer("A RED Circle")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == ["a", "red", "circle"]  # lowercased
    assert len(tokenizer) > 20  # a real trained vocabulary, not the 5 special tokens
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = ["two yellow stars", "is the square small? zebra"]
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.model_max_length == MODEL_MAX_LENGTH


def test_tokenizer_rejects_empty_corpus():
    with pytest.raises(ValueError, match="no non-empty text"):
        build_wordpiece_tokenizer(["", "  "], vocab_size=50)


# ------------------------------------------------------------------------------------------------ images
def test_tokenization_is_a_deprecated_alias_of_tokenizer_training():
    import importlib

    from modeling_opt_tri import tokenizer_training

    sys.modules.pop("modeling_opt_tri.tokenization", None)
    with pytest.warns(FutureWarning, match="modeling_opt_tri.tokenizer_training"):
        old = importlib.import_module("modeling_opt_tri.tokenization")
    for name in old.__all__:
        assert getattr(old, name) is getattr(tokenizer_training, name), name


def test_image_outputs_and_none_rows(rgb):
    ip = OptTriImageProcessor(image_size=IMAGE_SIZE)
    out = ip([rgb, None, Image.fromarray(rgb)], return_tensors="pt")
    assert out["pixel_values"].shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert out["pixel_values"].dtype == torch.float32
    assert out["image_mask"].tolist() == [1, 0, 1] and out["image_mask"].dtype == torch.int64
    assert torch.all(out["pixel_values"][1] == 0)
    single = ip(rgb, return_tensors="np")
    assert single["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_image_input_types_give_identical_pixels(rgb):
    ip = OptTriImageProcessor(image_size=IMAGE_SIZE)
    reference = ip(Image.fromarray(rgb))["pixel_values"]
    variants = [
        rgb,  # HWC numpy
        np.ascontiguousarray(rgb.transpose(2, 0, 1)),  # CHW numpy
        torch.from_numpy(rgb).permute(2, 0, 1),  # CHW tensor
        torch.from_numpy(rgb),  # HWC tensor
    ]
    for variant in variants:
        np.testing.assert_array_equal(ip(variant)["pixel_values"], reference)
    batch = ip(np.stack([rgb, rgb]))["pixel_values"]  # 4-D array = batch
    np.testing.assert_array_equal(batch, np.concatenate([reference, reference]))


def test_image_modes_are_normalised_to_rgb(rgb):
    ip = OptTriImageProcessor(image_size=IMAGE_SIZE)
    gray = rgb[:, :, 0]
    expected_gray = ip(Image.fromarray(gray))["pixel_values"]  # PIL "L"
    np.testing.assert_array_equal(ip(gray)["pixel_values"], expected_gray)
    np.testing.assert_array_equal(ip(gray[:, :, None])["pixel_values"], expected_gray)
    expected = ip(rgb)["pixel_values"]
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    over_white = Image.alpha_composite(Image.new("RGBA", (56, 40), (255,) * 4), Image.fromarray(rgba)).convert("RGB")
    composited = ip(over_white)["pixel_values"]
    assert np.abs(composited - expected).mean() > 0.5  # compositing over white changes the picture...
    np.testing.assert_array_equal(ip(rgba)["pixel_values"], composited)  # ...the same way for arrays
    np.testing.assert_array_equal(ip(Image.fromarray(rgba))["pixel_values"], composited)  # and RGBA images
    opaque = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(ip(opaque)["pixel_values"], expected)  # an opaque alpha changes nothing
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)  # 16-bit grayscale, same picture
    assert sixteen.mode.startswith("I")
    np.testing.assert_allclose(ip(sixteen)["pixel_values"], expected_gray, atol=0.05)
    floats = ip(rgb.astype(np.float32) / 255.0)["pixel_values"]
    # Same picture resized in float: PIL's 8-bit path rounds and clips between its two passes, so only close.
    assert np.abs(floats - expected).mean() < 0.02 and np.abs(floats - expected).max() < 0.3
    unnormalised = OptTriImageProcessor(image_size=IMAGE_SIZE, do_normalize=False)(rgb)["pixel_values"]
    assert unnormalised.min() >= 0.0 and unnormalised.max() <= 1.0


def _images_of_every_kind() -> dict[str, object]:
    """One 40x56 image per PIL mode and per NumPy dtype (HWC), with varied content."""
    rng = np.random.default_rng(5)
    shape = (40, 56)
    kinds: dict[str, object] = {}
    for mode in ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"]:
        bands = len(Image.new(mode, (1, 1)).getbands())
        kinds[f"mode {mode}"] = Image.frombytes(mode, shape[::-1], rng.integers(0, 256, 40 * 56 * bands, np.uint8).tobytes())
    palette = Image.fromarray(rng.integers(0, 4, shape, dtype=np.uint8), mode="L").convert("P")
    palette.info["transparency"] = 2
    kinds["mode P with transparency"] = palette
    kinds["mode I (16-bit values)"] = Image.fromarray(rng.integers(0, 65536, shape).astype(np.int32))
    kinds["mode I (8-bit values)"] = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert("I")
    kinds["mode I;16"] = Image.fromarray(rng.integers(0, 65536, shape).astype(np.uint16))
    kinds["mode F"] = Image.fromarray(rng.random(shape, dtype=np.float32))
    for dtype in (np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64, bool):
        if np.dtype(dtype).kind == "f":
            kinds[f"array {np.dtype(dtype).name}"] = rng.random(shape + (3,)).astype(dtype)
        elif dtype is bool:
            kinds["array bool"] = rng.integers(0, 2, shape + (3,)).astype(bool)
        else:
            kinds[f"array {np.dtype(dtype).name}"] = rng.integers(0, min(np.iinfo(dtype).max, 65535) + 1, shape + (3,)).astype(dtype)
    kinds["array uint8 RGBA"] = rng.integers(0, 256, shape + (4,), dtype=np.uint8)
    return kinds


@pytest.mark.parametrize("backend", ["torch", "pil"])
def test_training_and_inference_see_the_same_pixels(backend):
    """Every PIL mode and NumPy dtype: the collator's path (decode_image, then the processor) and
    processor(images=...) give the same pixel_values. 8-bit sources agree exactly; 16-bit and float sources are
    rounded to 8 bits by decode_image and resized in 8 bits, where inference resizes floats, so they agree to about
    half a level on average (up to about 10 levels on this noise, where bicubic rings and 8-bit resizing clips
    between its passes; before resizing they agree to half a level, see `same_pixels:*` in tests/test_bad_inputs.py)."""
    from modeling_opt_tri.data import decode_image

    ip = OptTriImageProcessor(image_size=IMAGE_SIZE, resize_backend=backend, do_normalize=False)
    for name, image in _images_of_every_kind().items():
        training = ip(decode_image(image))["pixel_values"]
        inference = ip(image)["pixel_values"]
        deep = name in ("mode I (16-bit values)", "mode I;16", "mode F") or any(
            name == f"array {d}" for d in ("uint16", "int16", "int32", "float32", "float64"))
        if deep:
            assert np.abs(training - inference).max() <= 0.05, name
            assert np.abs(training - inference).mean() <= 1 / 255, name
        else:
            np.testing.assert_array_equal(training, inference, err_msg=name)
    white = ip(Image.new("RGBA", (40, 56), (10, 200, 30, 0)))["pixel_values"]
    np.testing.assert_allclose(white, 1.0)  # fully transparent -> white, in both paths


def _smooth_picture(height: int, width: int, seed: int) -> np.ndarray:
    """An 8-bit RGB picture with edges and gradients (a few filled rectangles on a ramp), like real photos."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    for _ in range(6):
        top, left = rng.integers(0, height - 4), rng.integers(0, width - 4)
        ramp[top : top + rng.integers(3, height // 2), left : left + rng.integers(3, width // 2)] = rng.integers(
            0, 256, size=3
        )
    return ramp.astype(np.uint8)


@pytest.mark.parametrize("resample", [Image.Resampling.BICUBIC, Image.Resampling.BILINEAR])
@pytest.mark.parametrize(("height", "width", "size"), [(64, 64, 224), (40, 56, 32), (300, 200, 96), (17, 90, 48)])
def test_torch_resize_backend_follows_pil(height, width, size, resample, monkeypatch):
    """Upscaling, downscaling (antialiased, as PIL) and non-square: within 3 levels of PIL, almost always equal.

    Measured here: at most 2 levels apart, and a mean difference of at most 0.006 levels (on these smooth pictures;
    uniform noise gives larger means, e.g. 0.075 for bilinear 64 -> 224).
    """
    picture = _smooth_picture(height, width, seed=height + width)
    fast = OptTriImageProcessor(image_size=size, resample=resample, do_normalize=False)
    exact = OptTriImageProcessor(image_size=size, resample=resample, do_normalize=False, resize_backend="pil")
    assert fast.resize_backend == "torch"
    calls = []
    interpolate = torch.nn.functional.interpolate
    monkeypatch.setattr(torch.nn.functional, "interpolate", lambda *a, **k: calls.append(k) or interpolate(*a, **k))
    got = fast(Image.fromarray(picture))["pixel_values"][0] * 255.0
    assert len(calls) == 1 and calls[0]["antialias"] and calls[0]["mode"] == resample.name.lower()  # torch's kernel
    pil = np.asarray(Image.fromarray(picture).resize((size, size), resample=resample), np.float32).transpose(2, 0, 1)
    np.testing.assert_allclose(exact(Image.fromarray(picture))["pixel_values"][0] * 255.0, pil, atol=1e-3)
    difference = np.abs(got - pil)
    assert difference.max() <= 3.0 + 1e-3, difference.max()
    assert difference.mean() < 0.05, difference.mean()  # measured <= 0.006; a one-pixel shift gives > 1


def test_torch_resize_is_independent_of_the_batch(rgb):
    """Grouping images by size for the batched kernel does not change any image's pixels."""
    processor = OptTriImageProcessor(image_size=IMAGE_SIZE)
    small = _smooth_picture(20, 30, seed=1)
    gray = Image.fromarray(_smooth_picture(50, 50, seed=2)[:, :, 0])  # mode "L"
    as_float = rgb.astype(np.float32) / 255.0  # float images take PIL's float path
    exact_size = _smooth_picture(IMAGE_SIZE, IMAGE_SIZE, seed=3)  # not resized at all
    images = [rgb, small, None, gray, Image.fromarray(rgb), as_float, exact_size, small]
    batch = processor(images)["pixel_values"]
    for row, image in enumerate(images):
        if image is None:
            assert not batch[row].any()
            continue
        np.testing.assert_array_equal(batch[row], processor(image)["pixel_values"][0], err_msg=f"row {row}")


def test_torch_resize_works_in_bounded_chunks(monkeypatch):
    """A size group larger than the chunk budget is converted and resized chunk by chunk, with the same pixels."""
    import modeling_opt_tri.image_processing_opt_tri as module

    images = [Image.fromarray(_smooth_picture(20, 30, seed=seed)) for seed in range(5)]
    processor = OptTriImageProcessor(image_size=IMAGE_SIZE)
    whole = processor(images)["pixel_values"]
    calls = []
    interpolate = torch.nn.functional.interpolate
    monkeypatch.setattr(torch.nn.functional, "interpolate", lambda x, **k: calls.append(x.shape[0]) or interpolate(x, **k))
    monkeypatch.setattr(module, "_TORCH_RESIZE_CHUNK_BYTES", 2 * 20 * 30 * 3)  # two images per chunk
    np.testing.assert_array_equal(processor(images)["pixel_values"], whole)
    assert calls == [2, 2, 1]


def test_torch_resize_backend_uses_one_thread_and_restores_the_count():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        calls = []
        original = torch.nn.functional.interpolate

        def spy(*args, **kwargs):
            calls.append(torch.get_num_threads())
            return original(*args, **kwargs)

        torch.nn.functional.interpolate = spy
        try:
            OptTriImageProcessor(image_size=IMAGE_SIZE)([_smooth_picture(20, 20, seed=4)])
        finally:
            torch.nn.functional.interpolate = original
        assert calls == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_resize_backend_choices_and_round_trip(rgb, tmp_path):
    lanczos = Image.Resampling.LANCZOS  # no torch kernel: PIL's exact result with either backend
    np.testing.assert_array_equal(
        OptTriImageProcessor(image_size=IMAGE_SIZE, resample=lanczos)(rgb)["pixel_values"],
        OptTriImageProcessor(image_size=IMAGE_SIZE, resample=lanczos, resize_backend="pil")(rgb)["pixel_values"],
    )
    with pytest.raises(ValueError, match="resize_backend must be one of"):
        OptTriImageProcessor(resize_backend="cv2")
    exact = OptTriImageProcessor(image_size=IMAGE_SIZE, resize_backend="pil")
    exact.save_pretrained(tmp_path)
    reloaded = OptTriImageProcessor.from_pretrained(tmp_path)
    assert reloaded.resize_backend == "pil"
    np.testing.assert_array_equal(reloaded(rgb)["pixel_values"], exact(rgb)["pixel_values"])


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (np.zeros(10, np.uint8), ValueError, "dimensions"),
        (np.zeros((2, 3, 8, 8, 3), np.uint8), ValueError, "dimensions"),
        (np.zeros((8, 8, 2), np.uint8), ValueError, "1, 3 or 4"),
        (np.zeros((5, 8, 9), np.uint8), ValueError, "1, 3 or 4"),
        (np.zeros((0, 8, 3), np.uint8), ValueError, "zero size"),
        (Image.new("RGB", (0, 4)), ValueError, "zero size"),
        (np.full((8, 8, 3), np.nan, np.float32), ValueError, "NaN"),
        (np.full((8, 8, 3), 200.0, np.float32), ValueError, r"\[0, 1\]"),
        (np.full((8, 8, 3), -1, np.int32), ValueError, "negative values"),
        (np.full((8, 8, 3), 70000, np.int64), ValueError, "above the 16-bit range"),
        (np.zeros((8, 8, 3), np.complex64), TypeError, "dtype"),
        ("cat.png", TypeError, "unsupported image type"),
    ],
)
def test_image_errors(image, error, match):
    with pytest.raises(error, match=match):
        OptTriImageProcessor(image_size=IMAGE_SIZE)([None, image])


# ------------------------------------------------------------------------------------------------- audio
def test_audio_outputs_and_none_rows():
    fe = OptTriFeatureExtractor()
    clips = [_wave(1.0), None, _wave(0.5), np.zeros(1000, np.float32)]
    out = fe(clips, sampling_rate=16000, return_tensors="pt")
    frames = [fe.num_frames(16000), 0, fe.num_frames(8000), fe.num_frames(1000)]
    assert frames == [101, 0, 51, 7]
    total = 104  # 101 rounded up to a multiple of 4
    assert out["input_features"].shape == (4, 80, total) and out["input_features"].dtype == torch.float32
    assert out["audio_attention_mask"].shape == (4, total) and out["audio_attention_mask"].dtype == torch.int64
    assert out["audio_attention_mask"].sum(1).tolist() == frames
    assert torch.all(out["input_features"][1] == 0)
    assert torch.all(out["input_features"][2, :, 51:] == 0)  # padding frames
    assert torch.isfinite(out["input_features"]).all()
    silent = out["input_features"][3, :, :7]
    torch.testing.assert_close(silent, torch.full_like(silent, SILENT_FEATURE))


def test_audio_input_types_agree():
    fe = OptTriFeatureExtractor()
    wave = _wave(0.3)
    reference = fe(wave, sampling_rate=16000)["input_features"]
    np.testing.assert_array_equal(fe(torch.from_numpy(wave), sampling_rate=16000)["input_features"], reference)
    np.testing.assert_array_equal(fe(wave.tolist(), sampling_rate=16000)["input_features"], reference)
    np.testing.assert_array_equal(fe(wave[None, :], sampling_rate=16000)["input_features"], reference)  # [1, N]
    pcm = np.round(wave * 32767).astype(np.int16)
    as_float = pcm.astype(np.float32) / 32768.0  # documented int16 scaling
    np.testing.assert_array_equal(
        fe(pcm, sampling_rate=16000)["input_features"], fe(as_float, sampling_rate=16000)["input_features"]
    )


def test_audio_truncation_warns(caplog):
    fe = OptTriFeatureExtractor(max_length_seconds=1.0)
    with caplog.at_level(logging.WARNING):
        out = fe([_wave(1.5), _wave(0.2)], sampling_rate=16000)
    assert out["audio_attention_mask"][0].sum() == fe.num_frames(16000)
    assert "1 of 2 audio clips" in caplog.text and "truncated" in caplog.text


@pytest.mark.parametrize(
    ("audio", "kwargs", "match"),
    [
        (_wave(0.1), {}, "sampling_rate is required"),
        (_wave(0.1), {"sampling_rate": 0}, "positive"),
        (np.zeros(0, np.float32), {"sampling_rate": 16000}, "empty"),
        (np.zeros((1600, 2), np.float32), {"sampling_rate": 16000}, r"mono.*mean\(axis"),
        (np.full(100, np.nan, np.float32), {"sampling_rate": 16000}, "NaN"),
        (np.ones(100, np.complex64), {"sampling_rate": 16000}, "dtype"),
        (np.ones(100, bool), {"sampling_rate": 16000}, "dtype"),
    ],
)
def test_audio_errors(audio, kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptTriFeatureExtractor()([audio], **kwargs)


# ------------------------------------------------------------------------------------- real speech (FSDD)
def test_fsdd_frame_counts_at_8khz():
    import soundfile as sf

    fe = OptTriFeatureExtractor()
    waves = [sf.read(path, dtype="float32") for path in _fsdd_recordings(4)]
    assert all(rate == 8000 for _, rate in waves)
    out = fe([wave for wave, _ in waves], sampling_rate=8000)
    expected = [1 + (2 * len(wave)) // 160 for wave, _ in waves]  # 2x the samples at 16 kHz
    assert out["audio_attention_mask"].sum(axis=1).tolist() == expected
    assert out["input_features"].shape[2] % 4 == 0 and out["input_features"].shape[2] >= max(expected)


def test_fsdd_internal_resampling_matches_scipy():
    import soundfile as sf
    from scipy.signal import resample_poly

    fe = OptTriFeatureExtractor()
    waves = [sf.read(path, dtype="float32")[0] for path in _fsdd_recordings(3)]
    ours = fe(waves, sampling_rate=8000)
    upsampled = [resample_poly(wave, 2, 1).astype(np.float32) for wave in waves]
    theirs = fe(upsampled, sampling_rate=16000)
    np.testing.assert_array_equal(ours["audio_attention_mask"], theirs["audio_attention_mask"])
    np.testing.assert_allclose(ours["input_features"], theirs["input_features"], atol=1e-4)
    pcm = [sf.read(path, dtype="int16")[0] for path in _fsdd_recordings(3)]  # int16 PCM = soundfile's floats
    np.testing.assert_allclose(fe(pcm, sampling_rate=8000)["input_features"], ours["input_features"], atol=1e-5)


def test_fsdd_spectrum_is_band_limited():
    import soundfile as sf

    fe = OptTriFeatureExtractor()
    frequencies = np.linspace(0, fe.sampling_rate / 2, fe.n_fft // 2 + 1)
    peaks = frequencies[fe.mel_filters.argmax(axis=0)]  # centre frequency of each mel bin
    low, high = peaks < 3800, peaks > 4500
    for path in _fsdd_recordings(3):
        wave, rate = sf.read(path, dtype="float32")
        out = fe(wave, sampling_rate=rate)
        features = out["input_features"][0][:, out["audio_attention_mask"][0].astype(bool)]
        assert np.isfinite(features).all()
        # No energy above the 4 kHz Nyquist of the 8 kHz source: those bins sit near the log floor.
        assert features[high].mean() < SILENT_FEATURE + 1.0
        assert features[low].mean() - features[high].mean() > 2.0


# --------------------------------------------------------------------------------------------- processor
def test_processor_all_modalities(processor, rgb):
    batch = processor(
        text=["a red circle", None, "two yellow stars"],
        images=[rgb, None, Image.fromarray(rgb)],
        audio=[_wave(0.5, 8000), _wave(0.2, 8000), None],
        sampling_rate=8000,
    )
    assert set(batch.keys()) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "pixel_values",
        "image_mask",
        "input_features",
        "audio_attention_mask",
    }
    assert set(batch.keys()) <= set(processor.model_input_names)
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 3
    assert batch["attention_mask"][1].sum() == 0 and torch.all(batch["input_ids"][1] == 0)
    assert batch["attention_mask"][0].sum() == 5  # [CLS] a red circle [SEP]
    assert batch["pixel_values"].shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["image_mask"].tolist() == [1, 0, 1]
    assert batch["input_features"].shape[:2] == (3, 80)
    assert batch["audio_attention_mask"].sum(1).tolist() == [51, 21, 0]
    assert processor.batch_decode(batch["input_ids"], skip_special_tokens=True)[0] == "a red circle"
    assert processor.decode(batch["input_ids"][2], skip_special_tokens=True) == "two yellow stars"


def test_processor_single_modalities(processor, rgb):
    assert set(processor(text="a red circle").keys()) == {"input_ids", "token_type_ids", "attention_mask"}
    assert set(processor(images=rgb).keys()) == {"pixel_values", "image_mask"}
    audio_only = processor(audio=_wave(0.1), sampling_rate=16000, return_tensors="np")
    assert set(audio_only.keys()) == {"input_features", "audio_attention_mask"}
    assert isinstance(audio_only["input_features"], np.ndarray)


def test_processor_truncates_long_text_with_warning(processor, caplog):
    long_text = "a red circle above a blue square " * 10
    with caplog.at_level(logging.WARNING):
        batch = processor(text=[long_text, "small", long_text])
    assert batch["input_ids"].shape[1] == MODEL_MAX_LENGTH
    assert batch["input_ids"][0, -1] == processor.tokenizer.sep_token_id
    assert "2 of 3 text rows" in caplog.text and "truncated" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert processor(text=[long_text], max_length=8)["input_ids"].shape[1] == 8
    assert "max_length=8" in caplog.text


def test_processor_errors(processor, rgb):
    with pytest.raises(ValueError, match="no modality given"):
        processor()
    with pytest.raises(ValueError, match="text has 2.*images has 1.*audio has 3"):
        processor(text=["a", "b"], images=[rgb], audio=[_wave(0.1)] * 3, sampling_rate=16000)
    with pytest.raises(ValueError, match="sampling_rate"):
        processor(audio=[_wave(0.1)])
    with pytest.raises(TypeError, match=r"text\[1\]"):
        processor(text=["a", 3])
    with pytest.raises(ValueError, match="needs a tokenizer"):
        OptTriProcessor()


def test_processor_save_load_round_trip(processor, rgb, tmp_path):
    from transformers import AutoProcessor

    inputs = {
        "text": ["a red circle", None],
        "images": [None, rgb],
        "audio": [_wave(0.4, 8000), None],
        "sampling_rate": 8000,
    }
    expected = processor(**inputs)
    processor.save_pretrained(tmp_path)
    for name in ("processing_opt_tri.py", "image_processing_opt_tri.py", "feature_extraction_opt_tri.py"):
        assert (tmp_path / name).is_file()
    for loaded in (
        OptTriProcessor.from_pretrained(tmp_path),
        AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True),
    ):
        assert loaded.image_processor.image_size == IMAGE_SIZE
        got = loaded(**inputs)
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


def test_remote_code_loads_without_the_package(processor, rgb, tmp_path):
    """A fresh process that cannot import `modeling_opt_tri` loads the saved folder as remote code."""
    processor.save_pretrained(tmp_path)
    expected = processor(text=["a red circle"], images=[rgb], audio=[_wave(0.2)], sampling_rate=16000)
    np.savez(tmp_path / "expected.npz", **{k: v.numpy() for k, v in expected.items()})
    np.save(tmp_path / "image.npy", rgb)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["modeling_opt_tri"] = None  # as if the package were not installed
        import numpy as np
        from transformers import AutoProcessor
        folder = {str(tmp_path)!r}
        proc = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        assert not type(proc).__module__.startswith("modeling_opt_tri"), type(proc).__module__
        t = np.arange(3200) / 16000
        wave = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        got = proc(text=["a red circle"], images=[np.load(folder + "/image.npy")], audio=[wave], sampling_rate=16000)
        expected = np.load(folder + "/expected.npz")
        assert sorted(got.keys()) == sorted(expected.files), (sorted(got.keys()), expected.files)
        for key in expected.files:
            np.testing.assert_array_equal(got[key].numpy(), expected[key])
        print("REMOTE_OK")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "REMOTE_OK" in result.stdout, result.stderr[-3000:]


def test_installed_registration_with_auto_classes(processor, tmp_path):
    """The registration lines meant for `__init__.py`, against a throwaway config class."""
    from transformers import AutoConfig, AutoFeatureExtractor, AutoProcessor, PretrainedConfig

    # Not `from transformers import AutoImageProcessor`: without torchvision, transformers 5.17 exports a dummy
    # object under that name that raises on any attribute. The class in its own module is the real one.
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    class ThrowawayOptTriConfig(PretrainedConfig):
        model_type = "opt_tri_processor_test"

    AutoConfig.register("opt_tri_processor_test", ThrowawayOptTriConfig, exist_ok=True)
    AutoImageProcessor.register(
        ThrowawayOptTriConfig, slow_image_processor_class=OptTriImageProcessor, exist_ok=True
    )
    AutoFeatureExtractor.register(ThrowawayOptTriConfig, OptTriFeatureExtractor, exist_ok=True)
    AutoProcessor.register(ThrowawayOptTriConfig, OptTriProcessor, exist_ok=True)
    processor.save_pretrained(tmp_path)
    ThrowawayOptTriConfig().save_pretrained(tmp_path)
    assert type(AutoProcessor.from_pretrained(tmp_path)) is OptTriProcessor
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is OptTriImageProcessor
    assert type(AutoFeatureExtractor.from_pretrained(tmp_path)) is OptTriFeatureExtractor
