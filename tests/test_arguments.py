"""Every flag of pre-training and fine-tuning declares the values it accepts, and a bad value is refused before any work
starts, with one message per bad value that names the flag, the value and the allowed range (issue 14, item 5)."""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from modeling_opt_tri.training.arguments import CheckedArgumentParser, Rule, field_rule
from modeling_opt_tri.training.pretrain import PretrainArguments, check_arguments, run_pretraining

#: every script whose flags are checked: its `build_parser()` returns a `CheckedArgumentParser`
SCRIPTS = ["finetune_classification", "finetune_retrieval", "finetune_vqa", "finetune_captioning", "finetune_text_to_image",
           "finetune_text_to_audio", "evaluate_text_to_image", "evaluate_text_to_audio"]


@pytest.fixture(scope="module")
def examples_on_path():
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    yield
    sys.path.remove(str(REPO_ROOT / "examples"))


def test_every_pretrain_field_declares_a_rule_and_a_resume_policy():
    """A field added later (dataset, tokenizer, FSDP options) must declare its rule: this walks all of them."""
    unruled = [f.name for f in dataclasses.fields(PretrainArguments) if not isinstance(field_rule(f), Rule)]
    assert unruled == [], f"PretrainArguments fields without a declared Rule (use arguments.arg): {unruled}"
    policies = {f.name: f.metadata.get("resume", "same") for f in dataclasses.fields(PretrainArguments)}
    assert set(policies.values()) <= {"same", "free", "max_steps"}, policies
    defaults = PretrainArguments()
    for f in dataclasses.fields(PretrainArguments):  # every default satisfies its own rule
        assert field_rule(f).message(f.name, getattr(defaults, f.name)) is None, f.name


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_finetune_flag_declares_a_rule(script, examples_on_path):
    parser = importlib.import_module(script).build_parser()
    assert isinstance(parser, CheckedArgumentParser)
    assert parser.unruled_flags() == [], f"{script}: flags without a rule: {parser.unruled_flags()}"


BAD_PRETRAIN_VALUES = [
    ("max_grad_norm", -1.0, r"--max_grad_norm must be a finite number >= 0 \(0: no clipping\), got -1.0"),
    ("gradient_accumulation_steps", 0, r"--gradient_accumulation_steps must be an integer >= 1, got 0"),
    ("max_steps", 0, r"--max_steps must be an integer >= 1, got 0"),
    ("logging_steps", 0, r"--logging_steps must be an integer >= 1, got 0"),
    ("mix_ratios", "mlm=0,itm=0", r"--mix_ratios must give at least one mix ratio a weight > 0, got 'mlm=0,itm=0'"),
    ("eval_batch_size", 0, r"--eval_batch_size must be an integer >= 1, got 0"),
    ("save_steps", -1, r"--save_steps must be an integer >= 0 \(0: only the final checkpoint\), got -1"),
    ("max_bad_row_fraction", -1.0, r"--max_bad_row_fraction must be a finite number >= 0 and <= 1, got -1.0"),
    ("objectives", "mlm=nan", r"objective 'mlm': weight 'nan' must be a finite number >= 0 \(in --objectives 'mlm=nan'\)"),
    ("objectives", "mlm=-1", r"objective 'mlm': weight '-1' must be a finite number >= 0"),
    ("objectives", "mlm=0", r"--objectives must give at least one objective a weight > 0, got 'mlm=0'"),
    ("learning_rate", float("inf"), r"--learning_rate must be a finite number > 0, got inf"),
    ("learning_rate", 0.0, r"--learning_rate must be a finite number > 0, got 0.0"),
    ("batch_size", 0, r"--batch_size must be an integer >= 1, got 0"),
    ("batch_size", "8", r"--batch_size must be an integer >= 1, got '8'"),
    ("warmup_steps", -5, r"--warmup_steps must be an integer >= 0, got -5"),
    ("seed", -1, r"--seed must be an integer from 0 to 2\*\*32 - 1"),
    ("max_tokens", 0, r"--max_tokens must be an integer >= 1 \(or unset\), got 0"),
    ("weight_decay", float("nan"), r"--weight_decay must be a finite number >= 0, got nan"),
    ("code_soft_temperature", 0.0, r"--code_soft_temperature must be a finite number > 0, got 0.0"),
    ("masking_policy", "half", r"--masking_policy must be 'conditional' or 'joint' \(or unset\), got 'half'"),
    ("num_workers", -1, r"--num_workers must be an integer >= 0, got -1"),
    ("save_total_limit", -2, r"--save_total_limit must be an integer >= 0 \(0: keep every checkpoint\), got -2"),
    ("train_split", " ", r"--train_split must be a non-empty string, got ' '"),
    ("streaming", "yes", r"--streaming must be true or false, got 'yes'"),
]


@pytest.mark.parametrize("name, value, message", BAD_PRETRAIN_VALUES, ids=[f"{n}={v}" for n, v, _ in BAD_PRETRAIN_VALUES])
def test_bad_pretrain_value_is_refused_with_flag_value_and_range(name, value, message):
    with pytest.raises(ValueError, match=message):
        check_arguments(PretrainArguments(**{name: value}))


def test_builtin_dataset_needs_training_rows():
    with pytest.raises(ValueError, match=r"--train_rows must be an integer >= 1 with the built-in dataset, got 0"):
        check_arguments(PretrainArguments(train_rows=0))
    check_arguments(PretrainArguments(train_rows=0, dataset=str(REPO_ROOT / "configuration")))  # a folder: unused


