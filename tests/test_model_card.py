"""Model cards: the short card `save_pretrained` writes, the card of a pre-training run in `final/` (Hub metadata,
data, objectives, steps, evaluation table, loss curves, a usage snippet that runs), and `push_to_hub` keeping it."""

from __future__ import annotations

import re
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard

from conftest import REPO_ROOT, run_without_our_package, tiny_config
from modeling_opt_tri import OptTriForPreTraining, OptTriForQuestionAnswering, OptTriForRetrieval, OptTriModel
from modeling_opt_tri.modeling_opt_tri import MODEL_CARD_MARKER
from modeling_opt_tri.training.model_card import write_model_card

PRESET = str(REPO_ROOT / "configuration" / "tiny")


def _snippet(card_text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", card_text, flags=re.S)
    assert len(blocks) == 1, "a card has one usage snippet"
    return blocks[0]


@pytest.mark.parametrize(
    "cls, tag", [(OptTriModel, "feature-extraction"), (OptTriForPreTraining, "feature-extraction"),
                 (OptTriForRetrieval, "feature-extraction"), (OptTriForQuestionAnswering, "visual-question-answering")]
)
def test_save_pretrained_writes_a_card_with_the_hub_metadata(tmp_path, cls, tag):
    config = tiny_config(num_labels=3)
    cls(config).save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == tag
    assert {"opt-tri", "multimodal", "custom_code", cls.__name__} <= set(card.data.tags)
    assert MODEL_CARD_MARKER in card.text and "trust_remote_code=True" in _snippet(card.text)


def test_save_pretrained_keeps_a_card_already_in_the_folder(tmp_path):
    (tmp_path / "README.md").write_text("my own card")
    OptTriModel(tiny_config()).save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my own card"


def test_the_card_of_a_run_records_data_objectives_steps_evaluation_and_curves(tmp_path):
    model = OptTriForPreTraining(tiny_config())
    model.config.objectives = {**model.config.objectives, "wra": 0.0}
    curve = tmp_path / "elsewhere" / "loss_curves.png"
    curve.parent.mkdir()
    curve.write_bytes(b"\x89PNG\r\n\x1a\n")
    summary = {
        "steps": 123, "rows_seen": 984, "rows_skipped": 2, "skipped_optimizer_steps": 0, "loss_curve": str(curve),
        "loss_table": {"mlm": (4.61, 2.05), "itm": (0.69, 0.41)},
        "retrieval": {"text->image": {"R@1": 0.25, "R@5": 0.75, "R@10": 1.0}},
    }
    final = tmp_path / "final"
    model.save_pretrained(final)
    write_model_card(final, model, summary, dataset="user/tri-modal-shapes", model_id="user/opt-tri-tiny")
    card = ModelCard.load(final / "README.md")
    assert card.data.datasets == ["user/tri-modal-shapes"] and card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == "feature-extraction" and card.data.library_name == "transformers"
    text = card.text
    assert "`user/tri-modal-shapes`" in text and "984 rows seen" in text and "Steps: 123 optimizer steps" in text
    assert "mlm (weight 1)" in text and "wra" not in text.split("Objectives:")[1].split("\n")[0]
    assert "| text->image | 25.0% | 75.0% | 100.0% |" in text
    assert "| mlm | 4.6100 | 2.0500 |" in text
    assert "![loss curves](loss_curves.png)" in text and (final / "loss_curves.png").read_bytes() == curve.read_bytes()
    assert "model_id = 'user/opt-tri-tiny'" in _snippet(text)


@pytest.mark.slow
def test_pretraining_writes_the_card_into_final_and_its_snippet_runs(tmp_path):
    """examples/pretrain.py's run writes final/README.md; its usage snippet runs in a fresh process where our
    package cannot be imported (the model and processor load as remote code)."""
    from modeling_opt_tri.training.pretrain import PretrainArguments, run_pretraining

    out = tmp_path / "run"
    summary = run_pretraining(PretrainArguments(
        output_dir=str(out), preset=PRESET, max_steps=2, save_steps=0, train_rows=16, batch_size=8, eval_rows=8,
        learning_rate=1e-3, warmup_steps=1, logging_steps=1, progress=False, tensorboard=False, evaluate=True,
    ))
    card = ModelCard.load(out / "final" / "README.md")
    assert card.data.pipeline_tag == "feature-extraction" and not card.data.datasets  # the built-in data
    assert "Steps: 2 optimizer steps" in card.text and "| text->image |" in card.text
    assert (out / "final" / "loss_curves.png").is_file() and "![loss curves](loss_curves.png)" in card.text
    assert summary["steps"] == 2
    snippet = _snippet(card.text)
    body = snippet + textwrap.dedent(
        """
        torch.save({"pooled": out.pooler_output, "text": out.text_embeds, "image": out.image_embeds}, "outputs.pt")
        """
    )
    results = run_without_our_package(body, tmp_path)
    assert results["pooled"].ndim == 2 and results["pooled"].shape[0] == 1 and torch.isfinite(results["pooled"]).all()
    assert torch.allclose(results["text"].norm(dim=-1), torch.ones(1), atol=1e-5)


def test_push_to_hub_uploads_the_card_of_the_loaded_run(tmp_path, monkeypatch):
    """`push_to_hub` of a model loaded from a run's final/ uploads that run's card (transformers' own push_to_hub
    would replace it by the Hub's generic card); a model without one gets the card save_pretrained writes."""
    from hub_server import LocalHub, no_external_network

    final = tmp_path / "final"
    model = OptTriForPreTraining(tiny_config())
    model.save_pretrained(final)
    write_model_card(final, model, {"steps": 7, "retrieval": None}, model_id="user/run")
    with no_external_network() as attempts, LocalHub() as hub:
        hub.patch(monkeypatch, tmp_path / "cache")
        OptTriForPreTraining.from_pretrained(final).push_to_hub("user/run")
        OptTriModel(tiny_config()).push_to_hub("user/fresh", tags=["my-tag"])
        run_card, fresh_card = hub.files("user/run")["README.md"].decode(), hub.files("user/fresh")["README.md"].decode()
        assert attempts == [] and hub.unhandled == []
    assert "Steps: 7 optimizer steps" in run_card and "pipeline_tag: feature-extraction" in run_card
    assert MODEL_CARD_MARKER in fresh_card and "library_name: transformers" in fresh_card
    assert "This model card has been automatically generated" not in fresh_card and "- my-tag" in fresh_card
    assert {"config.json", "model.safetensors", "modeling_opt_tri.py"} <= set(hub.files("user/run"))


def test_only_the_main_process_writes_the_card(tmp_path):
    """Under several processes every rank calls save_pretrained; only the main one may write files."""
    OptTriModel(tiny_config()).save_pretrained(tmp_path, is_main_process=False)
    assert not (tmp_path / "README.md").exists()


def test_save_pretrained_with_push_to_hub_uploads_the_card_and_passes_save_arguments(tmp_path, monkeypatch):
    """`save_pretrained(..., push_to_hub=True)` uploads the folder after the card is written (transformers' own path
    would upload before it exists); `push_to_hub` passes other `save_pretrained` arguments on."""
    from hub_server import LocalHub, no_external_network

    with no_external_network() as attempts, LocalHub() as hub:
        hub.patch(monkeypatch, tmp_path / "cache")
        OptTriModel(tiny_config()).save_pretrained(tmp_path / "saved", push_to_hub=True, repo_id="user/saved")
        OptTriModel(tiny_config()).push_to_hub("user/pushed", safe_serialization=True)
        saved, pushed = hub.files("user/saved"), hub.files("user/pushed")
        assert attempts == [] and hub.unhandled == []
    assert MODEL_CARD_MARKER in saved["README.md"].decode() and "model.safetensors" in saved
    assert MODEL_CARD_MARKER in pushed["README.md"].decode() and "model.safetensors" in pushed
