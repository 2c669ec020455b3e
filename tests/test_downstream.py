"""Downstream heads: classification, VQA/AQA, retrieval (+ ITM re-ranking), NLVR2-style pair reasoning; and the
fine-tuning helpers (LoRA, layer freezing, encoder learning-rate scale, CoOp prompt tuning) the examples use."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, run_without_our_package, tiny_batch, tiny_config

from modeling_opt_tri.data import build_synthetic_dataset
from modeling_opt_tri.modeling_opt_tri import (
    OptTriForPairReasoning,
    OptTriForPreTraining,
    OptTriForQuestionAnswering,
    OptTriForRetrieval,
    OptTriForSequenceClassification,
)
from modeling_opt_tri.training.finetune import (
    apply_lora,
    build_optimizer,
    count_trainable,
    freeze_bottom_layers,
)

TEXT = ("input_ids", "attention_mask")
IMAGE = ("pixel_values",)
AUDIO = ("input_features", "audio_attention_mask")


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _config(**overrides):
    """The tiny config without dropout (BERT's default 0.1 would make the loss curves on one batch noisy)."""
    config = tiny_config(classifier_dropout=0.0, **overrides)
    config.text_config.hidden_dropout_prob = config.text_config.attention_probs_dropout_prob = 0.0
    return config


def _pick(batch, *groups):
    return {k: batch[k] for group in groups for k in group}


def _pair_batch(batch_size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = tiny_batch(batch_size, seed=seed)
    return {
        "input_ids": base["input_ids"],
        "attention_mask": base["attention_mask"],
        "pixel_values": torch.randn(batch_size, 2, 3, 32, 32, generator=g),
    }


def _train(model, inputs, steps, lr=1e-3, **forward_kwargs):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**inputs, **forward_kwargs).loss
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ---- each head trains ---------------------------------------------------------------------------------------------

def _cases():
    b = tiny_batch()
    labels = torch.tensor([0, 1, 2, 1])
    soft = torch.tensor([[1.0, 0.3, 0, 0, 0], [0, 0.6, 0.9, 0, 0], [0, 0, 0, 1.0, 0.3], [0.3, 0, 0, 0, 1.0]])
    return {
        "classification_all_modalities": (OptTriForSequenceClassification, dict(num_labels=3), b, dict(labels=labels)),
        "classification_image_audio": (OptTriForSequenceClassification, dict(num_labels=3), _pick(b, IMAGE, AUDIO), dict(labels=labels)),
        "classification_text": (OptTriForSequenceClassification, dict(num_labels=3), _pick(b, TEXT), dict(labels=labels)),
        "multi_label": (OptTriForSequenceClassification, dict(num_labels=4), _pick(b, TEXT, IMAGE),
                        dict(labels=torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 1], [0, 0, 0, 1]]).float())),
        "regression": (OptTriForSequenceClassification, dict(num_labels=1), _pick(b, AUDIO),
                       dict(labels=torch.tensor([0.5, -1.0, 2.0, 0.0]))),
        "vqa_answer_ids": (OptTriForQuestionAnswering, dict(num_labels=5), _pick(b, TEXT, IMAGE), dict(labels=labels)),
        "aqa_soft_scores": (OptTriForQuestionAnswering, dict(num_labels=5), _pick(b, TEXT, AUDIO), dict(labels=soft)),
        "retrieval_text_image": (OptTriForRetrieval, {}, _pick(b, TEXT, IMAGE), dict(return_loss=True)),
        "retrieval_audio_image": (OptTriForRetrieval, {}, _pick(b, IMAGE, AUDIO),
                                  dict(return_loss=True, query_modality="audio", gallery_modality="image")),
        "pair_reasoning": (OptTriForPairReasoning, {}, _pair_batch(), dict(labels=torch.tensor([0, 1, 1, 0]))),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_head_loss_is_finite_and_decreases(case):
    cls, overrides, inputs, extra = _cases()[case]
    torch.manual_seed(0)
    model = cls(_config(**overrides))
    losses = _train(model, inputs, steps=30, **extra)
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_problem_type_is_inferred_like_bert():
    b = _pick(tiny_batch(), IMAGE)
    expected = {
        (1, torch.tensor([0.5, 1.0, 0.0, 2.0])): "regression",
        (3, torch.tensor([0, 1, 2, 0])): "single_label_classification",
        (3, torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]]).float()): "multi_label_classification",
    }
    for (num_labels, labels), problem_type in expected.items():
        model = OptTriForSequenceClassification(_config(num_labels=num_labels)).eval()
        out = model(**b, labels=labels)
        assert model.config.problem_type == problem_type
        logits = out.logits.float()
        reference = {
            "regression": lambda: F.mse_loss(logits.squeeze(-1), labels),
            "single_label_classification": lambda: F.cross_entropy(logits, labels),
            "multi_label_classification": lambda: F.binary_cross_entropy_with_logits(logits, labels),
        }[problem_type]()
        torch.testing.assert_close(out.loss, reference)
    model = OptTriForSequenceClassification(_config(num_labels=2, problem_type="multi_label_classification"))
    model(**b, labels=torch.tensor([[1.0, 0.0]] * 4))
    assert model.config.problem_type == "multi_label_classification"


