"""Pre-training on your own data: every format (folder, parquet, save_to_disk, WebDataset shards; map-style and
streaming), column mapping, mixtures, the [UNK] check and the evaluation-split rule, on real FSDD speech."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, require_fsdd
from data_fixtures import fsdd_folder
from modeling_opt_tri.data.collate import TriModalCollator
from modeling_opt_tri.data.decoding import decode_audio
from modeling_opt_tri.data.sources import (
    NoEvaluationSplitError,
    is_held_out,
    load_sources,
    parse_sources,
    plan_evaluation,
)
from modeling_opt_tri.data.stream import StreamBatches
from modeling_opt_tri.data.writers import write_parquet, write_webdataset
from modeling_opt_tri.tokenizer_training import build_wordpiece_tokenizer, check_unk_share, unk_share

PRESET = str(REPO_ROOT / "configuration" / "tiny")


@pytest.fixture(scope="module")
def processor():
    from modeling_opt_tri import OptTriProcessor

    return OptTriProcessor.from_pretrained(PRESET)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 rows of real FSDD speech with captions and images; rows 3 and 7 lack the image, row 5 the audio."""
    root = fsdd_folder(tmp_path_factory.mktemp("data") / "digits", require_fsdd(), 12)
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    for i in (3, 7):
        rows[i].pop("image")
    rows[5].pop("audio")
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def _load(path, streaming=False, **columns):
    return load_sources(parse_sources(str(path), **columns), "train", streaming, seed=0)


def _rows(data) -> list[dict]:
    return list(data) if not hasattr(data, "__len__") else [data[i] for i in range(len(data))]


