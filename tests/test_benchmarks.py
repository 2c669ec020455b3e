"""Smoke tests: the benchmark scripts run end to end on tiny inputs. No timing assertions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPT = BENCHMARKS / "pretrain_step.py"


def _load(script: Path = SCRIPT, name: str = "pretrain_step_benchmark"):
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("itm_rows", [None, "3"])
def test_pretrain_step_benchmark_smoke(capsys, itm_rows):
    import torch
    from transformers.utils import logging as hf_logging

    bench = _load()
    threads, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    extra = [] if itm_rows is None else ["--itm-rows-per-sample", itm_rows]
    try:  # main() sets torch's thread count and the transformers log level for the process
        bench.main(["--steps", "1", "--warmup", "0", "--repeats", "1", "--batch-size", "4", "--no-memory", *extra])
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
    out = capsys.readouterr().out
    assert "FLAVA" in out and "OPT-Tri" in out and "vs FLAVA" in out
    assert f"ITM rows per sample {itm_rows or 1}" in out


@pytest.mark.parametrize("backend", ["torch", "pil"])
def test_processor_benchmark_smoke(capsys, backend):
    import torch
    from transformers.utils import logging as hf_logging

    bench = _load(BENCHMARKS / "processor.py", "processor_benchmark")
    threads, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    try:
        bench.main(["--batches", "1", "--batch-size", "4", "--repeats", "1", "--image-size", "48",
                    "--resize-backend", backend])
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
    out = capsys.readouterr().out
    assert f"our resize backend {backend}" in out and "pixel_values [4, 3, 48, 48]" in out
    assert "ratio OPT-Tri / FLAVA pair" in out


def test_matched_flava_config_copies_the_geometry():
    bench = _load()
    config = bench.opt_tri_config("tiny")
    flava = bench.matched_flava_config(config, text_length=32)
    for ours, theirs in (
        (config.text_config, flava.text_config),
        (config.vision_config, flava.image_config),
        (config.cross_modal_config, flava.multimodal_config),
    ):
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            assert getattr(ours, name) == getattr(theirs, name), name
    assert flava.text_config.vocab_size == config.text_config.vocab_size
    assert flava.image_config.image_size == config.vision_config.image_size
    assert flava.image_config.patch_size == config.vision_config.patch_size
    assert flava.image_config.vocab_size == config.image_decoder_config.codebook_size


@pytest.mark.parametrize("argv", [["--batch-size", "2"], ["--device", "cuda"]])
def test_bad_arguments_are_refused(argv):
    bench = _load()
    import torch

    if argv[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit):
        bench.parse_args(argv)


def test_memory_estimate_smoke_and_checkpointing_saves_activation_memory(capsys):
    import re

    from transformers.utils import logging as hf_logging

    bench = _load(BENCHMARKS / "memory_estimate.py", "memory_estimate_benchmark")
    verbosity = hf_logging.get_verbosity()
    per_sample = {}
    try:
        for checkpointing in (False, True):
            bench.main(["--geometry", "tiny", "--batches", "4,8", "--dtype", "fp32"]
                       + (["--gradient-checkpointing"] if checkpointing else []))
            out = capsys.readouterr().out
            assert "estimated training-step tensors at batch 256" in out
            per_sample[checkpointing] = float(re.search(r"\+ ([0-9.]+) MiB per sample", out).group(1))
    finally:
        hf_logging.set_verbosity(verbosity)
    assert 0 < per_sample[True] < 0.5 * per_sample[False], per_sample
    with pytest.raises(SystemExit):
        bench.main(["--batches", "8,4"])


def test_memory_estimate_tower_families_and_a_frozen_tower(monkeypatch, capsys):
    """`--vision siglip --audio whisper --text roberta` with the families' tables shrunk to tiny geometry: the towers
    are those families, Whisper's input is its full window, and freezing the audio tower saves memory per sample."""
    import re

    from transformers.utils import logging as hf_logging

    bench = _load(BENCHMARKS / "memory_estimate.py", "memory_estimate_benchmark")
    g = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    monkeypatch.setitem(bench.VISION_FAMILIES, "siglip", ("tiny SigLIP", "siglip_vision_model",
                                                          dict(image_size=32, patch_size=8, **g)))
    monkeypatch.setitem(bench.AUDIO_FAMILIES, "whisper", ("tiny Whisper", "whisper", dict(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=16, vocab_size=60)))
    monkeypatch.setitem(bench.TEXT_FAMILIES, "roberta", ("tiny RoBERTa", "roberta", dict(
        vocab_size=120, max_position_embeddings=80, type_vocab_size=1, pad_token_id=1, **g)))
    monkeypatch.setattr(bench, "VISION_INPUT_SIZE", 32)
    config = bench.family_config(bench.bench.opt_tri_config("tiny"), {"vision": "siglip", "audio": "whisper",
                                                                      "text": "roberta"})
    assert (config.vision_config.model_type, config.audio_config.model_type, config.text_config.model_type) == (
        "siglip_vision_model", "whisper", "roberta") and config.text_decoder_config.vocab_size == 120
    audio = bench.family_audio(config, "whisper", 4, 0.1, __import__("torch").Generator())
    assert audio["input_features"].shape == (4, 16, 32) and audio["audio_attention_mask"].sum(1).tolist() == [10] * 4
    towers = {"vision": "siglip", "audio": "whisper", "text": "roberta"}
    peaks = {freeze: bench.measure("opt-tri", "tiny", 4, 64, "fp32", False, towers, 0.1, freeze)[:2]
             for freeze in ((), ("audio",))}
    assert peaks[("audio",)][0] < peaks[()][0] and peaks[("audio",)][1] < peaks[()][1], peaks
    verbosity = hf_logging.get_verbosity()
    try:
        bench.main(["--geometry", "tiny", "--batches", "4,8", "--dtype", "fp32", "--vision", "siglip",
                    "--audio", "whisper", "--text", "roberta", "--audio-seconds", "0.1", "--freeze", "audio"])
    finally:
        hf_logging.set_verbosity(verbosity)
    out = capsys.readouterr().out
    assert "towers: vision tiny SigLIP; audio tiny Whisper, 0.1 s clips; text tiny RoBERTa; frozen: audio" in out
    assert float(re.search(r"\+ ([0-9.]+) MiB per sample", out).group(1)) > 0
    for bad in (["--freeze", "audio"], ["--model", "flava", "--vision", "clip"], ["--freeze", "decoder"]):
        with pytest.raises(SystemExit):
            bench.main(["--geometry", "tiny", "--batches", "4,8"] + bad)