def test_soft_score_vqa_loss_is_bce_times_num_answers():
    b = _pick(tiny_batch(), TEXT, IMAGE)
    model = OptTriForQuestionAnswering(_config(num_labels=6)).eval()
    scores = torch.zeros(4, 6)
    scores[0, 1], scores[1, [2, 3]], scores[2, 5], scores[3, 0] = 1.0, torch.tensor([0.3, 0.9]), 0.6, 1.0
    out = model(**b, labels=scores)
    assert out.logits.shape == (4, 6)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, scores, reduction="sum") / 4)
    # ids and the equivalent one-hot scores train the same answer
    ids = model(**b, labels=torch.tensor([1, 2, 5, 0])).loss
    assert torch.isfinite(ids)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(**b, labels=scores * 2)
    with pytest.raises(ValueError, match="soft scores"):
        model(**b, labels=torch.zeros(4, 3))


def test_classification_from_every_subset_of_modalities():
    b = tiny_batch()
    model = OptTriForSequenceClassification(_config(num_labels=3)).eval()
    for groups in ((TEXT,), (IMAGE,), (AUDIO,), (TEXT, IMAGE), (TEXT, AUDIO), (IMAGE, AUDIO), (TEXT, IMAGE, AUDIO)):
        out = model(**_pick(b, *groups), output_hidden_states=True)
        assert out.logits.shape == (4, 3) and out.loss is None
        assert len(out.hidden_states) == model.config.cross_modal_config.num_hidden_layers + 1


