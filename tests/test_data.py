"""Tests of the data layer: ShapeWorld, metadata folders, export and robust decoding."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
from PIL import Image

from modeling_opt_tri.data import (
    ANSWERS,
    COLORS,
    SHAPES,
    CorruptSampleError,
    ShapeWorld,
    build_synthetic_dataset,
    build_synthetic_dataset_dict,
    build_synthetic_iterable_dataset,
    decode_audio,
    decode_image,
    export_synthetic_folder,
    load_metadata_folder,
    load_metadata_folder_dict,
    split_offset,
)
from modeling_opt_tri.data.synthetic import COLOR_PITCH_HZ


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A private datasets cache so tests neither read nor leave entries in the user's cache."""
    return str(tmp_path_factory.mktemp("hf_cache"))


def count_segments(wave: np.ndarray, sampling_rate: int, threshold: float = 0.05) -> int:
    """Number of loud runs in the 10 ms RMS envelope of ``wave``."""
    frame = sampling_rate // 100
    n = len(wave) // frame
    rms = np.sqrt((wave[: n * frame].reshape(n, frame).astype(np.float64) ** 2).mean(axis=1))
    loud = rms > threshold
    return int(loud[0]) + int(np.count_nonzero(loud[1:] & ~loud[:-1]))


# ---------------------------------------------------------------------------- ShapeWorld
def test_sample_is_deterministic_per_seed_and_index() -> None:
    a, b, other = ShapeWorld(seed=0), ShapeWorld(seed=0), ShapeWorld(seed=1)
    b.sample(99)  # generating other rows first must not change row i
    for i in range(6):
        ra, rb, ro = a.sample(i), b.sample(i), other.sample(i)
        assert ra["text"] == rb["text"]
        assert ra["questions"] == rb["questions"] and ra["answers"] == rb["answers"]
        assert ra["scene"] == rb["scene"]
        assert ra["image"].tobytes() == rb["image"].tobytes()
        np.testing.assert_array_equal(ra["audio"]["array"], rb["audio"]["array"])
        assert ra["image"].tobytes() != ro["image"].tobytes()
        assert not np.array_equal(ra["audio"]["array"][:1000], ro["audio"]["array"][:1000])
    texts0 = [a.sample(i)["text"] for i in range(10)]
    texts1 = [other.sample(i)["text"] for i in range(10)]
    assert texts0 != texts1


def test_sample_fields_and_vocabulary() -> None:
    world = ShapeWorld(seed=3, image_size=48, sampling_rate=16000)
    assert world.label_names == COLORS
    assert ShapeWorld.COLORS == COLORS and ShapeWorld.SHAPES == SHAPES and ShapeWorld.ANSWERS == ANSWERS
    lengths = set()
    for i in range(60):
        row = world.sample(i)
        assert row["image"].mode == "RGB" and row["image"].size == (48, 48)
        assert 1 <= row["count"] == len(row["scene"]) <= 3
        assert row["label"] == COLORS.index(row["color"])
        assert (row["color"], row["shape"]) == (row["scene"][0]["color"], row["scene"][0]["shape"])
        for item in row["scene"]:
            assert item["color"] in row["text"] and item["shape"] in row["text"], (row["text"], item)
        assert row["question"] == row["questions"][0] and row["answer"] == row["answers"][0]
        assert len(row["questions"]) == len(row["answers"]) >= 3
        assert all(answer in ANSWERS for answer in row["answers"])
        lengths.add(len(row["text"].split()))
    assert len(lengths) >= 6  # captions have variable length


def test_questions_are_answered_correctly() -> None:
    world = ShapeWorld(seed=5)
    for i in range(40):
        row = world.sample(i)
        for question, answer in zip(row["questions"], row["answers"]):
            if question == "how many shapes are there?":
                assert answer == ["zero", "one", "two", "three"][row["count"]]
            if question.startswith("is there a"):
                color, shape = question.rstrip("?").split()[-2:]
                present = any(s["color"] == color and s["shape"] == shape for s in row["scene"])
                assert answer == ("yes" if present else "no")