def _reference(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def _check_rows(rows: list[dict], folder: Path, processor) -> None:
    """The rows hold the folder's texts, and their images / audio decode to the folder's files (None where absent)."""
    reference = _reference(folder)
    assert [row["text"] for row in rows] == [r["text"] for r in reference]
    for row, ref in zip(rows, reference):
        assert (row["image"] is None) == ("image" not in ref)
        assert (row["audio"] is None) == ("audio" not in ref)
        if "audio" in ref:
            wave, rate = decode_audio(row["audio"])
            expected, expected_rate = decode_audio(str(folder / ref["audio"]))
            assert rate == expected_rate == 8000 and np.array_equal(wave, expected)
    batch = TriModalCollator(processor)(rows)
    assert batch["num_skipped_rows"] == 0
    assert batch["input_features"].shape[0] == batch["pixel_values"].shape[0] == len(rows)
    assert batch["image_mask"].tolist() == [0 if "image" not in r else 1 for r in reference]


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
def test_metadata_folder(folder, processor, streaming):
    _check_rows(_rows(_load(folder, streaming)), folder, processor)


def test_a_folders_metadata_file_stands_for_the_folder(folder, processor):
    """`--dataset folder/metadata.jsonl` reads the folder (its paths are relative to it), not a bare JSON file whose
    every row would be corrupt."""
    [source] = parse_sources(str(folder / "metadata.jsonl"))
    assert Path(source.path) == folder and source.name == folder.name
    _check_rows(_rows(_load(folder / "metadata.jsonl")), folder, processor)


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
def test_parquet_with_image_and_audio_features(folder, processor, tmp_path, streaming):
    import datasets

    write_parquet(_load(folder), tmp_path / "pq", rows_per_file=5)
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == [f"train-0000{i}.parquet" for i in range(3)]
    plain = datasets.load_dataset(str(tmp_path / "pq"), split="train")  # standard features, readable by datasets
    assert isinstance(plain.features["image"], datasets.Image) and isinstance(plain.features["audio"], datasets.Audio)
    _check_rows(_rows(_load(tmp_path / "pq", streaming)), folder, processor)


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
def test_save_to_disk_dataset_dict(folder, processor, tmp_path, streaming):
    import datasets

    train = datasets.load_dataset(str(_write_parquet_copy(folder, tmp_path)), split="train")
    datasets.DatasetDict({"train": train, "validation": train.select(range(4))}).save_to_disk(str(tmp_path / "disk"))
    _check_rows(_rows(_load(tmp_path / "disk", streaming)), folder, processor)
    plan = plan_evaluation(parse_sources(str(tmp_path / "disk")), "train", "validation", 0.0)
    assert plan.splits == {"disk": "validation"} and plan.name() == "validation"


def _write_parquet_copy(folder: Path, tmp_path: Path) -> Path:
    write_parquet(_load(folder), tmp_path / "copy")
    return tmp_path / "copy"


def test_webdataset_shards_stream_and_split_by_node(folder, processor, tmp_path):
    shards = write_webdataset(_load(folder), tmp_path / "wds", rows_per_shard=3)
    assert len(shards) == 4
    members = tarfile.open(shards[1]).getnames()
    assert members[:2] == ["000000003.txt", "000000003.wav"]  # row 3 has no image member
    _check_rows(_rows(_load(tmp_path / "wds", streaming=True)), folder, processor)
    sources = parse_sources(str(tmp_path / "wds"))
    keys = []
    for rank in range(2):  # each process reads its own two shards
        part = load_sources(sources, "train", True, seed=0, rank=rank, world_size=2)
        keys.append([row["text"] for row in part])
    assert len(keys[0]) == len(keys[1]) == 6 and not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == sorted(r["text"] for r in _reference(folder))


def test_webdataset_shards_map_style_and_for_fine_tuning(folder, processor, tmp_path):
    from modeling_opt_tri.training.finetune import load_split

    write_webdataset(_load(folder), tmp_path / "wds", rows_per_shard=5)
    _check_rows(_rows(_load(tmp_path / "wds")), folder, processor)  # no torchcodec needed for the arrow cache
    train, held_out = load_split(str(tmp_path / "wds"), "train", 0), load_split(str(tmp_path / "wds"), "validation", 0)
    assert (len(train), len(held_out)) == (10, 2) and not set(train["__key__"]) & set(held_out["__key__"])


def test_webdataset_corrupt_member_is_a_corrupt_row(folder, processor, tmp_path):
    write_webdataset(_load(folder), tmp_path / "wds", rows_per_shard=12)
    shard = tmp_path / "wds" / "train-00000.tar"
    with tarfile.open(shard) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    with tarfile.open(shard, "w") as archive:
        for member, data in members:
            if member.name in ("000000002.wav", "000000004.png"):
                data = data[:30]  # truncated
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    rows = _rows(_load(tmp_path / "wds", streaming=True))
    assert len(rows) == 12
    batch = TriModalCollator(processor)(rows)
    assert batch["num_skipped_rows"] == 2 and batch["input_ids"].shape[0] == 10
    assert any("000000002.wav" in reason for reason in batch["skipped_reasons"])


def test_webdataset_corrupt_text_and_json_members_are_corrupt_rows(folder, processor, tmp_path):
    write_webdataset(_load(folder), tmp_path / "wds", rows_per_shard=12)
    shard = tmp_path / "wds" / "train-00000.tar"
    with tarfile.open(shard) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    with tarfile.open(shard, "w") as archive:
        for member, data in members:
            if member.name.endswith(".txt"):  # every sample also carries a JSON member
                key = member.name.split(".")[0]
                extra = json.dumps({"id": key}).encode() if key != "000000008" else b'{"id": '
                info = tarfile.TarInfo(f"{key}.json")
                info.size = len(extra)
                archive.addfile(info, io.BytesIO(extra))
                data = b"caf\xe9 \xff" if key == "000000006" else data
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    reference = [r["text"] for r in _reference(folder)]
    for streaming in (True, False):
        rows = _rows(_load(tmp_path / "wds", streaming=streaming))
        assert len(rows) == 12
        batch = TriModalCollator(processor)(rows)
        assert batch["num_skipped_rows"] == 2 and batch["input_ids"].shape[0] == 10
        reasons = " | ".join(batch["skipped_reasons"])
        assert "000000006.txt" in reasons and "000000008.json" in reasons, reasons
        good = [row["text"] for i, row in enumerate(rows) if i not in (6, 8)]
        assert good == [text for i, text in enumerate(reference) if i not in (6, 8)]


def _add_members(shard: Path, extras) -> None:
    """Rewrite `shard` with `extras(key)` -> {extension: bytes} added to every sample, before its `.txt` member."""
    with tarfile.open(shard) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    with tarfile.open(shard, "w") as archive:
        for member, data in members:
            if member.name.endswith(".txt"):
                key = member.name.split(".")[0]
                for extension, extra in extras(key).items():
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(extra)
                    archive.addfile(info, io.BytesIO(extra))
            archive.addfile(member, io.BytesIO(data))


def test_webdataset_corrupt_members_of_every_stock_decoder_are_corrupt_rows(folder, processor, tmp_path):
    """`.cls` (int) and `.npy` members, decoded by the builder's stock decoders, are corrupt rows when they do not
    decode, named in the reason; a pickle member is refused without being unpickled."""
    write_webdataset(_load(folder), tmp_path / "wds", rows_per_shard=12)

    def npy(value) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, np.arange(3) + value)
        return buffer.getvalue()

    def extras(key: str) -> dict[str, bytes]:
        index = int(key)
        return {"cls": b"seven" if index == 2 else str(index).encode(),
                "npy": npy(index)[:20] if index == 9 else npy(index)}

    _add_members(tmp_path / "wds" / "train-00000.tar", extras)
    card = (tmp_path / "wds" / "README.md").read_text()  # declare the new members' features
    declared = "  - name: cls\n    dtype: int64\n  - name: npy\n    sequence: int64\n  - name: __key__"
    (tmp_path / "wds" / "README.md").write_text(card.replace("  - name: __key__", declared, 1))
    for streaming in (True, False):
        rows = _rows(_load(tmp_path / "wds", streaming=streaming))
        assert len(rows) == 12
        assert rows[4]["cls"] == 4 and list(rows[4]["npy"]) == [4, 5, 6]  # the stock decoders still decode
        assert rows[2]["cls"] is None and rows[9]["npy"] is None
        batch = TriModalCollator(processor)(rows)
        assert batch["num_skipped_rows"] == 2 and batch["input_ids"].shape[0] == 10
        reasons = " | ".join(batch["skipped_reasons"])
        assert "member 000000002.cls of train-00000.tar does not decode" in reasons, reasons
        assert "member 000000009.npy of train-00000.tar does not decode" in reasons, reasons

    import pickle

    from modeling_opt_tri.data.sources import PickleMemberError

    class Boom:  # unpickling this would run os.system
        def __reduce__(self):
            return (__import__("os").system, (f"touch {tmp_path / 'unpickled'}",))

    write_webdataset(_load(folder), tmp_path / "pickled", rows_per_shard=12)
    _add_members(tmp_path / "pickled" / "train-00000.tar", lambda key: {"pyd": pickle.dumps(Boom())})
    for streaming in (True, False):
        with pytest.raises(PickleMemberError, match=r"member 000000000\.pyd of train-00000\.tar is a pickle"):
            _rows(_load(tmp_path / "pickled", streaming=streaming))
    assert not (tmp_path / "unpickled").exists()