@pytest.mark.parametrize("cls", [OptTriForSequenceClassification, OptTriForQuestionAnswering])
def test_heads_read_the_cls_through_the_selected_last_layer(cls, monkeypatch):
    """Without hidden states / attentions asked for, the heads run the last cross-modal layer at the [CLS] only:
    the logits, the loss and every gradient equal the full forward's (which `output_hidden_states=True` takes)."""
    torch.manual_seed(0)
    b = tiny_batch()
    b["attention_mask"][1, 3:] = 0  # padding, so the [CLS] must mask it in the selected pass too
    model = cls(_config(num_labels=3)).eval()
    labels = torch.tensor([0, 2, 1, 2])
    selected_calls = []
    original = type(model.opt_tri.fusion_encoder).forward_selected
    monkeypatch.setattr(
        type(model.opt_tri.fusion_encoder), "forward_selected",
        lambda self, *a, **k: selected_calls.append(a[2].shape) or original(self, *a, **k),
    )
    for groups in ((TEXT,), (IMAGE, AUDIO), (TEXT, IMAGE, AUDIO)):
        inputs = _pick(b, *groups)
        results = []
        for full in (False, True):
            model.zero_grad(set_to_none=True)
            selected_calls.clear()
            out = model(**inputs, labels=labels, output_hidden_states=full or None)
            out.loss.backward()
            assert (out.hidden_states is not None) == full and len(selected_calls) == (0 if full else 1)
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results.append((out.logits.detach(), out.loss.detach(), grads))
        (fast_logits, fast_loss, fast_grads), (logits, loss, grads) = results
        assert selected_calls == [] and fast_grads.keys() == grads.keys()
        torch.testing.assert_close(fast_logits, logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast_loss, loss, rtol=1e-5, atol=1e-6)
        for name in grads:
            torch.testing.assert_close(fast_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_heads_load_pretraining_checkpoint(tmp_path):
    torch.manual_seed(0)
    pretrained = OptTriForPreTraining(_config())
    with torch.no_grad():
        pretrained.itm_head.weight.normal_()
    pretrained.save_pretrained(tmp_path)
    base_state = pretrained.opt_tri.state_dict()
    for cls in (OptTriForSequenceClassification, OptTriForQuestionAnswering, OptTriForRetrieval, OptTriForPairReasoning):
        head = cls.from_pretrained(tmp_path)
        state = head.opt_tri.state_dict()
        # a head builds only the base modules its objectives use (no mask tokens, ...): each of them loads
        assert set(state) <= set(base_state), cls.__name__
        not_built = set(base_state) - set(state)
        ignored = [re.compile(pattern) for pattern in cls._keys_to_ignore_on_load_unexpected]
        assert all(any(p.search(k) for p in ignored) for k in not_built), (cls.__name__, sorted(not_built)[:5])
        assert all(torch.equal(state[k], base_state[k]) for k in state), cls.__name__
        if cls is OptTriForRetrieval:
            assert torch.equal(head.itm_head.weight, pretrained.itm_head.weight)  # the pre-trained ITM head loads


# ---- retrieval ----------------------------------------------------------------------------------------------------

def test_reranked_retrieval_evaluation():
    """`encode_for_reranking` pads batches of different lengths into one set (the ITM logits do not change), and
    `reranked_retrieval_metrics` ranks each shortlist by the cross-encoder: with a cross-encoder that knows the
    true pairs, R@1 is the share of queries whose true item made the shortlist."""
    from modeling_opt_tri.training.evaluation import encode_for_reranking, reranked_retrieval_metrics

    torch.manual_seed(0)
    model = OptTriForRetrieval(_config()).eval()
    first, second = tiny_batch(4, text_len=10, frames=40, seed=1), tiny_batch(3, text_len=6, frames=24, seed=2)
    second["attention_mask"][0, 4:] = 0
    encoded = encode_for_reranking(model, [first, second], progress=False)
    assert encoded.parts["text"][0].shape[:2] == (7, 10) and encoded.embeds["audio"].shape[0] == 7
    alone = model.encode("text", {k: second[k] for k in TEXT})[1]
    image = model.encode("image", {"pixel_values": second["pixel_values"]})[1]
    padded_text = (encoded.parts["text"][0][4:], encoded.parts["text"][1][4:])
    torch.testing.assert_close(
        model.matching_logits("text", padded_text, "image", image), model.matching_logits("text", alone, "image", image),
        rtol=1e-5, atol=1e-6,
    )

    oracle = OptTriForRetrieval(_config()).eval()
    true_row = {}
    for modality, (states, mask) in encoded.parts.items():
        states = states.clone()
        states[..., 0] = torch.arange(7, dtype=states.dtype)[:, None]  # tag every state with its row
        encoded.parts[modality] = (states, mask)

    def matching_logits(modality_a, part_a, modality_b, part_b):
        same = (part_a[0][:, 0, 0] == part_b[0][:, 0, 0]).float()
        return torch.stack([1 - same, same], dim=1)

    oracle.matching_logits = matching_logits
    results = reranked_retrieval_metrics(oracle, encoded, top_k=3, ks=(1, 3, 5))
    for direction, values in results.items():
        query, gallery = direction.split("->")
        shortlist = (encoded.embeds[query] @ encoded.embeds[gallery].t()).topk(3, dim=1).indices
        in_shortlist = (shortlist == torch.arange(7)[:, None]).any(1).float().mean().item()
        assert values == {"R@1": pytest.approx(in_shortlist), "R@3": pytest.approx(in_shortlist)}  # no R@5 > top_k
        true_row[direction] = in_shortlist
    assert min(true_row.values()) < 1.0  # the shortlist sometimes misses, so R@1 is not trivially 1
    with pytest.raises(ValueError, match="top_k"):
        reranked_retrieval_metrics(oracle, encoded, top_k=0)


def test_retrieval_evaluation_measures_each_direction_on_its_rows():
    """Each direction is measured on the rows that have both of its modalities, and only rows that have a modality
    go through its tower: a mixture of text-audio rows and text-image-audio rows gives text<->audio on every row and
    the image directions on the image rows; audio-text data (as FSDD) gives its two directions, by the dual encoder
    and after re-ranking; one modality alone is a clear error."""
    from modeling_opt_tri.training.evaluation import (
        direction_sizes, embed_batches, encode_for_reranking, format_retrieval_table, reranked_retrieval_metrics,
        retrieval_metrics,
    )

    torch.manual_seed(0)
    model = OptTriForRetrieval(_config()).eval()
    first, second = _pick(tiny_batch(4, seed=1), TEXT, AUDIO), tiny_batch(3, seed=2)
    second["image_mask"] = torch.tensor([1, 0, 1])
    calls = []
    original = model.opt_tri.get_image_features
    model.opt_tri.get_image_features = lambda pixel_values, **kw: calls.append(len(pixel_values)) or original(pixel_values, **kw)
    embeddings = embed_batches(model, [first, second], progress=False)
    assert calls == [2]  # only the two rows with an image
    assert embeddings.rows["image"].tolist() == [4, 6] and embeddings.rows["text"].tolist() == list(range(7))
    sizes = direction_sizes(embeddings)
    assert sizes["text->audio"] == 7 and sizes["image->text"] == 2 and sizes["audio->image"] == 2
    assert list(retrieval_metrics(embeddings)) == list(sizes)
    assert "rows" in format_retrieval_table(retrieval_metrics(embeddings), sizes).splitlines()[1]
    bimodal = [first, _pick(second, TEXT, AUDIO)]
    bimodal[1]["audio_attention_mask"][1] = 0  # this row has no audio
    embeddings = embed_batches(model, bimodal, progress=False)
    assert list(retrieval_metrics(embeddings)) == ["text->audio", "audio->text"]
    assert direction_sizes(embeddings) == {"text->audio": 6, "audio->text": 6}
    encoded = encode_for_reranking(model, bimodal, progress=False)
    torch.testing.assert_close(encoded.embeds["text"], embeddings.embeds["text"])
    assert list(reranked_retrieval_metrics(model, encoded, top_k=3)) == ["text->audio", "audio->text"]
    with pytest.raises(ValueError, match="retrieval needs two modalities"):
        embed_batches(model, [_pick(first, TEXT)], progress=False)


def test_class_level_retrieval_counts_any_row_with_the_same_text():
    """`match="text"`: a query hits when the best-scored gallery item has its text (spoken digits: ten texts), while
    `match="row"` wants the query's own row; the texts are grouped across batches by their token ids."""
    from modeling_opt_tri.training.evaluation import embed_batches, recall_at_k, retrieval_metrics

    similarity = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.1, 0.0], [0.0, 0.5, 0.4]])
    same = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    assert recall_at_k(similarity, (1, 2)) == {"R@1": 0.0, "R@2": 1.0}
    assert recall_at_k(similarity, (1, 2), same) == {"R@1": pytest.approx(2 / 3), "R@2": 1.0}
    torch.manual_seed(0)
    model = OptTriForRetrieval(_config()).eval()
    first, second = _pick(tiny_batch(3, seed=1), TEXT, AUDIO), _pick(tiny_batch(3, seed=2), TEXT, AUDIO)
    second["input_ids"][0], second["attention_mask"][0] = first["input_ids"][2], first["attention_mask"][2]
    embeddings = embed_batches(model, [first, second], progress=False, match="text")
    groups = embeddings.groups
    assert groups[2] == groups[3] and len(set(groups.tolist())) == 5
    by_row, by_text = retrieval_metrics(embeddings, (1,)), retrieval_metrics(embeddings, (1,), match="text")
    assert all(by_text[d]["R@1"] >= by_row[d]["R@1"] for d in by_row)
    # audio -> text is classification over the 5 distinct texts
    distinct = [groups.tolist().index(g) for g in sorted(set(groups.tolist()))]
    text, audio = embeddings.embeds["text"], embeddings.embeds["audio"]
    predicted = groups[distinct][(audio @ text[distinct].t()).argmax(1)]
    assert by_text["audio->text"]["R@1"] == pytest.approx((predicted == groups).float().mean().item())
    with pytest.raises(ValueError, match="at least one item per query"):
        recall_at_k(similarity, (1,), torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="match must be"):
        retrieval_metrics(embeddings, match="class")
    with pytest.raises(ValueError, match="encode the rows with match='text'"):
        retrieval_metrics(embed_batches(model, [first], progress=False), match="text")


