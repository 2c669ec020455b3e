"""Per-tower training: frozen towers (no gradient, no optimizer state, eval mode, cheaper backward), LoRA towers
(base weights fixed, adapters train), per-tower learning rates, the options' errors, and --init_* in pre-training."""

from __future__ import annotations

import importlib

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode
from transformers import get_cosine_schedule_with_warmup

from conftest import REPO_ROOT, tiny_batch, tiny_config
from modeling_opt_tri import OptTriForPreTraining, OptTriForSequenceClassification
from modeling_opt_tri.training.finetune import build_optimizer, prepare_for_training
from modeling_opt_tri.training.pretrain import PretrainArguments, _optimizer, check_arguments, read_history, run_pretraining
from modeling_opt_tri.training.towers import apply_tower_options, merge_lora

PRESET = str(REPO_ROOT / "configuration" / "tiny")
RUN = dict(preset=PRESET, train_rows=24, batch_size=8, learning_rate=1e-3, warmup_steps=0, logging_steps=1,
           progress=False, tensorboard=False, evaluate=False, num_workers=0, save_total_limit=0)


def _model(freeze=None, lora=None) -> OptTriForPreTraining:
    torch.manual_seed(0)
    return apply_tower_options(OptTriForPreTraining(tiny_config()), freeze, lora, rank=4, alpha=8)


def _loss(model) -> torch.Tensor:
    return model(**tiny_batch(8, seed=1), generator=torch.Generator().manual_seed(3)).loss


def _tower_parameters(model, name: str) -> dict[str, torch.nn.Parameter]:
    tower = model.encoder_modules()[name]
    return {n: p for n, p in tower.named_parameters()}


def test_frozen_towers_get_no_gradient_no_optimizer_state_stay_in_eval_and_cost_less():
    model = _model(freeze="vision,audio")
    assert model.frozen_towers == ("audio", "vision")
    model.train()  # what Trainer and the pre-training loop call: frozen towers must stay in eval mode
    for name in ("vision", "audio"):
        assert not any(module.training for module in model.encoder_modules()[name].modules()), name
    assert model.training and model.opt_tri.text_model.training and model.opt_tri.fusion_encoder.training

    outputs = {}

    def keep(module, args, output):
        outputs["vision"] = output.last_hidden_state

    model.opt_tri.vision_model.register_forward_hook(keep)
    optimizer = _optimizer(model, PretrainArguments(learning_rate=1e-2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = _loss(model)
    assert not outputs["vision"].requires_grad  # nothing of the frozen tower is kept for the backward
    with FlopCounterMode(display=False) as frozen_flops:
        loss.backward()
    optimizer.step()

    frozen = {id(p) for name in ("vision", "audio") for p in _tower_parameters(model, name).values()}
    state = {id(p) for p in optimizer.state}
    in_groups = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not frozen & state and not frozen & in_groups
    assert all(p.grad is None for p in model.parameters() if id(p) in frozen)
    for name, parameter in model.named_parameters():
        if id(parameter) in frozen:
            assert torch.equal(parameter, before[name]), name
    text = _tower_parameters(model, "text")["encoder.layer.0.attention.self.query.weight"]
    assert text.grad is not None and id(text) in state

    reference = _model()  # same weights, masks and batch, nothing frozen
    reference.train()
    loss = _loss(reference)
    with FlopCounterMode(display=False) as full_flops:
        loss.backward()
    # the frozen towers' weight and input gradients are never computed: a deterministic measure of a cheaper step
    assert frozen_flops.get_total_flops() < 0.9 * full_flops.get_total_flops(), (
        frozen_flops.get_total_flops(), full_flops.get_total_flops())


def test_a_frozen_text_tower_still_passes_the_prompt_gradient():
    """CoOp prompt tuning trains context vectors that go through the text tower: freezing that tower must not cut
    their gradient (it did when frozen towers ran under no_grad)."""
    torch.manual_seed(0)
    model = OptTriForSequenceClassification(tiny_config())
    model.enable_prompt_tuning([[2, 10, 3], [2, 11, 12, 3]], context_length=2, modality="image")
    model.freeze_towers(["text"])
    model.train()
    logits = model.prompt_logits(pixel_values=torch.randn(2, 3, 32, 32))
    logits.sum().backward()
    context = model.prompt_learner.context
    assert context.grad is not None and context.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.opt_tri.text_model.parameters())


def test_lora_tower_trains_only_adapters_and_merges_into_a_plain_checkpoint():
    model = _model(lora="text")
    original = {n: p.detach().clone() for n, p in _model().named_parameters()}
    text = model.opt_tri.text_model
    trainable = {n for n, p in text.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.requires_grad for p in model.opt_tri.vision_model.parameters())
    assert all(p.requires_grad for p in model.opt_tri.fusion_encoder.parameters())
    optimizer = _optimizer(model, PretrainArguments(learning_rate=1e-2))
    model.train()
    for _ in range(2):
        _loss(model).backward()
        optimizer.step()
        optimizer.zero_grad()
    query = text.encoder.layer[0].attention.self.query
    assert torch.equal(query.base_layer.weight, original["opt_tri.text_model.encoder.layer.0.attention.self.query.weight"])
    assert torch.count_nonzero(query.lora_B["default"].weight) > 0
    assert not torch.equal(model.opt_tri.vision_model.layers[0].attention.q_proj.weight,
                           original["opt_tri.vision_model.layers.0.attention.q_proj.weight"])

    model.eval()
    with torch.no_grad():
        expected = model(**tiny_batch(4, seed=2)).text_embeds
    merged = merge_lora(model)
    assert set(merged.state_dict()) == set(_model().state_dict())
    plain = OptTriForPreTraining(tiny_config())
    plain.load_state_dict(merged.state_dict())
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**tiny_batch(4, seed=2)).text_embeds, expected)