def test_audio_properties_and_segment_count() -> None:
    world = ShapeWorld(seed=7)
    counts = set()
    for i in range(40):
        row = world.sample(i)
        wave, sr = row["audio"]["array"], row["audio"]["sampling_rate"]
        assert sr == 16000 and wave.dtype == np.float32 and wave.ndim == 1
        assert 0.4 <= len(wave) / sr <= 1.5
        assert np.isfinite(wave).all() and np.abs(wave).max() <= 1.0
        assert count_segments(wave, sr) == row["count"], row["scene"]
        counts.add(row["count"])
    assert counts == {1, 2, 3}


def test_audio_pitch_encodes_colour() -> None:
    world = ShapeWorld(seed=0)
    for color in COLORS:
        scene = [{"color": color, "shape": "circle", "size": "large", "position": "center", "row": 1, "col": 1}]
        wave = world.render_audio(scene, np.random.default_rng(0))
        spectrum = np.abs(np.fft.rfft(wave))
        peak = np.fft.rfftfreq(len(wave), 1.0 / world.sampling_rate)[np.argmax(spectrum)]
        assert abs(peak - COLOR_PITCH_HZ[color]) < 5.0


# ---------------------------------------------------------------------------- datasets
def test_build_dataset_columns_and_rows_match_world(cache_dir: str) -> None:
    ds = build_synthetic_dataset(8, seed=2, split="train", cache_dir=cache_dir)
    assert isinstance(ds, datasets.Dataset) and len(ds) == 8
    features = ds.features
    assert features["text"] == datasets.Value("string")
    assert isinstance(features["image"], datasets.Image)
    assert features["audio"]["array"] == datasets.List(datasets.Value("float32"))
    assert features["audio"]["sampling_rate"] == datasets.Value("int32")
    assert isinstance(features["label"], datasets.ClassLabel) and features["label"].names == COLORS
    for column in ("id", "question", "answer", "color", "shape", "count"):
        assert column in features
    world = ShapeWorld(seed=2)
    for i in (0, 7):
        row, expected = ds[i], world.sample(i)
        assert row["id"] == expected["id"] and row["text"] == expected["text"]
        np.testing.assert_array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(expected["image"]))
        np.testing.assert_array_equal(np.asarray(row["audio"]["array"], dtype=np.float32), expected["audio"]["array"])
        assert row["label"] == expected["label"] and row["count"] == expected["count"]


def test_splits_are_disjoint(cache_dir: str) -> None:
    dd = build_synthetic_dataset_dict(12, 6, 6, seed=0, cache_dir=cache_dir)
    assert set(dd) == {"train", "validation", "test"}
    ids = {name: set(dd[name]["id"]) for name in dd}
    assert not ids["train"] & ids["validation"]
    assert not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    assert dd["validation"][0]["id"] == ShapeWorld(0).sample(split_offset("validation"))["id"]
    assert len({split_offset(s) for s in ("train", "validation", "test", "extra")}) == 4


def test_iterable_dataset_matches(cache_dir: str) -> None:
    stream = build_synthetic_iterable_dataset(3, seed=4, split="test")
    rows = list(stream)
    built = build_synthetic_dataset(3, seed=4, split="test", cache_dir=cache_dir)
    assert [r["id"] for r in rows] == built["id"]
    assert [r["text"] for r in rows] == built["text"]


# ---------------------------------------------------------------------------- folders
def test_export_load_round_trip(tmp_path: Path) -> None:
    metadata = export_synthetic_folder(tmp_path / "sw", num_rows=5, seed=1)
    assert metadata.name == "metadata.jsonl"
    ds = load_metadata_folder(tmp_path / "sw")
    assert len(ds) == 5 and ds.column_names[:3] == ["text", "image", "audio"]
    world = ShapeWorld(seed=1)
    for i, row in enumerate(ds):
        expected = world.sample(i)
        assert row["text"] == expected["text"] and row["id"] == expected["id"]
        assert Path(row["image"]).is_absolute() and Path(row["audio"]).is_absolute()
        image = decode_image(row["image"])
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected["image"]))
        wave, sr = decode_audio(row["audio"])
        assert sr == 16000 and wave.dtype == np.float32
        np.testing.assert_allclose(wave, expected["audio"]["array"], atol=1.0 / 16384)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_synthetic_folder(tmp_path / "sw", num_rows=1)