def test_retrieval_similarity_shapes_and_embeddings():
    b = tiny_batch(5)
    model = OptTriForRetrieval(_config()).eval()
    with torch.no_grad():
        for query, gallery in (("text", "image"), ("image", "text"), ("text", "audio"), ("audio", "image")):
            out = model(**b, query_modality=query, gallery_modality=gallery)
            assert out.loss is None
            assert out.logits_per_query.shape == (5, 5) and torch.equal(out.logits_per_gallery, out.logits_per_query.t())
            features = {
                "text": lambda: model.get_text_features(b["input_ids"], b["attention_mask"]).pooler_output,
                "image": lambda: model.get_image_features(b["pixel_values"]).pooler_output,
                "audio": lambda: model.get_audio_features(b["input_features"], b["audio_attention_mask"]).pooler_output,
            }
            torch.testing.assert_close(out.query_embeds, features[query]())
            torch.testing.assert_close(out.gallery_embeds, features[gallery]())
            scale = model.opt_tri.logit_scale.exp()
            torch.testing.assert_close(out.logits_per_query, scale * out.query_embeds @ out.gallery_embeds.t())
        out = model(**b, return_loss=True, itm_loss_weight=0.0)
        assert out.itm_loss is None and torch.equal(out.loss, out.contrastive_loss)
        with pytest.raises(ValueError, match="different modalities"):
            model(**b, query_modality="image", gallery_modality="image")
        with pytest.raises(ValueError, match="input_features"):
            model(**_pick(b, TEXT), query_modality="text", gallery_modality="audio")


def test_rerank_orders_the_shortlist_by_itm_score():
    """With `similarity_weight=0` the shortlist is ordered by the ITM head alone (ALBEF); by default the score adds
    the dual encoder's logit to the ITM log-probability (BLIP), and a large weight gives back the dual encoder's order."""
    torch.manual_seed(3)
    model = OptTriForRetrieval(_config()).eval()
    queries = _pick(tiny_batch(4, seed=1), TEXT)
    candidates = _pick(tiny_batch(7, seed=2), IMAGE)
    out = model.rerank(queries, candidates, "text", "image", top_k=5, similarity_weight=0.0)
    combined = model.rerank(queries, candidates, "text", "image", top_k=5)
    dual = model.rerank(queries, candidates, "text", "image", top_k=5, similarity_weight=1e6)
    assert out.indices.shape == out.scores.shape == out.retrieval_indices.shape == (4, 5)
    assert torch.equal(dual.indices, dual.retrieval_indices)
    with torch.no_grad():
        q = model.get_text_features(**queries).pooler_output
        c = model.get_image_features(**candidates).pooler_output
        torch.testing.assert_close(out.similarity, q @ c.t())
        assert torch.equal(out.retrieval_indices, (q @ c.t()).topk(5, dim=1).indices)
        scale = model.opt_tri.logit_scale.exp()
        for i in range(4):
            shortlist = out.retrieval_indices[i]
            pairs = {
                "input_ids": queries["input_ids"][i].expand(5, -1),
                "attention_mask": queries["attention_mask"][i].expand(5, -1),
                "pixel_values": candidates["pixel_values"][shortlist],
            }
            itm = model.matching_score("text", "image", **pairs)  # the cross-encoder, computed independently
            # ... and equal to the ITM head on the full cross-modal forward's [CLS]
            full = model.opt_tri(**pairs).pooler_output
            torch.testing.assert_close(itm, model.itm_head(full).softmax(-1)[:, 1])
            order = itm.argsort(descending=True, stable=True)
            assert torch.equal(out.indices[i], shortlist[order])
            torch.testing.assert_close(out.matching_probabilities[i], itm[order])
            torch.testing.assert_close(out.scores[i], itm[order].log())
            score = itm.log() + scale * (q[i] @ c[shortlist].t())
            order = score.argsort(descending=True, stable=True)
            assert torch.equal(combined.indices[i], shortlist[order])
            torch.testing.assert_close(combined.scores[i], score[order])
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    with pytest.raises(ValueError, match="similarity_weight"):
        model.rerank(queries, candidates, "text", "image", top_k=5, similarity_weight=-1.0)
    assert not torch.equal(out.indices, out.retrieval_indices)  # the ITM head did reorder the dual encoder's list


# ---- pair reasoning -----------------------------------------------------------------------------------------------

def test_pair_reasoning_fuses_the_sentence_with_each_image():
    model = OptTriForPairReasoning(_config()).eval()
    b = _pair_batch()
    with torch.no_grad():
        out = model(**b)
        pooled = [
            model.opt_tri(input_ids=b["input_ids"], attention_mask=b["attention_mask"], pixel_values=b["pixel_values"][:, i]).pooler_output
            for i in (0, 1)
        ]
        torch.testing.assert_close(out.logits, model.classifier(torch.cat(pooled, dim=-1)))
    assert out.logits.shape == (4, 2) and out.loss is None
    with pytest.raises(ValueError, match=r"\(batch, 2, channels, height, width\)"):
        model(input_ids=b["input_ids"], pixel_values=b["pixel_values"][:, 0])


# ---- Trainer: save -> load -> evaluate ----------------------------------------------------------------------------

class _Rows(torch.utils.data.Dataset):
    def __init__(self, batch, labels):
        self.batch, self.labels = batch, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {**{k: v[i] for k, v in self.batch.items()}, "labels": self.labels[i]}