def _row_keys(data) -> list[tuple]:
    """Each row as (text, its audio's file name or a digest of its bytes): unique in the FSDD folder."""
    import hashlib

    def media(value):
        if value is None:
            return None
        return hashlib.sha1(value["bytes"]).hexdigest() if value.get("bytes") else Path(value["path"]).name

    return [(row["text"], media(row.get("audio")), media(row.get("image"))) for row in _rows(data)]


def test_fine_tuning_holds_out_the_rows_pre_training_holds_out(folder, tmp_path):
    """One held-out rule: for a folder and for parquet, fine-tuning's training and evaluation rows are pre-training's
    (same `--eval_holdout_fraction`), evaluation never reads a training row, and the split is named."""
    from test_downstream import build_parser_args

    from modeling_opt_tri.training import pretrain
    from modeling_opt_tri.training.finetune import DEFAULT_HOLDOUT_FRACTION, load_split, load_train_and_evaluation

    write_parquet(_load(folder), tmp_path / "parquet")
    for dataset in (str(folder), str(tmp_path / "parquet")):
        for fraction in (0.25, 0.5):
            settings = pretrain.PretrainArguments(preset=PRESET, dataset=dataset, output_dir=str(tmp_path / "run"),
                                                  eval_holdout_fraction=fraction, eval_rows=100)
            plan = pretrain.plan_data(settings)
            pre_eval = _row_keys(pretrain.load_evaluation_rows(settings, plan))
            pre_train = _row_keys(pretrain.load_split(settings, "train", 0))
            train = _row_keys(load_split(dataset, "train", 0, holdout_fraction=fraction))
            held_out = _row_keys(load_split(dataset, "validation", 0, holdout_fraction=fraction))
            assert held_out == pre_eval and train == pre_train
            assert held_out and not set(held_out) & set(train) and len(train) + len(held_out) == 12
        args = build_parser_args(["--dataset", dataset, "--train_rows", "0", "--eval_rows", "0"])  # the default
        train, held_out, name = load_train_and_evaluation(args)
        assert name == f"train (held-out {100 * DEFAULT_HOLDOUT_FRACTION:g}% of its rows)"
        assert _row_keys(held_out) == _row_keys(load_split(dataset, "validation", 0,
                                                           holdout_fraction=DEFAULT_HOLDOUT_FRACTION))
        assert not set(_row_keys(held_out)) & set(_row_keys(train))
        args = build_parser_args(["--dataset", dataset, "--train_rows", "0", "--eval_rows", "2"])  # about 2 rows
        train, held_out, name = load_train_and_evaluation(args)
        assert name == "train (held-out 16.67% of its rows)" and len(train) + len(held_out) == 12
        assert set(_row_keys(held_out)) <= set(pre_eval)  # nested: held out at 0.5 too, so never pre-trained on