def test_missing_columns_become_none(tmp_path: Path) -> None:
    export_synthetic_folder(tmp_path / "sparse", num_rows=30, seed=0, missing_probability=0.5)
    ds = load_metadata_folder(tmp_path / "sparse")
    for column in ("text", "image", "audio"):
        assert any(v is None for v in ds[column]), column
    assert all(any(row[c] is not None for c in ("text", "image", "audio")) for row in ds)

    folder = tmp_path / "manual"
    folder.mkdir()
    lines = [{"text": "a red circle", "speaker": "x"}, {"image": "a.png"}, {"audio": "b.wav", "score": 1.5}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    ds = load_metadata_folder(folder)
    assert ds.column_names == ["text", "image", "audio", "speaker", "score"]
    assert ds["text"] == ["a red circle", None, None]
    assert ds["image"] == [None, str(folder.absolute() / "a.png"), None]
    assert ds["speaker"] == ["x", None, None] and ds["score"] == [None, None, 1.5]


def test_split_subfolders(tmp_path: Path) -> None:
    export_synthetic_folder(tmp_path / "train", num_rows=3, split="train")
    export_synthetic_folder(tmp_path / "validation", num_rows=2, split="validation")
    dd = load_metadata_folder_dict(tmp_path)
    assert list(dd) == ["train", "validation"] and dd.num_rows == {"train": 3, "validation": 2}
    assert len(load_metadata_folder(tmp_path, split="validation")) == 2
    with pytest.raises(FileNotFoundError, match="split sub-folders"):
        load_metadata_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="split 'test'"):
        load_metadata_folder(tmp_path, split="test")


def _folder_with(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text(text)
    return folder


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_metadata_folder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no metadata.jsonl"):
        load_metadata_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no metadata.jsonl"):
        load_metadata_folder_dict(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"text": "broken"\n', "line 2 is not valid JSON"),
        ('{"text": "ok"}\n[1, 2]\n', "line 2 must be a JSON object"),
        ('{"text": "ok"}\n{"label": 3}\n', "none of 'text', 'image' or 'audio'"),
        ('{"image": "../outside.png"}\n', "escapes the dataset folder"),
        ('{"audio": "/etc/passwd"}\n', "escapes the dataset folder"),
        ('{"image": 5}\n', "must be a relative path string"),
        ("\n\n", "contains no rows"),
    ],
)
def test_folder_row_errors(tmp_path: Path, content: str, message: str) -> None:
    folder = _folder_with(tmp_path, content)
    with pytest.raises(ValueError, match=message):
        load_metadata_folder(folder)


# ---------------------------------------------------------------------------- decoding
def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    ShapeWorld(0).sample(0)["image"].save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_image_inputs(tmp_path: Path) -> None:
    png = _png_bytes()
    reference = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    path = tmp_path / "x.png"
    path.write_bytes(png)
    for value in (png, {"bytes": png, "path": None}, {"bytes": None, "path": str(path)}, str(path), path, reference):
        image = decode_image(value)
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), reference)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert decode_image(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparency -> white
    assert decode_image(np.zeros((5, 6), dtype=np.float32)).size == (6, 5)


def test_decode_image_corrupt(tmp_path: Path) -> None:
    truncated = _png_bytes()[:100]
    with pytest.raises(CorruptSampleError, match="row 3: in-memory bytes: unreadable or truncated"):
        decode_image({"bytes": truncated, "path": None}, context="row 3")
    bad = tmp_path / "bad.png"
    bad.write_bytes(truncated)
    with pytest.raises(CorruptSampleError, match="bad.png.*unreadable or truncated"):
        decode_image(str(bad))
    with pytest.raises(CorruptSampleError, match="does not exist"):
        decode_image(str(tmp_path / "missing.png"))
    with pytest.raises(CorruptSampleError, match="zero size"):
        decode_image(Image.new("RGB", (0, 0)))
    with pytest.raises(CorruptSampleError, match="empty image bytes"):
        decode_image(b"")
    with pytest.raises(CorruptSampleError, match="missing modality"):
        decode_image(None)
    assert issubclass(CorruptSampleError, ValueError)


def test_decode_audio_inputs(tmp_path: Path) -> None:
    stereo = np.stack([np.full(800, 0.5), np.full(800, -0.25)], axis=1).astype(np.float32)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo, 8000, subtype="FLOAT")
    for value in (str(path), path, {"path": str(path), "bytes": None}, {"bytes": path.read_bytes(), "path": None}):
        wave, sr = decode_audio(value)
        assert sr == 8000 and wave.shape == (800,) and wave.dtype == np.float32
        np.testing.assert_allclose(wave, 0.125)  # channels averaged
    wave, sr = decode_audio({"array": np.array([16384, -32768], dtype=np.int16), "sampling_rate": 16000})
    np.testing.assert_allclose(wave, [0.5, -1.0])
    wave, _ = decode_audio({"array": stereo.T, "sampling_rate": 8000})  # channels-first array
    assert wave.shape == (800,)
    wave, sr = decode_audio(([0.1, 0.2], 22050))
    assert sr == 22050 and wave.dtype == np.float32