def _accuracy(prediction):
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


@pytest.mark.slow
def test_trainer_save_load_evaluate_reproduces_the_metric(tmp_path):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = OptTriForSequenceClassification(_config(num_labels=3))
    data = _Rows(_pick(tiny_batch(16, seed=5), TEXT, IMAGE), torch.arange(16) % 3)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=8, per_device_train_batch_size=8, per_device_eval_batch_size=8,
        learning_rate=2e-3, lr_scheduler_type="constant", report_to="none", save_strategy="no", use_cpu=True, seed=0,
        disable_tqdm=True, dataloader_num_workers=0,
    )
    optimizer = build_optimizer(model, args.learning_rate, encoder_lr_scale=0.1)
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data, compute_metrics=_accuracy,
                      optimizers=(optimizer, None))
    trainer.train()
    lrs = {group["name"]: group["lr"] for group in trainer.optimizer.param_groups}
    assert lrs["pretrained"] == pytest.approx(0.1 * lrs["new"]) and lrs["new"] == pytest.approx(2e-3)
    before = trainer.evaluate()
    trainer.save_model(str(tmp_path / "model"))
    loaded = OptTriForSequenceClassification.from_pretrained(tmp_path / "model")
    after = Trainer(model=loaded, args=args, eval_dataset=data, compute_metrics=_accuracy).evaluate()
    assert after["eval_accuracy"] == before["eval_accuracy"]
    assert after["eval_loss"] == before["eval_loss"]


# ---- remote code --------------------------------------------------------------------------------------------------

# plain torch code, run in this process and (as source) in the subprocess where our package cannot be imported
_HEAD_OUTPUTS = """
def _head_outputs(models, inputs):
    with torch.no_grad():
        ranked = models["retrieval"].rerank(inputs["queries"], inputs["candidates"], "text", "image", top_k=3)
        return {
            "classification": models["classification"](**inputs["classification"]).logits,
            "prompt": models["prompt"](**inputs["prompt"]).logits,
            "qa": models["qa"](**inputs["qa"]).logits,
            "retrieval": models["retrieval"](
                **inputs["retrieval"], query_modality="text", gallery_modality="audio"
            ).logits_per_query,
            "rerank": torch.cat([ranked.indices.float(), ranked.scores]),
            "pair": models["pair"](**inputs["pair"]).logits,
        }
"""
_namespace = {"torch": torch}
exec(_HEAD_OUTPUTS, _namespace)
_head_outputs = _namespace["_head_outputs"]


@pytest.mark.slow
def test_every_head_round_trips_through_trust_remote_code(tmp_path):
    torch.manual_seed(0)
    models = {
        "classification": OptTriForSequenceClassification(_config(num_labels=3)),
        "prompt": OptTriForSequenceClassification(_config(num_labels=3)),
        "qa": OptTriForQuestionAnswering(_config(num_labels=5, id2label={i: f"a{i}" for i in range(5)},
                                                 label2id={f"a{i}": i for i in range(5)})),
        "retrieval": OptTriForRetrieval(_config()),
        "pair": OptTriForPairReasoning(_config()),
    }
    models["prompt"].enable_prompt_tuning([[2, 10, 3], [2, 11, 12, 3], [2, 13, 3]], context_length=2, modality="audio")
    b = tiny_batch()
    inputs = {
        "classification": b, "prompt": _pick(b, AUDIO), "qa": _pick(b, TEXT, IMAGE), "retrieval": _pick(b, TEXT, AUDIO),
        "queries": _pick(b, TEXT), "candidates": _pick(tiny_batch(5, seed=4), IMAGE), "pair": _pair_batch(),
    }
    for name, model in models.items():
        model.eval().save_pretrained(tmp_path / name)
    expected = _head_outputs(models, inputs)
    torch.save(inputs, tmp_path / "inputs.pt")
    body = (
        f"""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoModelForVisualQuestionAnswering
        from transformers.dynamic_module_utils import get_class_from_dynamic_module
        root = {str(tmp_path)!r}
        exec({_HEAD_OUTPUTS!r})
        def head(name):
            return get_class_from_dynamic_module("modeling_opt_tri." + name, f"{{root}}/{{name_of[name]}}")
        name_of = {{"OptTriForRetrieval": "retrieval", "OptTriForPairReasoning": "pair"}}
        models = {{
            "classification": AutoModelForSequenceClassification.from_pretrained(f"{{root}}/classification", trust_remote_code=True),
            "prompt": AutoModelForSequenceClassification.from_pretrained(f"{{root}}/prompt", trust_remote_code=True),
            "qa": AutoModelForVisualQuestionAnswering.from_pretrained(f"{{root}}/qa", trust_remote_code=True),
            "retrieval": head("OptTriForRetrieval").from_pretrained(f"{{root}}/retrieval"),
            "pair": head("OptTriForPairReasoning").from_pretrained(f"{{root}}/pair"),
        }}
        for model in models.values():
            assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
            model.eval()
        assert models["qa"].config.id2label[4] == "a4"
        torch.save({{"outputs": _head_outputs(models, torch.load(f"{{root}}/inputs.pt")),
                     "classes": {{k: type(m).__name__ for k, m in models.items()}}}}, f"{{root}}/outputs.pt")
        """
    )
    loaded = run_without_our_package(body, tmp_path)
    assert loaded["classes"] == {k: type(m).__name__ for k, m in models.items()}
    for name, value in expected.items():
        assert torch.equal(loaded["outputs"][name], value), name


# ---- PEFT LoRA, freezing, learning-rate groups, prompt tuning ----------------------------------------------------