def test_stream_position_resumes_without_decoding_skipped_batches(folder, processor):
    data = _load(folder, streaming=True)
    calls = []

    def collate(rows):
        calls.append(len(rows))
        return [row["text"] for row in rows]

    def plan(start, workers=0):
        import torch

        batches = StreamBatches(data, collate, batch_size=2, buffer_rows=6, drop_last=False, seed=3, epoch=1, start=start)
        return list(torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers))

    full = plan(0)
    assert len(full) == 6 and sorted(t for b in full for t in b) == sorted(r["text"] for r in _reference(folder))
    calls.clear()
    assert plan(4) == full[4:] and len(calls) == 2  # the first four batches were planned, not collated
    assert plan(1, workers=2) == full[1:]  # two DataLoader workers give the same batches in the same order


def test_column_mapping(folder, processor, tmp_path):
    import datasets

    data = datasets.load_dataset(str(_write_parquet_copy(folder, tmp_path)), split="train")
    data = data.rename_columns({"text": "caption", "image": "jpg", "audio": "speech"})
    data.to_parquet(str(tmp_path / "renamed.parquet"))
    path = tmp_path / "renamed.parquet"
    mapped = _load(path, image_column="jpg", audio_column="speech")  # caption: a known alias of text
    _check_rows(_rows(mapped), folder, processor)
    without_images = _load(path, text_column="caption", image_column="none", audio_column="speech")
    assert "image" not in without_images.column_names and "audio" in without_images.column_names
    with pytest.raises(ValueError, match=r"no column 'wav'.*'caption', 'jpg', 'speech'"):
        _load(path, audio_column="wav")
    with pytest.raises(ValueError, match="no source named 'coco'"):
        parse_sources(str(path), text_column="coco:caption")


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
def test_mixture_proportions_follow_the_weights(tmp_path, streaming):
    fsdd = require_fsdd()
    a = fsdd_folder(tmp_path / "speech", fsdd, 300, modalities=("text", "audio"))
    b = fsdd_folder(tmp_path / "pictures", fsdd, 300, modalities=("text", "image"), offset=1)
    sources = parse_sources(f"{a}=0.7,{b}=0.3")
    assert [(s.name, s.weight) for s in sources] == [("speech", 0.7), ("pictures", 0.3)]
    mixed = load_sources(sources, "train", streaming, seed=1)
    rows = [row for _, row in zip(range(400), mixed)]
    share = np.mean([row["source"] == "speech" for row in rows])
    assert abs(share - 0.7) < 3 * np.sqrt(0.7 * 0.3 / 400), share  # within 3 standard errors
    for row in rows:  # each source keeps its own modality subset
        assert (row["audio"] is None, row["image"] is None) == ((False, True) if row["source"] == "speech" else (True, False))
    with pytest.raises(ValueError, match="weight of .* must be positive"):
        parse_sources(f"{a}=0,{b}=1")


def test_unk_share_check_names_the_fix(processor):
    texts = ["the digit seven spoken by five six", "seven five six"]
    share, words = unk_share(processor.tokenizer, texts)
    assert share > 0.1 and {"seven", "five", "six"} <= set(words)
    with pytest.raises(ValueError, match=r"\[UNK\].*processing/build_tokenizer.py .*--tokenizer"):
        check_unk_share(processor.tokenizer, texts, 0.03, "configuration/tiny", "data/digits")
    fitted = build_wordpiece_tokenizer(texts * 3, vocab_size=200)
    assert check_unk_share(fitted, texts, 0.03, "mine", "data/digits") == 0.0


def test_evaluation_never_reads_training_rows(folder, tmp_path):
    sources = parse_sources(str(folder))
    with pytest.raises(NoEvaluationSplitError, match="no 'validation' split .*--eval_holdout_fraction"):
        plan_evaluation(sources, "train", "validation", 0.0)
    with pytest.raises(ValueError, match="is the training split"):
        plan_evaluation(sources, "train", "train", 0.0)
    plan = plan_evaluation(sources, "train", "validation", 0.25)
    assert plan.name() == "train (held-out 25% of its rows)"
    train = load_sources(sources, "train", False, seed=0, holdout=plan.fractions)
    held = load_sources(sources, plan.splits, False, seed=0, holdout=plan.fractions, held_out=True)
    streamed = load_sources(sources, plan.splits, True, seed=0, holdout=plan.fractions, held_out=True)
    assert len(held) > 0 and len(train) + len(held) == 12
    assert not set(train["text"]) & set(held["text"])
    assert [row["text"] for row in streamed] == held["text"]  # the same rows, streaming or not
    assert all(is_held_out(row, 0.25) for row in held)