def test_tower_learning_rate_scales_reach_the_parameter_groups():
    model = _model()
    optimizer = _optimizer(model, PretrainArguments(learning_rate=1e-3, tower_lr_scale="vision=0.1,audio=0.5"))
    lr_of = {id(p): group.get("lr", optimizer.defaults["lr"]) for group in optimizer.param_groups for p in group["params"]}
    assert len(lr_of) == sum(len(g["params"]) for g in optimizer.param_groups)  # each parameter once
    assert list({lr_of[id(p)] for p in model.opt_tri.vision_model.parameters()}) == [pytest.approx(1e-4)]
    assert list({lr_of[id(p)] for p in model.opt_tri.audio_model.parameters()}) == [pytest.approx(5e-4)]
    assert {lr_of[id(p)] for p in model.opt_tri.text_model.parameters()} == {1e-3}
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, 10)  # the schedule scales every group alike
    optimizer.step()
    scheduler.step()
    rates = {group.get("name", str(i)): group["lr"] for i, group in enumerate(optimizer.param_groups)}
    vision = next(g["lr"] for g in optimizer.param_groups if g.get("name", "").endswith("vision"))
    assert vision == pytest.approx(0.1 * optimizer.param_groups[0]["lr"]) and vision < 1e-4, rates
    decay = {group["weight_decay"] for group in optimizer.param_groups if group["params"][0] is
             model.opt_tri.vision_model.layers[0].attention.q_proj.weight}
    assert decay == {0.01}

    classifier = OptTriForSequenceClassification(tiny_config(num_labels=3))
    groups = {g["name"]: g for g in build_optimizer(classifier, 1e-3, encoder_lr_scale=0.5,
                                                     tower_lr_scales={"audio": 0.2}).param_groups}
    assert groups["pretrained/audio"]["lr"] == pytest.approx(1e-4) and groups["pretrained"]["lr"] == pytest.approx(5e-4)
    audio = {id(p) for p in classifier.opt_tri.audio_model.parameters()}
    assert {id(p) for name in ("pretrained/audio", "pretrained_no_decay/audio") for p in groups[name]["params"]} == audio