def test_lora_trains_only_adapters_and_head():
    torch.manual_seed(0)
    config = _config(num_labels=3)
    model = OptTriForSequenceClassification(config)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    rank = 4
    peft_model = apply_lora(model, rank=rank, alpha=8, modules_to_save=["classifier"])
    # LoRA adds A (rank x in) and B (out x rank) to every targeted square projection: query/key/value of the BERT
    # text and ViT vision encoders, q/k/v/out of our audio and cross-modal encoders
    t, v, a, f = config.text_config, config.vision_config, config.audio_config, config.cross_modal_config
    lora = sum(
        projections * layers * rank * 2 * hidden
        for projections, layers, hidden in (
            (3, t.num_hidden_layers, t.hidden_size), (3, v.num_hidden_layers, v.hidden_size),
            (4, a.num_hidden_layers, a.hidden_size), (4, f.num_hidden_layers, f.hidden_size),
        )
    )
    head = f.hidden_size * 3 + 3
    trainable, total = count_trainable(peft_model)
    assert trainable == lora + head == 8339
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert all(".lora_A." in n or ".lora_B." in n or ".modules_to_save." in n for n in names), names
    assert sum(".lora_A." in n for n in names) == 2 * (3 + 3 + 4 + 4)

    inputs = _pick(tiny_batch(8, seed=7), IMAGE)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def accuracy():
        peft_model.eval()
        with torch.no_grad():
            return float((peft_model(**inputs).logits.argmax(-1) == labels).float().mean())

    start = accuracy()
    losses = _train(peft_model, inputs, steps=30, lr=1e-2, labels=labels)
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
    assert accuracy() > start and accuracy() == 1.0
    base = peft_model.base_model.model
    layer = base.opt_tri.fusion_encoder.layers[0].self_attn.q_proj
    assert torch.equal(layer.base_layer.weight, original["opt_tri.fusion_encoder.layers.0.self_attn.q_proj.weight"])
    assert not torch.equal(layer.lora_B["default"].weight, torch.zeros_like(layer.lora_B["default"].weight))
    assert torch.equal(base.classifier.original_module.weight, original["classifier.weight"])
    assert torch.equal(base.opt_tri.vision_model.layers[1].mlp.fc1.weight, original["opt_tri.vision_model.layers.1.mlp.fc1.weight"])


def test_freezing_bottom_layers_leaves_them_unchanged():
    torch.manual_seed(0)
    model = OptTriForSequenceClassification(_config(num_labels=3))
    frozen = set(freeze_bottom_layers(model, 1))
    assert {"text_model.embeddings.word_embeddings.weight", "vision_model.embeddings.cls_token",
            "audio_model.embeddings.patch_embedding.weight", "text_model.encoder.layer.0.attention.self.query.weight",
            "vision_model.layers.0.attention.q_proj.weight", "audio_model.encoder.layers.0.self_attn.q_proj.weight"} <= frozen
    assert not any(".1." in name or "fusion" in name for name in frozen)
    named = dict(model.named_parameters())
    assert all(not named[f"opt_tri.{name}"].requires_grad for name in frozen)
    before = {n: p.detach().clone() for n, p in named.items()}
    optimizer = build_optimizer(model, 1e-2)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(named[f"opt_tri.{name}"]) not in in_optimizer for name in frozen)
    model(**tiny_batch(), labels=torch.tensor([0, 1, 2, 0])).loss.backward()
    optimizer.step()
    for name, parameter in named.items():
        if name.removeprefix("opt_tri.") in frozen:
            assert torch.equal(parameter, before[name]), name
    for name in ("opt_tri.text_model.encoder.layer.1.attention.self.query.weight",
                 "opt_tri.vision_model.layers.1.attention.q_proj.weight",
                 "opt_tri.audio_model.encoder.layers.1.self_attn.q_proj.weight",
                 "opt_tri.fusion_encoder.layers.0.self_attn.q_proj.weight", "classifier.weight"):
        assert not torch.equal(named[name], before[name]), name
    with pytest.raises(ValueError, match="only 2 layers"):
        freeze_bottom_layers(model, 3)


def test_encoder_lr_scale_groups():
    model = OptTriForQuestionAnswering(_config(num_labels=4))
    optimizer = build_optimizer(model, 1e-3, encoder_lr_scale=0.05, weight_decay=0.1)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"pretrained", "pretrained_no_decay", "new", "new_no_decay"}
    assert groups["pretrained"]["lr"] == pytest.approx(5e-5) and groups["new"]["lr"] == 1e-3
    assert groups["new_no_decay"]["weight_decay"] == 0.0 and groups["new"]["weight_decay"] == 0.1
    head = {id(p) for p in model.classifier.parameters()}
    assert {id(p) for g in ("new", "new_no_decay") for p in groups[g]["params"]} == head
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def _aligned_classifier(class_ids, images, labels):
    """CoOp needs a pre-trained (aligned) model: on a random one every class prompt gets the same embedding. A few
    contrastive steps on (class name, image) pairs stand in for pre-training."""
    torch.manual_seed(0)
    retrieval = OptTriForRetrieval(_config())
    length = max(map(len, class_ids))
    ids = torch.zeros(len(labels), length, dtype=torch.long)
    for row, label in enumerate(labels.tolist()):
        ids[row, : len(class_ids[label])] = torch.tensor(class_ids[label])
    _train(retrieval, {"input_ids": ids, "attention_mask": (ids > 0).long(), **images}, steps=30, lr=2e-3,
           return_loss=True, itm_loss_weight=0.0)
    model = OptTriForSequenceClassification(_config(num_labels=3))
    model.opt_tri.load_state_dict(retrieval.opt_tri.state_dict())
    return model