def test_each_bad_value_gets_its_own_message_and_nothing_is_written(tmp_path):
    out = tmp_path / "never"
    args = PretrainArguments(output_dir=str(out), max_grad_norm=-1.0, gradient_accumulation_steps=0, max_steps=0,
                             logging_steps=0, eval_batch_size=0, save_steps=-1)
    with pytest.raises(ValueError, match=r"^6 invalid arguments:\n") as error:
        run_pretraining(args)
    lines = str(error.value).splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["--max_steps", "--eval_batch_size", "--gradient_accumulation_steps",
                                                   "--max_grad_norm", "--save_steps", "--logging_steps"]
    assert not out.exists()  # refused before any work: no output folder, no model


def test_mix_ratios_for_inactive_objectives_only_are_refused(tmp_path):
    """Ratios > 0 only for objectives switched off: a clear error, not NumPy's 'probabilities do not sum to 1'."""
    args = PretrainArguments(output_dir=str(tmp_path / "mix"), preset=str(REPO_ROOT / "configuration" / "tiny"),
                             schedule="mix", objectives="mlm=1", mix_ratios="itm=1", train_rows=8, batch_size=4,
                             progress=False, tensorboard=False, evaluate=False)
    with pytest.raises(ValueError, match=r"--mix_ratios 'itm=1': no active objective has a ratio > 0 \(active: \['mlm'\]\)"):
        run_pretraining(args)


BAD_FINETUNE_FLAGS = [
    ("finetune_classification", ["--max_steps", "0"], r"--max_steps must be -1 \(train for --epochs\) or an integer >= 1, got 0"),
    ("finetune_classification", ["--batch_size", "0"], r"--batch_size must be an integer >= 1, got 0"),
    ("finetune_classification", ["--learning_rate=-1e-3"], r"--learning_rate must be a finite number > 0, got -0.001"),
    ("finetune_classification", ["--lora_dropout", "1"], r"--lora_dropout must be a number >= 0 and < 1, got 1.0"),
    ("finetune_classification", ["--modalities", "image,smell"], r"--modalities must be a comma-separated subset"),
    ("finetune_classification", ["--epochs", "nan"], r"--epochs must be a finite number > 0, got nan"),
    ("finetune_retrieval", ["--rerank_top_k", "-1"], r"--rerank_top_k must be an integer >= 0, got -1"),
    ("finetune_retrieval", ["--itm_loss_weight", "-0.5"], r"--itm_loss_weight must be a finite number >= 0, got -0.5"),
    ("finetune_vqa", ["--freeze_layers", "-1"], r"--freeze_layers must be an integer >= 0, got -1"),
    ("finetune_captioning", ["--eval_rows", "0"], r"--eval_rows must be an integer >= 1, got 0"),
    ("finetune_text_to_image", ["--max_grad_norm", "-1"], r"--max_grad_norm must be a finite number >= 0 \(0: no clipping\), got -1.0"),
    ("finetune_text_to_audio", ["--log_every", "0"], r"--log_every must be an integer >= 1, got 0"),
    ("finetune_text_to_audio", ["--device", "gpu7"], r"--device must be a torch device such as cpu, cuda or cuda:1, got 'gpu7'"),
    ("evaluate_text_to_image", ["--top_p", "0"], r"--top_p must be a finite number > 0 and <= 1, got 0.0"),
]
REQUIRED = {"finetune_text_to_image": ["--image_tokenizer", "x"], "finetune_text_to_audio": ["--audio_tokenizer", "x"],
            "evaluate_text_to_image": ["--model", "x", "--image_tokenizer", "x"],
            "evaluate_text_to_audio": ["--model", "x", "--audio_tokenizer", "x"]}


@pytest.mark.parametrize("script, argv, message", BAD_FINETUNE_FLAGS, ids=[f"{s}{a[0]}" for s, a, _ in BAD_FINETUNE_FLAGS])
def test_bad_finetune_flag_is_refused_at_parse_time(script, argv, message, examples_on_path, capsys):
    required = REQUIRED.get(script, ["--model", "x", "--output_dir", "y"])
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(script).build_parser().parse_args(required + argv)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_finetune_parser_lists_every_bad_flag(examples_on_path, capsys):
    parser = importlib.import_module("finetune_classification").build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "x", "--output_dir", "y", "--batch_size", "0", "--seed", "-1", "--lora_rank", "0"])
    error = capsys.readouterr().err
    for flag in ("--batch_size", "--seed", "--lora_rank"):
        assert f"{flag} must be" in error, error


@pytest.mark.slow
def test_pretrain_cli_refuses_bad_values_before_work(tmp_path):
    out = tmp_path / "never"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "pretrain.py"), "--output_dir", str(out),
                             "--max_grad_norm", "-1", "--objectives", "mlm=nan"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--max_grad_norm must be a finite number >= 0 (0: no clipping), got -1.0" in result.stderr
    assert "objective 'mlm': weight 'nan' must be a finite number >= 0 (in --objectives 'mlm=nan')" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("extra", [["--freeze", "text"], ["--tower_lr_scale", "audio=0.5"], ["--lora"]])
def test_prompt_tuning_refuses_the_options_it_would_ignore(extra, examples_on_path, monkeypatch, capsys):
    """CoOp prompt tuning trains the context vectors only: per-tower freezing, learning-rate scales and LoRA would be
    ignored silently, so they are refused before any work."""
    script = importlib.import_module("finetune_classification")
    monkeypatch.setattr(sys, "argv", ["finetune_classification.py", "--model", "x", "--output_dir", "y",
                                      "--prompt_tuning", *extra])
    with pytest.raises(SystemExit) as exit_info:
        script.main()
    assert exit_info.value.code == 2
    assert "--prompt_tuning freezes the whole model already" in capsys.readouterr().err