@pytest.mark.parametrize("options, message", [
    (dict(freeze="vision,video"), r"--freeze 'vision,video': unknown tower\(s\) \['video'\]; the towers are text, vision, audio"),
    (dict(freeze="text", lora="text,audio"), r"the tower\(s\) \['text'\] cannot be both frozen and trained through LoRA"),
    (dict(freeze="vision", tower_lr_scale="vision=0.1"), r"the tower\(s\) \['vision'\] are frozen .* no learning rate"),
    (dict(tower_lr_scale="vision=-1"), r"'vision=-1' is not TOWER=SCALE with a finite scale >= 0"),
    (dict(lora="audio,audio"), r"names a tower twice"),
])
def test_bad_tower_options_are_refused_before_work(options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        check_arguments(PretrainArguments(output_dir=str(tmp_path), **options))


def test_finetune_tower_options(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "examples"))
    parser = importlib.import_module("finetune_classification").build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "x", "--output_dir", "y", "--lora", "text,smell"])
    assert "unknown tower(s) ['smell']" in capsys.readouterr().err
    args = parser.parse_args(["--model", "x", "--output_dir", "y", "--freeze", "vision", "--lora", "text",
                              "--tower_lr_scale", "audio=0.1"])
    torch.manual_seed(0)
    model, optimizer = prepare_for_training(OptTriForSequenceClassification(tiny_config(num_labels=3)), args, ["classifier"])
    assert model.frozen_towers == ("vision",) and type(model) is OptTriForSequenceClassification
    assert {g["name"] for g in optimizer.param_groups} >= {"pretrained/audio", "new"}
    assert not any(p.requires_grad for p in model.opt_tri.vision_model.parameters())
    assert model.classifier.weight.requires_grad and model.opt_tri.fusion_encoder.layers[0].mlp.fc1.weight.requires_grad
    bare = parser.parse_args(["--model", "x", "--output_dir", "y", "--lora", "--freeze", "audio"])
    with pytest.raises(ValueError, match="--lora alone puts adapters on every tower"):
        prepare_for_training(OptTriForSequenceClassification(tiny_config(num_labels=3)), bare, ["classifier"])


def _tiny_sources(tmp_path):
    """A tiny BERT and an OPT-Tri audio encoder that fit the tiny preset's tokenizer and features, saved locally."""
    from transformers import BertConfig, BertModel

    from modeling_opt_tri import OptTriAudioModel, OptTriConfig

    torch.manual_seed(1)
    preset = OptTriConfig.from_pretrained(PRESET)
    bert = BertModel(BertConfig(vocab_size=preset.text_config.vocab_size, hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=128),
                     add_pooling_layer=False)
    audio = OptTriAudioModel(preset.audio_config)
    bert.save_pretrained(tmp_path / "bert")
    audio.save_pretrained(tmp_path / "audio")
    return bert, audio


@pytest.mark.slow
def test_pretraining_from_unimodal_checkpoints_with_frozen_towers_keeps_their_weights(tmp_path):
    bert, audio = _tiny_sources(tmp_path)
    run_pretraining(PretrainArguments(output_dir=str(tmp_path / "run"), max_steps=2, save_steps=0,
                                      init_text=str(tmp_path / "bert"), init_audio=str(tmp_path / "audio"),
                                      freeze="text,audio", **RUN))
    final = load_file(tmp_path / "run" / "final" / "model.safetensors")
    for prefix, source in (("opt_tri.text_model.", bert), ("opt_tri.audio_model.", audio)):
        for name, tensor in source.state_dict().items():
            assert torch.equal(final[prefix + name], tensor), prefix + name
    history = read_history(tmp_path / "run" / "losses.jsonl")
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)