@pytest.mark.slow
def test_init_transfer_benchmark_smoke(tmp_path, capsys):
    """benchmarks/init_transfer.py end to end on a handful of FSDD recordings (its figures mean nothing at this size)."""
    import torch

    from conftest import require_fsdd

    fsdd = require_fsdd()
    bench = _load(BENCHMARKS / "init_transfer.py", "init_transfer_benchmark")
    threads = torch.get_num_threads()
    try:
        results = bench.main(["--output_dir", str(tmp_path / "out"), "--fsdd", str(fsdd), "--takes", "1",
                              "--eval_takes", "1", "--classifier_epochs", "1", "--pretrain_steps", "1",
                              "--batch_size", "8"])
    finally:
        torch.set_num_threads(threads)
    assert set(results["runs"]) == {"initialised", "random", "frozen"} and results["heldout_rows"] == 10
    assert all(0.0 <= run["zero_shot_accuracy"] <= 1.0 for run in results["runs"].values())
    assert "zero-shot audio->text" in capsys.readouterr().out
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "out" / "audio_classifier_encoder" / "model.safetensors")
    frozen = load_file(tmp_path / "out" / "frozen" / "final" / "model.safetensors")
    for name, tensor in saved.items():  # --init_audio + --freeze audio: the tower is the classifier's encoder
        assert torch.equal(frozen[f"opt_tri.audio_model.{name}"], tensor), name


def test_diagnose_objectives_figures():
    """The recipe diagnosis: per-group shares of two objectives sum to 1, the cosine with the contrastive gradient is
    computed per group, and the clipping figures follow from the summed gradient's norm."""
    import torch

    diagnose = _load(BENCHMARKS / "diagnose_objectives.py", "diagnose_objectives_benchmark")
    assert diagnose.group_of("opt_tri.audio_model.encoder.layer.0.mlp.fc1.weight") == "audio"
    assert diagnose.group_of("opt_tri.fusion_encoder.layer.0.attention.q.weight") == "cross-modal"
    assert diagnose.group_of("mac_head.dense.weight") == "heads"
    grads = {
        "contrastive": {"text": torch.tensor([3.0, 0.0]), "audio": torch.tensor([0.0, 1.0])},
        "mac": {"text": torch.tensor([0.0, 0.0]), "audio": torch.tensor([0.0, -3.0])},
    }
    report = diagnose.gradient_report(grads, max_grad_norm=1.0)
    assert report["share"]["contrastive"]["audio"] == pytest.approx(0.25)
    assert report["share"]["mac"]["audio"] == pytest.approx(0.75)
    assert report["cos_contrastive"]["mac"]["audio"] == pytest.approx(-1.0)
    # summed gradient (3, 0, 0, -2): norm sqrt(13); contrastive alone (3, 0, 0, 1): norm sqrt(10), clipped to 1
    assert report["total_norm"] == pytest.approx(13 ** 0.5)
    assert report["clip_factor"] == pytest.approx(1 / 13 ** 0.5)
    assert report["contrastive_update_full"] == pytest.approx((10 / 13) ** 0.5)
    assert report["contrastive_update_alone"] == pytest.approx(1.0)
    assert diagnose.mean_of([{"a": 1.0, "b": None}, {"a": 3.0, "b": 2.0}]) == {"a": 2.0, "b": None}