# ------------------------------------------------------------------------------------------------ training runs
def _cli_args(output_dir: Path, dataset: Path | str, steps: int, *extra: str) -> list[str]:
    return [str(REPO_ROOT / "examples" / "pretrain.py"), "--preset", PRESET, "--dataset", str(dataset),
            "--output_dir", str(output_dir), "--batch_size", "4", "--max_steps", str(steps), "--learning_rate", "1e-3",
            "--warmup_steps", "1", "--logging_steps", "1", "--progress", "false", "--tensorboard", "false",
            "--save_total_limit", "0", "--max_unk_fraction", "1", *extra]


_RECORD_ROWS = """
import os, sys, runpy
from modeling_opt_tri.data import collate
original = collate.TriModalCollator.__call__
def recording(self, rows):
    with open(os.path.join(os.environ["ROWS_LOG"], f"rank{os.environ.get('RANK', '0')}.txt"), "a") as log:
        log.write("".join(row["__key__"] + "\\n" for row in rows))
    return original(self, rows)
collate.TriModalCollator.__call__ = recording
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _launch(port: int, args: list[str]) -> list[str]:
    """`accelerate launch` of two CPU processes (torchrun-style: --multi_gpu with ACCELERATE_USE_CPU=true)."""
    import sys

    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
            "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), *args]


def _step_losses(run: Path) -> list[dict]:
    from modeling_opt_tri.training.pretrain import read_history

    return [{k: v for k, v in r.items() if k == "step" or k.startswith("loss")} for r in read_history(run / "losses.jsonl")]


@pytest.mark.slow
def test_two_processes_over_webdataset_shards_read_disjoint_rows_and_resume_exactly(folder, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    fsdd = require_fsdd()
    data = fsdd_folder(tmp_path / "digits", fsdd, 64)
    # 8 shards: 4 per process, 8 batches of 4 rows, so that 6 steps (and the batches prefetched) stay in epoch 0 (each
    # epoch deals the shuffled shards out afresh)
    write_webdataset(_load(data), tmp_path / "shards", rows_per_shard=8)
    wrapper = tmp_path / "record_rows.py"
    wrapper.write_text(_RECORD_ROWS)
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true", PYTHONUNBUFFERED="1",
               HF_DATASETS_CACHE=str(tmp_path / "cache"))
    extra = ("--streaming", "true", "--num_workers", "1", "--save_steps", "2", "--evaluate", "false")

    def command(run: Path, port: int, resume: bool = False) -> list[str]:
        args = _cli_args(run, tmp_path / "shards", 6, *extra, *(("--resume_from_checkpoint", "latest") if resume else ()))
        return _launch(port, [str(wrapper), *args])

    reference = tmp_path / "reference"
    (tmp_path / "rows_reference").mkdir()
    result = subprocess.run(command(reference, 29561), env=dict(env, ROWS_LOG=str(tmp_path / "rows_reference")),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [(tmp_path / "rows_reference" / f"rank{r}.txt").read_text().split() for r in range(2)]
    assert ranks[0] and ranks[1] and not set(ranks[0]) & set(ranks[1])  # disjoint rows
    shards_read = [{int(key) // 8 for key in keys} for keys in ranks]  # keys number the rows in shard order
    assert shards_read[0].isdisjoint(shards_read[1]) and len(shards_read[0]) == len(shards_read[1]) == 4
    expected = _step_losses(reference)
    assert [r["step"] for r in expected] == list(range(1, 7))

    killed = tmp_path / "killed"
    (tmp_path / "rows_killed").mkdir()
    env_killed = dict(env, ROWS_LOG=str(tmp_path / "rows_killed"))
    process = subprocess.Popen(command(killed, 29562), env=env_killed, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and process.poll() is None and not (killed / "checkpoint-2").is_dir():
        time.sleep(0.05)
    while time.time() < deadline and process.poll() is None and len(_history_lines(killed)) < 3:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both training processes
    process.wait(timeout=60)
    assert not (killed / "final").exists()
    result = subprocess.run(command(killed, 29563, resume=True), env=env_killed, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = _step_losses(killed)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(expected, resumed):
        assert a == pytest.approx(b, abs=1e-5), f"step {a['step']}: {a} != {b}"


def _history_lines(run: Path) -> list[str]:
    path = run / "losses.jsonl"
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.mark.slow
def test_mixture_run_logs_rows_and_losses_per_source_and_names_the_evaluation_split(tmp_path, capsys):
    from modeling_opt_tri.training.pretrain import PretrainArguments, read_history, run_pretraining

    fsdd = require_fsdd()
    speech = fsdd_folder(tmp_path / "speech", fsdd, 40, modalities=("text", "audio"))
    triples = fsdd_folder(tmp_path / "triples", fsdd, 40, offset=1)  # retrieval needs rows with all three
    args = PretrainArguments(preset=PRESET, dataset=f"{speech}=0.6,{triples}=0.4", output_dir=str(tmp_path / "run"),
                             max_steps=6, batch_size=4, logging_steps=1, save_steps=0, progress=False,
                             tensorboard=False, eval_holdout_fraction=0.2, eval_rows=16, max_unk_fraction=1.0,
                             num_workers=1)
    summary = run_pretraining(args)
    history = read_history(tmp_path / "run" / "losses.jsonl")
    for record in history:  # a batch comes from one source: each step's loss belongs to one of them
        assert len([k for k in record if k.startswith("source_loss/")]) == 1
    sources = json.loads((tmp_path / "run" / "summary.json").read_text())["sources"]
    assert set(sources) == {"speech", "triples"} and sources == summary["sources"]
    assert sum(entry["rows"] for entry in sources.values()) == summary["rows_seen"] == 24
    assert sum(entry["steps"] for entry in sources.values()) == 6
    assert summary["eval_split"] == "speech:train (held-out 20% of its rows), triples:train (held-out 20% of its rows)"
    printed = capsys.readouterr().out
    assert "of split speech:train (held-out 20% of its rows)" in printed and "loss first" in printed
    assert f"retrieval on split {summary['eval_split']}" in (tmp_path / "run" / "final" / "README.md").read_text()


@pytest.mark.slow
def test_tokenizer_flag_sizes_the_model_and_the_unk_check_stops_a_run(tmp_path):
    import subprocess
    import sys

    from modeling_opt_tri import OptTriConfig
    from modeling_opt_tri.training.pretrain import PretrainArguments, run_pretraining

    data = fsdd_folder(tmp_path / "digits", require_fsdd(), 40, caption="{digit}")  # five, six, seven: [UNK]
    common = dict(preset=PRESET, dataset=str(data), max_steps=2, batch_size=4, save_steps=0, progress=False,
                  tensorboard=False, evaluate=False, num_workers=0)
    with pytest.raises(ValueError, match=r"are \[UNK\].*'seven'.*processing/build_tokenizer.py"):
        run_pretraining(PretrainArguments(output_dir=str(tmp_path / "unk"), **common))
    assert not (tmp_path / "unk" / "final").exists()  # stopped before training
    built = subprocess.run([sys.executable, str(REPO_ROOT / "processing" / "build_tokenizer.py"), "--dataset", str(data),
                            "--vocab_size", "120", "--output_dir", str(tmp_path / "tok")],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    assert "[UNK] share 0.00%" in built.stdout
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    run_pretraining(PretrainArguments(output_dir=str(tmp_path / "ok"), tokenizer=str(tmp_path / "tok"), **common))
    config = OptTriConfig.from_pretrained(tmp_path / "ok" / "final")
    assert config.text_config.vocab_size == config.text_decoder_config.vocab_size == len(tokenizer) != 199
    assert config.mask_token_id == tokenizer.mask_token_id
    assert len(AutoTokenizer.from_pretrained(tmp_path / "ok" / "final")) == len(tokenizer)  # saved with the model


#: Appended to the README's commands: tiny sizes (argparse keeps the last value of a repeated flag).
_TINY = {
    "examples/pretrain.py": ["--max_steps", "3", "--batch_size", "4", "--save_steps", "0", "--eval_rows", "8",
                             "--progress", "false", "--tensorboard", "false", "--num_workers", "0"],
    "processing/build_tokenizer.py": ["--vocab_size", "300"],
    "processing/to_webdataset.py": ["--rows_per_shard", "10"],
    "examples/finetune_captioning.py": ["--max_steps", "2", "--batch_size", "4", "--eval_rows", "4"],
}


def _readme_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Pre-train on your own data", 1)[1].split("\n## ", 1)[0]
    blocks = [block.split("```", 1)[0] for block in section.split("```bash\n")[1:]]
    return [line for block in blocks for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_walkthrough(tmp_path, monkeypatch, capsys):
    """Run the README section's commands as written (in this process, from a folder laid out like a checkout)."""
    import os
    import runpy
    import shlex
    import sys

    fsdd = require_fsdd()
    commands = _readme_commands()
    assert len(commands) == 7 and all(command.startswith("python ") for command in commands)
    fsdd_folder(tmp_path / "my_data", fsdd, 40, caption="the digit {digit} spoken by {speaker}")
    fsdd_folder(tmp_path / "my_speech", fsdd, 40, modalities=("text", "audio"), offset=2)
    for folder in ("examples", "processing", "configuration"):
        os.symlink(REPO_ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    outputs = []
    for command in commands:
        argv = shlex.split(command)[1:]
        monkeypatch.setattr(sys, "argv", [*argv, *_TINY.get(argv[0], [])])
        monkeypatch.syspath_prepend(str(REPO_ROOT / os.path.dirname(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")
        outputs.append(capsys.readouterr().out)
    assert "corrupt: 0" in outputs[0]
    assert "[UNK] share 0.00%" in outputs[1]
    for run, sources in (("mine", {"my_data", "my_speech"}), ("shards", {"my_shards", "my_speech_parquet"})):
        summary = json.loads((tmp_path / "outputs" / run / "summary.json").read_text())
        assert set(summary["sources"]) == sources and summary["steps"] == 3
        assert "held-out 10%" in summary["eval_split"] and "retrieval" in summary
    assert sorted(p.name for p in (tmp_path / "my_shards").glob("*.tar")) == [f"train-0000{i}.tar" for i in range(4)]
    asr = json.loads((tmp_path / "outputs" / "asr_mine" / "caption_metrics.json").read_text())
    assert asr["eval_split"] == "train (held-out 10% of its rows)" and "bleu" in asr


def test_parse_sources_names_weights_and_columns():
    sources = parse_sources("data/coco=3,data/clotho.parquet=1", text_column="caption,clotho:description",
                            audio_column="clotho:wav")
    assert [(s.name, s.weight) for s in sources] == [("coco", 0.75), ("clotho", 0.25)]
    assert sources[0].columns == {"text": "caption"} and sources[1].columns == {"text": "description", "audio": "wav"}
    assert parse_sources("my_data")[0].weight == 1.0
    with pytest.raises(ValueError, match="several sources are named"):
        parse_sources("a/x=1,b/x=1")
    with pytest.raises(ValueError, match="'builtin' cannot be mixed"):
        parse_sources("builtin=1,data/coco=1")
    with pytest.raises(ValueError, match="not a number"):
        parse_sources("data/coco=lots")


def test_source_grouped_batches_never_mix_sources_and_line_up_across_processes():
    from modeling_opt_tri.data.stream import SourceGroupedBatchSampler

    rng = np.random.default_rng(0)
    sources = rng.choice(["a", "b", "c"], size=300, p=[0.5, 0.3, 0.2]).tolist()
    lengths = rng.integers(3, 40, size=300).tolist()
    sampler = SourceGroupedBatchSampler(lengths, sources, batch_size=8, seed=1, world_size=2)
    batches = sampler.batches(0)
    assert all(len({sources[i] for i in batch}) == 1 for batch in batches)
    assert all(sources[a[0]] == sources[b[0]] for a, b in zip(batches[0::2], batches[1::2]))  # ranks 0 and 1 agree
    assert batches == SourceGroupedBatchSampler(lengths, sources, batch_size=8, seed=1, world_size=2).batches(0)
    assert batches != sampler.batches(1)
    assert len({i for batch in batches for i in batch}) == sum(len(batch) for batch in batches)  # no row twice


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
def test_mixture_resume_reproduces_the_losses(tmp_path, streaming):
    import shutil

    from modeling_opt_tri.training.pretrain import PretrainArguments, run_pretraining

    fsdd = require_fsdd()
    speech = fsdd_folder(tmp_path / "speech", fsdd, 24, modalities=("text", "audio"))
    triples = fsdd_folder(tmp_path / "triples", fsdd, 24, offset=1)
    common = dict(preset=PRESET, dataset=f"{speech}=0.5,{triples}=0.5", max_steps=5, batch_size=4, save_steps=2,
                  save_total_limit=0,
                  progress=False, tensorboard=False, evaluate=False, max_unk_fraction=1.0, num_workers=1,
                  streaming=streaming, logging_steps=1)
    run_pretraining(PretrainArguments(output_dir=str(tmp_path / "whole"), **common))
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    run_pretraining(PretrainArguments(output_dir=str(tmp_path / "resumed"), resume_from_checkpoint="latest", **common))
    whole, resumed = _step_losses(tmp_path / "whole"), _step_losses(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [3, 4, 5]
    for a, b in zip(whole[2:], resumed):
        assert a == pytest.approx(b, abs=1e-5)
    state = json.loads((tmp_path / "resumed" / "checkpoint-4" / "trainer_state.json").read_text())
    expected = json.loads((tmp_path / "whole" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["source_rows"] == expected["source_rows"] and sum(state["source_rows"].values()) == state["rows_seen"]


@pytest.mark.slow
def test_data_pipeline_benchmark_smoke(capsys):
    import importlib.util

    require_fsdd()
    spec = importlib.util.spec_from_file_location("data_pipeline", REPO_ROOT / "benchmarks" / "data_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--rows", "16", "--batch-size", "8", "--image-size", "32", "--workers", "0", "1",
                          "--steps", "1", "--streaming"])
    assert set(result["pipeline"]) == {0, 1} and all(rate > 0 for rate in result["pipeline"].values())
    assert result["step"] > 0 and "model step" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        module.parse_args(["--rows", "4", "--batch-size", "8"])


@pytest.mark.slow
def test_a_run_without_an_evaluation_split_skips_the_table_and_says_why(folder, tmp_path, capsys):
    from modeling_opt_tri.training.pretrain import PretrainArguments, run_pretraining

    summary = run_pretraining(PretrainArguments(preset=PRESET, dataset=str(folder), output_dir=str(tmp_path / "run"),
                                                max_steps=1, batch_size=4, save_steps=0, progress=False,
                                                tensorboard=False, num_workers=0, max_unk_fraction=1.0))
    assert "retrieval" not in summary and "eval_split" not in summary  # the old code evaluated on training rows
    assert "no 'validation' split" in summary["evaluation_skipped"]
    printed = capsys.readouterr().out
    assert "the retrieval table is skipped" in printed and "Retrieval on" not in printed
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["evaluation_skipped"] == summary["evaluation_skipped"]
    assert summary["evaluation_skipped"] in (tmp_path / "run" / "final" / "README.md").read_text()  # the model card


def test_fsdd_folder_holds_out_speakers(tmp_path):
    """`processing/build_fsdd.py`'s folder: the validation split is exactly the held-out speaker's recordings, the
    text is the digit's name, the audio decodes from the linked recordings, and bad speakers are refused."""
    from modeling_opt_tri.data.fsdd import DIGIT_WORDS, write_fsdd_folder
    from modeling_opt_tri.data.folder import load_metadata_folder

    fsdd = require_fsdd()
    counts = write_fsdd_folder(fsdd, tmp_path / "digits", ("lucas",), takes=2, eval_takes=3)
    assert counts == {"train": 5 * 10 * 2, "validation": 10 * 3}
    validation = load_metadata_folder(tmp_path / "digits", split="validation")
    train = load_metadata_folder(tmp_path / "digits", split="train")
    assert all("_lucas_" in Path(p).name for p in validation["audio"])
    assert not any("_lucas_" in Path(p).name for p in train["audio"])
    assert [DIGIT_WORDS[int(Path(p).name[0])] for p in train["audio"]] == train["text"]
    assert (tmp_path / "digits" / "train" / "recordings").is_symlink()
    with pytest.raises(ValueError, match="some, not all"):
        write_fsdd_folder(fsdd, tmp_path / "bad", ("nobody",))
    with pytest.raises(FileNotFoundError, match="expected the FSDD folder"):
        write_fsdd_folder(tmp_path, tmp_path / "bad")
    (tmp_path / "other" / "train").mkdir(parents=True)
    (tmp_path / "other" / "train" / "recordings").symlink_to(tmp_path)
    with pytest.raises(FileExistsError, match="is not a link to"):
        write_fsdd_folder(fsdd, tmp_path / "other")


def test_fine_tuning_default_holdout_of_a_large_source_is_not_zero(folder, monkeypatch):
    """Without --eval_holdout_fraction, a source without a validation split holds out about --eval_rows rows: for a
    source of millions of rows that fraction is tiny, and rounding it to 0 (as the first version did) meant no
    evaluation split at all."""
    from modeling_opt_tri.data import sources
    from modeling_opt_tri.training.finetune import evaluation_plan

    class Huge:
        def __len__(self):
            return 30_000_000

    monkeypatch.setattr(sources, "load_raw_split", lambda *a, **k: Huge())
    _, plan = evaluation_plan(str(folder), None, None, eval_rows=200)
    (fraction,) = plan.fractions.values()
    assert fraction == pytest.approx(200 / 30_000_000)
    assert plan.name() == "train (held-out 0.0006667% of its rows)"