@pytest.mark.slow
def test_resume_of_a_frozen_and_lora_run_is_exact(tmp_path):
    options = dict(freeze="vision", lora="text", tower_lr_scale="audio=0.5", lora_rank=4, **RUN)
    run_pretraining(PretrainArguments(output_dir=str(tmp_path / "straight"), max_steps=4, save_steps=2, **options))
    run_pretraining(PretrainArguments(output_dir=str(tmp_path / "resumed"), max_steps=4, save_steps=2,
                                      resume_from_checkpoint=str(tmp_path / "straight" / "checkpoint-2"), **options))
    losses = [[{k: v for k, v in r.items() if k == "step" or k.startswith("loss")}
               for r in read_history(tmp_path / run / "losses.jsonl")] for run in ("straight", "resumed")]
    assert losses[0][2:] == losses[1] and [r["step"] for r in losses[1]] == [3, 4]
    a, b = (load_file(tmp_path / run / "final" / "model.safetensors") for run in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("lora_" in key or "base_layer" in key for key in a)  # final/ is a plain, merged checkpoint


@pytest.mark.slow
def test_readme_recipe_siglip_whisper_roberta_pretrains_end_to_end(tmp_path):
    """The README's "Start from pretrained encoders" recipe at tiny size: a processor from the checkpoints' own
    preprocessing saved with a preset config, then pre-training with --tokenizer, --init_* and per-tower options."""
    from transformers import (
        RobertaConfig, RobertaModel, RobertaTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel,
        WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
    )

    from modeling_opt_tri import OptTriConfig, OptTriProcessor

    g = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,?") + ["Ġ"]
    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *chars, "Ġa", "re"])}
    # model_max_length: the tiny preset's text decoder has 48 positions (characters make long texts)
    tokenizer = RobertaTokenizer(vocab=vocab, merges=[("Ġ", "a"), ("r", "e")], model_max_length=40)
    torch.manual_seed(0)
    sources = {
        "roberta": (RobertaModel(RobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=130, pad_token_id=1,
                                               type_vocab_size=1, **g), add_pooling_layer=False), tokenizer),
        "siglip": (SiglipModel(SiglipConfig(text_config=dict(vocab_size=100, **g),
                                            vision_config=dict(image_size=32, patch_size=8, **g))),
                   SiglipImageProcessor(size={"height": 32, "width": 32})),
        "whisper": (WhisperForConditionalGeneration(WhisperConfig(
            d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=50, max_target_positions=16,
            vocab_size=60, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)),
            WhisperFeatureExtractor(feature_size=16, chunk_length=1)),  # a 1 s window: 100 frames, 50 tokens
    }
    for name, (model, preprocessing) in sources.items():
        model.save_pretrained(tmp_path / name)
        preprocessing.save_pretrained(tmp_path / name)
    folders = {name: str(tmp_path / name) for name in sources}
    processor = OptTriProcessor.from_unimodal_pretrained(text=folders["roberta"], vision=folders["siglip"],
                                                         audio=folders["whisper"])
    processor.save_pretrained(tmp_path / "preset")
    OptTriConfig.from_pretrained(PRESET).save_pretrained(tmp_path / "preset")
    run_pretraining(PretrainArguments(**{**RUN, "preset": str(tmp_path / "preset")}, output_dir=str(tmp_path / "run"),
                                      max_steps=2, save_steps=0, tokenizer=folders["roberta"],
                                      init_text=folders["roberta"], init_vision=folders["siglip"],
                                      init_audio=folders["whisper"], freeze="audio", lora="text", lora_rank=4,
                                      tower_lr_scale="vision=0.1", max_unk_fraction=1.0))
    final = load_file(tmp_path / "run" / "final" / "model.safetensors")
    whisper = sources["whisper"][0].model.encoder.state_dict()
    assert all(torch.equal(final["opt_tri.audio_model." + k], v) for k, v in whisper.items())  # frozen: unchanged
    assert not torch.equal(final["opt_tri.vision_model.embeddings.patch_embedding.weight"],
                           sources["siglip"][0].vision_model.embeddings.patch_embedding.weight)
    history = read_history(tmp_path / "run" / "losses.jsonl")
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    reloaded = OptTriProcessor.from_pretrained(tmp_path / "run" / "final")
    assert type(reloaded.feature_extractor).__name__ == "WhisperFeatureExtractor"
    assert type(reloaded.image_processor).__name__.startswith("SiglipImageProcessor")