def test_prompt_tuning_learns_only_the_context(tmp_path):
    class_ids = [[2, 10, 3], [2, 11, 12, 3], [2, 13, 3]]
    images = _pick(tiny_batch(6, seed=3), IMAGE)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    model = _aligned_classifier(class_ids, images, labels)
    learner = model.enable_prompt_tuning(class_ids, context_length=4, modality="image")
    model.requires_grad_(False)
    learner.requires_grad_(True)
    assert count_trainable(model)[0] == 4 * model.config.text_config.hidden_size
    base = model.opt_tri
    model.eval()
    with torch.no_grad():  # CoOp by hand: [CLS] v_1..v_M name [SEP], one class at a time (no padding)
        classes = []
        for ids in class_ids:
            words = base.text_model.get_input_embeddings()(torch.tensor([ids]))
            embeds = torch.cat([words[:, :1], learner.context[None], words[:, 1:]], dim=1)
            hidden = base.text_model(inputs_embeds=embeds).last_hidden_state
            classes.append(F.normalize(base.text_projection(hidden[:, 0]), dim=-1))
        expected = base.logit_scale.exp() * base.get_image_features(images["pixel_values"]).pooler_output @ torch.cat(classes).t()
        torch.testing.assert_close(model(**images).logits, expected, rtol=1e-4, atol=1e-4)
    frozen_before = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    context_before = learner.context.detach().clone()
    losses = _train(model, images, steps=20, lr=1e-2, labels=labels)
    assert losses[-1] < 0.8 * losses[0], losses
    assert not torch.equal(learner.context, context_before)
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if n in frozen_before)
    model.save_pretrained(tmp_path)
    loaded = OptTriForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.prompt_class_token_ids == class_ids and loaded.config.prompt_context_length == 4
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(**images).logits, model(**images).logits)
    with pytest.raises(ValueError, match="pass pixel_values"):
        model(**_pick(tiny_batch(), AUDIO))


def test_heads_without_an_auto_class_push_their_hub_files(tmp_path, monkeypatch):
    """Retrieval and pair reasoning have no Auto class, so transformers would not copy the modeling files for them;
    they copy them themselves, also on the `push_to_hub` path (offline, through the local Hub stand-in)."""
    from hub_server import LocalHub

    hub_files = {"model.safetensors", "config.json", "modeling_opt_tri.py", "configuration_opt_tri.py"}
    with LocalHub() as hub:
        hub.patch(monkeypatch, tmp_path / "hf")
        for name, cls in (("retrieval", OptTriForRetrieval), ("pair", OptTriForPairReasoning)):
            cls(_config()).push_to_hub(f"user/{name}")
            assert hub_files <= set(hub.files(f"user/{name}")), sorted(hub.files(f"user/{name}"))
    OptTriForRetrieval(_config()).save_pretrained(tmp_path / "saved")
    assert hub_files <= set(os.listdir(tmp_path / "saved"))


# ---- loading a checkpoint for a task (issue 14, item 8) -------------------------------------------------------------

def _pretraining_checkpoint(folder):
    from safetensors.torch import load_file

    from conftest import REPO_ROOT
    from modeling_opt_tri import OptTriConfig

    torch.manual_seed(0)
    OptTriForPreTraining(OptTriConfig.from_pretrained(REPO_ROOT / "configuration" / "tiny")).save_pretrained(folder)
    return load_file(str(folder / "model.safetensors"))