def test_decode_audio_corrupt(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" + bytes(range(50)))
    with pytest.raises(CorruptSampleError, match="row 9: file .*garbage.wav.*unreadable or truncated audio"):
        decode_audio(str(garbage), context="row 9")
    with pytest.raises(CorruptSampleError, match="unreadable or truncated audio"):
        decode_audio({"bytes": b"not audio at all", "path": None})
    with pytest.raises(CorruptSampleError, match="does not exist"):
        decode_audio(str(tmp_path / "missing.wav"))
    with pytest.raises(CorruptSampleError, match="empty audio"):
        decode_audio({"array": [], "sampling_rate": 16000})
    with pytest.raises(CorruptSampleError, match="NaN or inf"):
        decode_audio({"array": [0.0, float("nan")], "sampling_rate": 16000})
    with pytest.raises(CorruptSampleError, match="sampling_rate"):
        decode_audio({"array": [0.0, 0.1]})
    with pytest.raises(CorruptSampleError, match="missing modality"):
        decode_audio(None)


# ------------------------------------------------------------------------------------------ round 2 (issue 14)
def _tiny_processor(max_length_seconds: float = 1.0):
    from modeling_opt_tri import OptTriFeatureExtractor, OptTriImageProcessor, OptTriProcessor
    from modeling_opt_tri.tokenizer_training import build_wordpiece_tokenizer

    tokenizer = build_wordpiece_tokenizer(["a red circle", "a blue square"] * 4, vocab_size=40, model_max_length=16)
    return OptTriProcessor(
        image_processor=OptTriImageProcessor(image_size=16),
        feature_extractor=OptTriFeatureExtractor(feature_size=16, max_length_seconds=max_length_seconds),
        tokenizer=tokenizer,
    )


def _wav_bytes(rate: int, samples: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(samples, np.float32), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_token_budget_counts_truncated_lengths(tmp_path: Path) -> None:
    """--max_tokens: a 10-minute clip and a 600-word caption fit a budget sized for what the processor keeps."""
    from modeling_opt_tri.data.collate import TriModalCollator
    from modeling_opt_tri.training.pretrain import BatchStream, PretrainArguments

    (tmp_path / "long.wav").write_bytes(_wav_bytes(1000, 600 * 1000))  # 10 minutes at 1 kHz
    rows = [{"text": "a red circle " * 200, "audio": "long.wav"}, {"text": "a blue square"}]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = load_metadata_folder(tmp_path)
    processor = _tiny_processor(max_length_seconds=1.0)  # keeps 16 tokens and 1 s (100 frames)
    args = PretrainArguments(batch_size=2, max_tokens=2 * (100 + 16))
    stream = BatchStream(dataset, TriModalCollator(processor), args, 0, 1, processor.tokenizer)
    assert sorted(stream.sampler.lengths.tolist())[-1] == 116  # the long row, counted as cut
    _, _, batch = next(stream.iterate(0, 0))
    assert batch["input_ids"].shape[1] <= 16 and batch["audio_attention_mask"].sum() == 101


def test_image_pixel_limit_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decompression bomb is refused from its header: the pixels are never decoded."""
    from PIL import ImageFile

    big = io.BytesIO()
    Image.new("1", (3000, 3000)).save(big, format="PNG")
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or original(self))
    with pytest.raises(CorruptSampleError, match=r"row 1: bytes: image of 3000x3000 = 9000000 pixels is above the limit "
                                                 r"of 1000000 pixels \(a decompression bomb\?\)"):
        decode_image(big.getvalue(), context="row 1", max_pixels=1_000_000)
    assert decoded == []
    assert decode_image(big.getvalue()).size == (3000, 3000) and decoded  # under the default limit it decodes


def test_non_regular_files_in_a_folder_are_corrupt_rows(tmp_path: Path) -> None:
    """FIFOs named by metadata.jsonl are skipped rows (counted), and neither decoding nor the length pass blocks."""
    import os
    import threading

    from modeling_opt_tri.data.collate import TriModalCollator, row_lengths

    os.mkfifo(tmp_path / "image.png")
    os.mkfifo(tmp_path / "sound.wav")
    (tmp_path / "one_hz.wav").write_bytes(_wav_bytes(1, 40000))  # 80 KB that claim 11 hours
    rows = [{"text": "a", "image": "image.png"}, {"text": "b", "audio": "sound.wav"}, {"text": "c", "audio": "one_hz.wav"},
            {"text": "a red circle"}]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = load_metadata_folder(tmp_path)
    processor = _tiny_processor()
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["lengths"] = row_lengths(dataset, processor.tokenizer, max_audio_seconds=1.0)
            outcome["batch"] = TriModalCollator(processor)([dataset[i] for i in range(len(dataset))])
        except Exception as error:  # noqa: BLE001 - re-raised below, in the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        for fifo in ("image.png", "sound.wav"):  # unblock the reader before failing
            try:
                os.close(os.open(tmp_path / fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        pytest.fail("decoding a FIFO blocked")
    if "error" in outcome:
        raise outcome["error"]
    assert [frames for frames, _ in outcome["lengths"]] == [0, 0, 0, 0]
    batch = outcome["batch"]
    assert batch["num_skipped_rows"] == 3 and batch["input_ids"].shape[0] == 1
    reasons = "\n".join(batch["skipped_reasons"])
    assert "image path is a FIFO (named pipe), not a regular file" in reasons
    assert "audio path is a FIFO (named pipe), not a regular file" in reasons
    assert "sampling_rate 1 Hz is outside the supported range 1000..384000 Hz" in reasons


def test_integer_audio_scaling_rules() -> None:
    """Python int lists are int16 PCM when they fit (not divided by 2**63); numpy ints by their width."""
    wave, _ = decode_audio({"array": [20000, -20000, 0, 32767], "sampling_rate": 16000})
    np.testing.assert_allclose(wave, np.array([20000, -20000, 0, 32767]) / 32768, rtol=1e-6)
    for dtype, value, expected in [(np.int8, -64, -0.5), (np.uint8, 192, 0.5), (np.int16, 16384, 0.5),
                                   (np.int32, 2**30, 0.5), (np.int64, 8192, 0.25)]:
        wave, _ = decode_audio({"array": np.full(4, value, dtype), "sampling_rate": 16000})
        np.testing.assert_allclose(wave, expected, err_msg=str(dtype))
    with pytest.raises(CorruptSampleError, match=r"outside \[-32768, 32767\]"):
        decode_audio({"array": [2**31 - 1, 0], "sampling_rate": 16000})


def test_decode_image_integer_and_layout_rules() -> None:
    """int32 pixels above 255 are 16-bit (not black); (3, 4, 4) is channels-first (not 4-channel HWC)."""
    assert np.asarray(decode_image(np.full((8, 8), 40000, np.int32))).max() == round(40000 / 65535 * 255)
    chw = np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(decode_image(chw)), np.moveaxis(chw, 0, -1))
