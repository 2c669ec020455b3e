"""Tests of the discrete VQ tokenizers (`modeling_opt_tri.modeling_opt_tri_vq`): the EMA quantizer, the image and audio
tokenizers, Griffin-Lim, save/load and the remote-code path."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import run_without_our_package
from modeling_opt_tri import OptTriFeatureExtractor, OptTriImageProcessor
from modeling_opt_tri.configuration_opt_tri_vq import OptTriAudioVQConfig, OptTriImageVQConfig
from modeling_opt_tri.data.synthetic import ShapeWorld
from modeling_opt_tri.modeling_opt_tri_vq import (
    OptTriAudioVQModel,
    OptTriImageVQModel,
    OptTriVectorQuantizer,
    OptTriVQOutput,
    spectral_convergence,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_image_config(**overrides) -> OptTriImageVQConfig:
    kwargs = dict(image_size=32, downsample=4, codebook_size=32, embedding_dim=8, hidden_channels=16,
                  num_res_blocks=1, dead_code_threshold=0.5)
    kwargs.update(overrides)
    return OptTriImageVQConfig(**kwargs)


def tiny_audio_config(**overrides) -> OptTriAudioVQConfig:
    kwargs = dict(num_mel_bins=32, frames_per_code=4, codebook_size=32, embedding_dim=8, hidden_channels=16,
                  num_res_blocks=1, dead_code_threshold=0.5)
    kwargs.update(overrides)
    return OptTriAudioVQConfig(**kwargs)


@pytest.fixture(scope="module")
def world_rows():
    world = ShapeWorld(seed=0, image_size=32)
    return [world.sample(i) for i in range(8)]


@pytest.fixture(scope="module")
def pixel_values(world_rows):
    processor = OptTriImageProcessor(image_size=32)
    return processor([row["image"] for row in world_rows], return_tensors="pt")["pixel_values"]


@pytest.fixture(scope="module")
def feature_extractor():
    return OptTriFeatureExtractor(feature_size=32)  # as configuration/tiny


@pytest.fixture(scope="module")
def audio_batch(world_rows, feature_extractor):
    clips = [row["audio"]["array"] for row in world_rows[:4]]
    return feature_extractor(clips, sampling_rate=16000, return_tensors="pt")


# ----------------------------------------------------------------------------------------------------------------------
# Quantizer
# ----------------------------------------------------------------------------------------------------------------------


def _ready_quantizer(codebook: torch.Tensor, **kwargs) -> OptTriVectorQuantizer:
    """A quantizer whose codebook is `codebook`, marked as initialised, with plenty of usage (no restarts)."""
    quantizer = OptTriVectorQuantizer(codebook.shape[0], codebook.shape[1], **kwargs)
    quantizer.codebook.copy_(codebook)
    quantizer.ema_embed_sum.copy_(codebook * 10.0)
    quantizer.code_usage.fill_(10.0)
    quantizer.initialized.fill_(True)
    return quantizer


def test_straight_through_gradient_reaches_the_encoder():
    torch.manual_seed(0)
    encoder = torch.nn.Linear(4, 3)
    quantizer = _ready_quantizer(torch.randn(8, 3), dead_code_threshold=0.0).eval()
    inputs = torch.randn(10, 4)
    output = quantizer(encoder(inputs))
    target = torch.randn(10, 3)
    # The forward value is the code vector itself...
    torch.testing.assert_close(output.quantized, quantizer.codebook[output.codes])
    # ... and d(loss)/d(z) = d(loss)/d(quantized): the reconstruction gradient passes straight through.
    latents = encoder(inputs).detach().requires_grad_(True)
    out = quantizer(latents)
    ((out.quantized - target) ** 2).sum().backward()
    torch.testing.assert_close(latents.grad, 2 * (out.quantized.detach() - target))
    # Through the encoder, both the reconstruction and the commitment loss give gradients.
    loss = ((output.quantized - target) ** 2).mean() + output.commitment_loss
    loss.backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    assert output.commitment_loss > 0


def test_ema_update_moves_codes_toward_their_vectors():
    codebook = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    quantizer = _ready_quantizer(codebook, ema_decay=0.9, dead_code_threshold=0.0).train()
    vectors = torch.tensor([[1.0, 1.0], [1.2, 0.8], [0.8, 1.2]])  # all nearest to code 0; their mean is (1, 1)
    distances = []
    for _ in range(20):
        output = quantizer(vectors)
        assert output.codes.tolist() == [0, 0, 0]
        distances.append(float((quantizer.codebook[0] - torch.tensor([1.0, 1.0])).norm()))
    assert all(b < a for a, b in zip(distances, distances[1:])), distances
    assert distances[-1] < 0.5 * distances[0]
    torch.testing.assert_close(quantizer.codebook[1], torch.tensor([10.0, 10.0]), atol=1e-3, rtol=0)  # unused: unmoved
    # code_usage is the EMA of the number of vectors assigned per step: 10 -> 3 for code 0, 10 -> 0 for code 1.
    torch.testing.assert_close(quantizer.code_usage, torch.tensor([3 + 7 * 0.9**20, 10 * 0.9**20]))
    # Eval mode changes nothing.
    before = {name: buffer.clone() for name, buffer in quantizer.named_buffers()}
    quantizer.eval()(vectors)
    assert all(torch.equal(before[name], buffer) for name, buffer in quantizer.named_buffers())


def test_dead_codes_are_restarted_and_counted():
    torch.manual_seed(0)
    codebook = torch.cat([torch.zeros(1, 4), torch.full((5, 4), 100.0)])  # codes 1-5 are far from every input
    quantizer = _ready_quantizer(codebook, ema_decay=0.5, dead_code_threshold=3.0).train()
    quantizer.code_usage.fill_(4.0)
    vectors = torch.randn(64, 4) * 0.1
    quantizer(vectors)  # usage of codes 1-5: 4 * 0.5 = 2 < 3 -> restarted at batch vectors
    assert int(quantizer.num_restarts) == 5
    restarted = quantizer.codebook[1:]
    assert restarted.abs().max() < 1.0  # now among the data
    for code in restarted:
        assert (vectors - code).norm(dim=1).min() < 1e-6  # each is one of the batch's vectors
    torch.testing.assert_close(quantizer.code_usage[1:], torch.full((5,), 3.0))
    output = quantizer(vectors)
    assert len(output.codes.unique()) > 1  # the restarted codes now take part


def test_first_training_batch_initialises_the_codebook_from_data():
    quantizer = OptTriVectorQuantizer(16, 4, dead_code_threshold=1.0).train()
    vectors = torch.randn(64, 4) + 5.0
    output = quantizer(vectors)
    assert bool(quantizer.initialized) and int(quantizer.num_restarts) == 0
    assert (quantizer.codebook.mean(0) - 5.0).abs().max() < 1.0
    assert output.codebook_usage > 0.5


def test_codes_in_range_and_masked_vectors_ignored():
    torch.manual_seed(0)
    quantizer = OptTriVectorQuantizer(8, 3, dead_code_threshold=0.0).train()
    vectors = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    output = quantizer(vectors, mask=mask)
    assert output.codes.shape == (2, 5) and output.codes.dtype == torch.long
    assert int(output.codes.min()) >= 0 and int(output.codes.max()) < 8
    assert 1.0 <= float(output.perplexity) <= 8.0
    # Only the 8 real vectors were counted: the EMA usage gained (1 - decay) * 8 after the data initialisation.
    torch.testing.assert_close(quantizer.code_usage.sum(), torch.tensor(8.0))
    with pytest.raises(ValueError, match="codes must be in"):
        quantizer.lookup(torch.tensor([8]))


# ----------------------------------------------------------------------------------------------------------------------
# Image tokenizer
# ----------------------------------------------------------------------------------------------------------------------


def test_image_shapes_and_errors(pixel_values):
    model = OptTriImageVQModel(tiny_image_config()).eval()
    output = model(pixel_values)
    assert isinstance(output, OptTriVQOutput)
    assert output.reconstruction.shape == pixel_values.shape
    assert output.codes.shape == (8, 8, 8)
    assert output.loss.shape == () and torch.isfinite(output.loss)
    codes = model.encode(pixel_values)
    assert codes.dtype == torch.long and codes.shape == (8, 8, 8)
    assert int(codes.min()) >= 0 and int(codes.max()) < 32
    assert torch.equal(codes, output.codes)
    pixels = model.decode(codes)
    assert pixels.shape == (8, 3, 32, 32)
    images = model.to_pil(pixels[:2])
    assert len(images) == 2 and images[0].size == (32, 32) and images[0].mode == "RGB"
    with pytest.raises(ValueError, match="divisible by downsample"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="channels"):
        model.encode(torch.randn(1, 1, 32, 32))


def test_image_to_pil_inverts_the_processor(world_rows):
    processor = OptTriImageProcessor(image_size=32)
    pixels = processor([row["image"] for row in world_rows[:2]], return_tensors="pt")["pixel_values"]
    model = OptTriImageVQModel(tiny_image_config())
    back = model.to_pil(pixels)
    original = np.asarray(world_rows[0]["image"].resize((32, 32)))
    assert np.abs(np.asarray(back[0]).astype(int) - original.astype(int)).max() <= 1


def test_image_reconstruction_loss_falls(pixel_values):
    torch.manual_seed(0)
    model = OptTriImageVQModel(tiny_image_config()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        output = model(pixel_values)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(output.reconstruction_loss.item())
    first, last = np.mean(losses[:3]), np.mean(losses[-5:])
    assert last < 0.3 * first, (first, last, losses)  # typically 1.5 -> 0.1
    assert float(output.codebook_usage) > 0.2


def test_config_validation():
    with pytest.raises(ValueError, match="power of two"):
        OptTriImageVQConfig(downsample=6, image_size=36)
    with pytest.raises(ValueError, match="divisible by downsample"):
        OptTriImageVQConfig(image_size=100)
    with pytest.raises(ValueError, match="channel_multipliers"):
        OptTriImageVQConfig(channel_multipliers=[1, 2])
    with pytest.raises(ValueError, match="ema_decay"):
        OptTriImageVQConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="codebook_size"):
        OptTriAudioVQConfig(codebook_size="8")
    with pytest.raises(ValueError, match="mel_std"):
        OptTriAudioVQConfig(mel_std=0.0)
    with pytest.raises(ValueError, match="frames_per_code"):
        OptTriAudioVQConfig(frames_per_code=3)
    assert OptTriImageVQConfig().codebook_size == 8192 and OptTriImageVQConfig().downsample == 8
    assert OptTriImageVQConfig().channel_multipliers == [1, 2, 2]


# ----------------------------------------------------------------------------------------------------------------------
# Audio tokenizer
# ----------------------------------------------------------------------------------------------------------------------


def test_audio_shapes(audio_batch):
    model = OptTriAudioVQModel(tiny_audio_config()).eval()
    features, mask = audio_batch["input_features"], audio_batch["audio_attention_mask"]
    batch, _, frames = features.shape
    output = model(features, mask)
    assert output.reconstruction.shape == features.shape
    assert output.codes.shape == (batch, frames // 4) and output.codes_mask.shape == (batch, frames // 4)
    codes, codes_mask = model.encode(features, mask, return_mask=True)
    assert torch.equal(codes, output.codes) and torch.equal(codes_mask, output.codes_mask)
    assert codes_mask.sum(1).tolist() == [-(-int(n) // 4) for n in mask.sum(1)]
    assert model.decode(codes).shape == (batch, 32, frames)
    # A frame count that is not a multiple of frames_per_code is padded internally.
    odd = model(features[..., :-2], mask[:, :-2])
    assert odd.reconstruction.shape == features[..., :-2].shape and odd.codes.shape == (batch, frames // 4)
    with pytest.raises(ValueError, match="mel bins"):
        model.encode(torch.randn(1, 16, 8))


def test_audio_padding_is_ignored(audio_batch):
    torch.manual_seed(0)
    features, mask = audio_batch["input_features"], audio_batch["audio_attention_mask"]
    assert (mask == 0).any(), "the batch needs padded frames"
    changed = features.clone()
    changed[~mask.bool().unsqueeze(1).expand_as(features)] = 7.0
    model = OptTriAudioVQModel(tiny_audio_config())
    twin = OptTriAudioVQModel(tiny_audio_config())
    twin.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    a = model.train()(features, mask)
    torch.manual_seed(1)
    b = twin.train()(changed, mask)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    assert torch.equal(a.codes[a.codes_mask.bool()], b.codes[b.codes_mask.bool()])
    for (name, buffer), other in zip(model.named_buffers(), twin.buffers()):
        assert torch.equal(buffer, other), name  # the EMA statistics saw only real frames
    # Codes of a clip do not depend on how much it was padded in its batch.
    model.eval()
    row = int(mask.sum(1).argmin())
    length = int(mask[row].sum())
    alone = model.encode(features[row : row + 1, :, :length])
    in_batch, codes_mask = model.encode(features, mask, return_mask=True)
    assert torch.equal(alone[0], in_batch[row][codes_mask[row].bool()])


def test_mel_filters_match_the_feature_extractor(feature_extractor):
    model = OptTriAudioVQModel(OptTriAudioVQConfig.from_feature_extractor(feature_extractor, **_small_quantizer()))
    assert np.array_equal(model.mel_filters, feature_extractor.mel_filters)
    assert (model.config.mel_mean, model.config.mel_std) == (feature_extractor.mel_mean, feature_extractor.mel_std)


def _small_quantizer() -> dict:
    return dict(codebook_size=16, embedding_dim=8, hidden_channels=16, num_res_blocks=1)


def test_decode_waveform_griffin_lim(world_rows, feature_extractor):
    model = OptTriAudioVQModel(OptTriAudioVQConfig.from_feature_extractor(feature_extractor, **_small_quantizer()))
    clip = world_rows[0]["audio"]["array"]
    target = feature_extractor(clip, sampling_rate=16000, return_tensors="pt")
    frames = int(target["audio_attention_mask"].sum())
    waveforms, rate = model.decode_waveform(target["input_features"], target["audio_attention_mask"])
    assert rate == 16000 and len(waveforms) == 1
    waveform = waveforms[0]
    assert waveform.dtype == np.float32 and waveform.ndim == 1 and np.isfinite(waveform).all()
    assert waveform.shape[0] == (frames - 1) * 160
    again = feature_extractor(waveform, sampling_rate=rate, return_tensors="pt")
    assert int(again["audio_attention_mask"].sum()) == frames
    reference, estimate = target["input_features"][..., :frames], again["input_features"][..., :frames]
    convergence = spectral_convergence(reference, estimate)
    correlation = np.corrcoef(reference.flatten().numpy(), estimate.flatten().numpy())[0, 1]
    assert convergence < 0.3, convergence  # about 0.12 with 32 mel bands; 0.36 with the bare pseudo-inverse
    assert correlation > 0.9, correlation
    assert spectral_convergence(reference, reference) == 0.0
    # From codes: one waveform per item, cut to the item's real codes.
    codes, codes_mask = model.encode(target["input_features"], target["audio_attention_mask"], return_mask=True)
    waveforms, _ = model.decode_waveform(codes, codes_mask, num_iters=2)
    assert waveforms[0].shape[0] == (int(codes_mask.sum()) * 4 - 1) * 160 and np.isfinite(waveforms[0]).all()


# ----------------------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------------------


def _trained_models(pixel_values, audio_batch):
    torch.manual_seed(0)
    image = OptTriImageVQModel(tiny_image_config()).train()
    image(pixel_values)  # initialise the codebook from data and update the EMA buffers
    audio = OptTriAudioVQModel(tiny_audio_config()).train()
    audio(audio_batch["input_features"], audio_batch["audio_attention_mask"])
    return image.eval(), audio.eval()


def test_save_load_round_trip(tmp_path, pixel_values, audio_batch):
    image, audio = _trained_models(pixel_values, audio_batch)
    image.save_pretrained(tmp_path / "image")
    audio.save_pretrained(tmp_path / "audio")
    for name in ("image", "audio"):
        files = set(os.listdir(tmp_path / name))
        assert {"model.safetensors", "config.json", "modeling_opt_tri_vq.py", "configuration_opt_tri_vq.py"} <= files
        auto_map = json.loads((tmp_path / name / "config.json").read_text())["auto_map"]
        assert auto_map["AutoModel"].startswith("modeling_opt_tri_vq.") and "AutoConfig" in auto_map
    image2 = OptTriImageVQModel.from_pretrained(tmp_path / "image").eval()
    audio2 = OptTriAudioVQModel.from_pretrained(tmp_path / "audio").eval()
    for a, b in ((image, image2), (audio, audio2)):
        state, state2 = a.state_dict(), b.state_dict()
        assert state.keys() == state2.keys()
        assert all(torch.equal(state[k], state2[k]) for k in state), [k for k in state if not torch.equal(state[k], state2[k])]
    codes = image.encode(pixel_values)
    assert torch.equal(codes, image2.encode(pixel_values))
    assert torch.equal(image.decode(codes), image2.decode(codes))
    features, mask = audio_batch["input_features"], audio_batch["audio_attention_mask"]
    codes = audio.encode(features, mask)
    assert torch.equal(codes, audio2.encode(features, mask))
    assert torch.equal(audio.decode(codes), audio2.decode(codes))


@pytest.mark.slow
def test_trust_remote_code_in_fresh_process(tmp_path, pixel_values, audio_batch):
    image, audio = _trained_models(pixel_values, audio_batch)
    image.save_pretrained(tmp_path / "image")
    audio.save_pretrained(tmp_path / "audio")
    features, mask = audio_batch["input_features"], audio_batch["audio_attention_mask"]
    torch.save({"pixel_values": pixel_values, "input_features": features, "mask": mask}, tmp_path / "inputs.pt")
    body = (
        f"""
        import torch
        from transformers import AutoModel
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        image = AutoModel.from_pretrained({str(tmp_path / "image")!r}, trust_remote_code=True).eval()
        audio = AutoModel.from_pretrained({str(tmp_path / "audio")!r}, trust_remote_code=True).eval()
        assert type(image).__module__.startswith("transformers_modules."), type(image).__module__
        torch.save(
            {{
                "image": image.encode(inputs["pixel_values"]),
                "audio": audio.encode(inputs["input_features"], inputs["mask"]),
                "classes": [type(image).__name__, type(audio).__name__],
            }},
            {str(tmp_path / "outputs.pt")!r},
        )
        """
    )
    outputs = run_without_our_package(body, tmp_path)
    assert outputs["classes"] == ["OptTriImageVQModel", "OptTriAudioVQModel"]
    assert torch.equal(outputs["image"], image.encode(pixel_values))
    assert torch.equal(outputs["audio"], audio.encode(features, mask))


@pytest.mark.parametrize("script", ["train_image_tokenizer", "train_audio_tokenizer"])
def test_tokenizer_training_scripts_run_and_log_every_step(tmp_path, script):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / f"{script}.py"
    spec = importlib.util.spec_from_file_location(script, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    extra = ["--num_griffin_lim_clips", "1"] if "audio" in script else []
    report = module.main(["--output_dir", str(tmp_path), "--max_steps", "4", "--num_train_rows", "32",
                          "--num_eval_rows", "4", "--log_every", "2", "--num_threads", "1", *extra])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and report["steps"] == 4
    assert [("window_codes_used_pct" in r) for r in records] == [True, True, False, True]
    assert all(np.isfinite(r["loss"]) for r in records)
    assert (tmp_path / "config.json").exists()


def test_a_model_built_outside_the_script_is_sized_to_the_tokenizers():
    """`OptTriForPreTraining.size_code_decoders`: a model built by hand gets the code decoders and MRC head the
    pre-training script gives it (it sizes the config first), and the code objectives run on the tokenizers' codes."""
    from conftest import tiny_batch, tiny_config
    from modeling_opt_tri import OptTriForPreTraining
    from modeling_opt_tri.training.codes import VQCodeTargets

    torch.manual_seed(0)
    image_vq = OptTriImageVQModel(tiny_image_config())  # 32 px / 4: an 8 x 8 code grid of 32 codes
    audio_vq = OptTriAudioVQModel(tiny_audio_config(num_mel_bins=16, codebook_size=16))
    batch = tiny_batch(4)
    codes = VQCodeTargets(image_vq, audio_vq)(batch)
    model = OptTriForPreTraining(tiny_config())
    with pytest.raises(ValueError, match=r"image_codes must be .* \(4, 4, 4\)"):  # unsized: a 4 x 4 code grid
        model(**batch, **codes, tasks=["dir"])
    rebuilt = model.size_code_decoders(image_tokenizer=image_vq, audio_tokenizer=audio_vq)
    assert rebuilt == ["audio_decoder", "audio_head", "image_decoder", "image_head", "mrc_head"]
    config = tiny_config()
    assert config.size_code_decoders(image_vq.config, audio_vq.config) == ["image_decoder_config", "audio_decoder_config"]
    script_built = OptTriForPreTraining(config)
    assert model.config.to_dict() == script_built.config.to_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in script_built.state_dict().items()}
    assert (model.config.image_decoder_config.grid_size, model.config.audio_decoder_config.codebook_size) == (8, 16)
    mrc = model(**batch, **codes, tasks=["mrc"], generator=torch.Generator().manual_seed(0)).mrc_loss
    out = model(**batch, **codes, tasks=["dir", "dar"], generator=torch.Generator().manual_seed(2))  # drops both
    assert all(torch.isfinite(loss) for loss in (mrc, out.dir_loss, out.dar_loss))
    assert model.size_code_decoders(image_vq, audio_vq) == []  # already sized: nothing is rebuilt