def test_load_model_only_lets_the_task_head_start_at_random(tmp_path):
    """A wrong-shaped or missing encoder tensor was silently re-initialised, and a folder with only pytorch_model.bin
    gave a random model: now each is an error naming the tensors (or the file); only the new head may be random."""
    from safetensors.torch import save_file

    from modeling_opt_tri.training.finetune import load_model

    weights = _pretraining_checkpoint(tmp_path / "good")
    model = load_model(OptTriForSequenceClassification, str(tmp_path / "good"), new_heads=["classifier"], num_labels=3)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items() if k in state)  # every encoder tensor loaded

    wrong = "opt_tri.text_model.embeddings.position_embeddings.weight"
    gone = next(k for k in weights if k.startswith("opt_tri.vision_model.") and k.endswith("weight"))
    for name, edit, message in (
        ("shape", lambda w: w.update({wrong: torch.zeros(w[wrong].shape[0] + 1, w[wrong].shape[1])}),
         rf"of another shape in the checkpoint: \['{wrong} \(checkpoint \(65, \d+\), model \(64, \d+\)\)'\]"),
        ("missing", lambda w: w.pop(gone), rf"missing from the checkpoint: \['{gone}'\]"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text((tmp_path / "good" / "config.json").read_text())
        damaged = dict(weights)
        edit(damaged)
        save_file(damaged, str(folder / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(ValueError, match=message + r" \(only the task's new head \(classifier\) may start at random\)"):
            load_model(OptTriForSequenceClassification, str(folder), new_heads=["classifier"], num_labels=3)
        with pytest.raises(ValueError, match="this task adds no head"):
            load_model(OptTriForRetrieval, str(folder))

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tmp_path / "good" / "config.json").read_text())
    torch.save(weights, pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"holds weights only as \['pytorch_model.bin'\], not as model.safetensors"):
        load_model(OptTriForSequenceClassification, str(pickled), new_heads=["classifier"], num_labels=3)


def _caption_jpg_parquet(path: Path, rows: int) -> Path:
    """ShapeWorld rows written to parquet with a dataset's own column names: `caption` (text), `jpg` (Image())."""
    data = build_synthetic_dataset(rows, seed=0, split="train").select_columns(["text", "image"])
    data.rename_columns({"text": "caption", "image": "jpg"}).to_parquet(str(path))
    return path


@pytest.mark.slow
def test_finetuning_reads_columns_named_by_the_column_flags(tmp_path):
    import json
    import subprocess
    import sys

    data = _caption_jpg_parquet(tmp_path / "pairs.parquet", 24)
    common = [sys.executable, str(REPO_ROOT / "examples" / "finetune_retrieval.py"), "--model",
              str(REPO_ROOT / "configuration" / "tiny"), "--dataset", str(data), "--eval_rows", "6", "--max_steps", "2",
              "--batch_size", "4", "--rerank_top_k", "0"]
    run = subprocess.run([*common, "--output_dir", str(tmp_path / "run"), "--text_column", "caption",
                          "--image_column", "jpg"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rows of train (held-out 20% of its rows))" in run.stdout  # the split is named
    assert json.loads((tmp_path / "run" / "retrieval_metrics.json").read_text())["eval_split"] == \
        "train (held-out 20% of its rows)"
    wrong = subprocess.run([*common, "--output_dir", str(tmp_path / "wrong"), "--text_column", "captions",
                            "--image_column", "jpg"], capture_output=True, text=True, timeout=300)
    assert wrong.returncode != 0
    assert "--text_column: source 'pairs'" in wrong.stderr and "has no column 'captions'" in wrong.stderr
    assert "its columns are ['caption', 'jpg']" in wrong.stderr, wrong.stderr[-2000:]


@pytest.mark.slow
def test_captioning_fine_tunes_on_a_users_own_columns(tmp_path, monkeypatch, capsys):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("finetune_captioning", REPO_ROOT / "examples" / "finetune_captioning.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = _caption_jpg_parquet(tmp_path / "pairs.parquet", 24)
    common = ["finetune_captioning.py", "--model", str(REPO_ROOT / "configuration" / "tiny"), "--dataset", str(data),
              "--train_rows", "0", "--eval_rows", "6", "--max_steps", "2", "--batch_size", "4", "--text_column", "caption"]
    monkeypatch.setattr("sys.argv", [*common, "--image_column", "jpg", "--output_dir", str(tmp_path / "run")])
    script.main()
    results = json.loads((tmp_path / "run" / "caption_metrics.json").read_text())
    assert results["eval_split"] == "train (held-out 20% of its rows)" and 0 <= results["bleu"] <= 1
    assert "shape_accuracy" not in results  # ShapeWorld's scene description is not a column of this data
    from modeling_opt_tri.training.finetune import load_split

    held_out = load_split(str(data), "validation", 6, columns={"text": "caption", "image": "jpg"})
    assert [e["reference"] for e in results["examples"]] == held_out["text"][:5]  # the held-out rows, in order
    assert "fine-tuning on" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", [*common, "--image_column", "png", "--output_dir", str(tmp_path / "wrong")])
    with pytest.raises(ValueError, match=r"has no column 'png'; its columns are \['caption', 'jpg'\]"):
        script.main()


def test_load_split_maps_the_columns_and_names_the_real_ones(tmp_path):
    from modeling_opt_tri.training.finetune import dataset_columns, load_split

    data = str(_caption_jpg_parquet(tmp_path / "pairs.parquet", 10))
    args = build_parser_args(["--text_column", "caption", "--image_column", "jpg"])
    assert dataset_columns(args) == {"text": "caption", "image": "jpg"}
    train = load_split(data, "train", 0, columns=dataset_columns(args), holdout_fraction=0.3)
    expected = build_synthetic_dataset(10, seed=0, split="train")["text"]
    assert 0 < len(train) < 10 and set(train["text"]) < set(expected) and train.features["image"] is not None
    with pytest.raises(ValueError, match=r"--image_column: .* has no column 'png'; its columns are \['caption', 'jpg'\]"):
        load_split(data, "train", 0, columns={"text": "caption", "image": "png"}, holdout_fraction=0.3)


def build_parser_args(argv: list[str]):
    from modeling_opt_tri.training.arguments import CheckedArgumentParser
    from modeling_opt_tri.training.finetune import add_finetune_arguments

    parser = CheckedArgumentParser()
    add_finetune_arguments(parser)
    return parser.parse_args(["--model", "m", "--output_dir", "o", *argv])


def test_task_and_pretraining_collators_share_one_corrupt_row_policy():
    """`TaskCollator` skips what `TriModalCollator` skips (a non-dict row, an undecodable one), keeps the targets of
    the decoded rows only, and raises when no row is usable (Trainer cannot skip a batch)."""
    from modeling_opt_tri.data.collate import TriModalCollator
    from modeling_opt_tri.data.decoding import CorruptSampleError
    from modeling_opt_tri.processing_opt_tri import OptTriProcessor
    from modeling_opt_tri.training.finetune import TaskCollator

    processor = OptTriProcessor.from_pretrained(REPO_ROOT / "configuration" / "tiny")
    rows = ["not a row", {"id": "bad", "text": "a red circle", "image": b"not an image"},
            {"id": "a", "text": "a red circle", "label": 1}, {"id": "b", "text": "two green triangles", "label": 0}]
    pretraining = TriModalCollator(processor)(rows)
    task = TaskCollator(processor, ["text", "image"], targets=lambda row: row["label"])(rows)
    assert pretraining["num_skipped_rows"] == 2 and "expected a dict of columns" in pretraining["skipped_reasons"][0]
    assert task["labels"].tolist() == [1, 0]
    assert torch.equal(task["input_ids"], pretraining["input_ids"])
    with pytest.raises(CorruptSampleError, match="Every row of the batch failed to decode"):
        TaskCollator(processor, ["text", "image"])(rows[:2])