def test_ablation_variants_and_table():
    """Each variant removes exactly one objective family from the default weights; the table leaves out columns
    no variant measured and prints '-' where a variant has no figure (no re-ranker without ITM)."""
    ablation = _load(BENCHMARKS / "ablation.py", "ablation_benchmark")
    default = {"mlm": 1.0, "mac": 1.0, "dtr": 1.0, "contrastive": 1.0, "itm": 1.0, "wra": 0.1, "dir": 0.0}
    assert ablation.variant_objectives(default, "default") == {k: v for k, v in default.items() if v > 0}
    assert ablation.variant_objectives(default, "no_token_level") == {"dtr": 1.0, "contrastive": 1.0, "itm": 1.0, "wra": 0.1}
    assert ablation.variant_objectives(default, "no_modality_level") == {
        "mlm": 1.0, "mac": 1.0, "contrastive": 1.0, "itm": 1.0, "wra": 0.1}
    assert ablation.variant_objectives(default, "no_sample_level") == {"mlm": 1.0, "mac": 1.0, "dtr": 1.0}
    assert ablation.variant_objectives(default, "contrastive_only") == {"contrastive": 1.0}
    with pytest.raises(ValueError, match="unknown variant"):
        ablation.variant_objectives(default, "no_such_family")
    with pytest.raises(ValueError, match=r"objectives \['cross_prediction'\] belong to no family"):
        ablation.variant_objectives({**default, "cross_prediction": 1.0}, "no_token_level")
    table = ablation.format_table([
        {"variant": "default", "steps": 10, "pretrain_seconds": 12.0, "mean_r1_dual": 0.25, "mean_r1_reranked": 0.3},
        {"variant": "contrastive_only", "steps": 10, "pretrain_seconds": 7.0, "mean_r1_dual": 0.2, "mean_r1_reranked": None},
    ])
    assert table.splitlines()[0] == "variant | steps | pretrain_seconds | mean_r1_dual | mean_r1_reranked"
    assert table.splitlines()[2] == "default | 10 | 12 | 25.0% | 30.0%"
    assert table.splitlines()[3].endswith("20.0% | -")


@pytest.mark.slow
def test_ablation_runs_end_to_end(tmp_path):
    """One variant through pre-training and evaluation with re-ranking (a few steps, tiny data)."""
    import json
    import subprocess
    import sys

    out = tmp_path / "ablation"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "ablation.py"), "--output_dir", str(out), "--max_steps", "2",
         "--variants", "no_modality_level", "--finetune", "none", "--rerank", "3",
         "--pretrain_args", "--train_rows 32 --eval_rows 16 --batch_size 8 --save_steps 0 --num_workers 0",
         "--evaluate_args", "--eval_rows 16"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = json.loads((out / "ablation.json").read_text())
    assert row["variant"] == "no_modality_level" and "dtr" not in row["objectives"] and "itm" in row["objectives"]
    assert 0.0 <= row["mean_r1_dual"] <= 1.0 and row["mean_r1_reranked"] is not None
    assert "no_modality_level | 2 |" in done.stdout


def test_count_flops_only_reports_gflop_per_sample_of_both_models(capsys):
    import re

    import torch
    from transformers.utils import logging as hf_logging

    bench = _load()
    threads, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    try:
        bench.main(["--count-flops-only", "--geometry", "tiny"])  # batch 2 by default: no timing
    finally:
        torch.set_num_threads(threads)
        hf_logging.set_verbosity(verbosity)
    out = capsys.readouterr().out
    assert "batch 2" in out and "no timing" in out and "token drop: none" in out and "samples/s" not in out
    rows = dict(re.findall(r"^(FLAVA|OPT-Tri)\s+text\+image\s+([0-9.]+)", out, re.MULTILINE))
    assert set(rows) == {"FLAVA", "OPT-Tri"} and all(float(value) > 0 for value in rows.values()), out
