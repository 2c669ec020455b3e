"""OptTriProcessor with the preprocessing of pretrained towers (issue 16, item 3 and "Processor parity").

Tiny processors of every supported family are built from their classes with small settings and saved locally (no
download). For each family, the tower input from `OptTriProcessor` must equal what that family's own processor gives
for the same inputs, exactly; audio is real FSDD speech (8 kHz), which `OptTriProcessor` resamples to 16 kHz with
our `resample`, and the family's processor is given the same resampled array.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    ASTFeatureExtractor,
    BertTokenizer,
    BitImageProcessor,
    CLIPImageProcessor,
    ConvNextImageProcessor,
    EncodecFeatureExtractor,
    RobertaTokenizer,
    SiglipImageProcessor,
    ViTImageProcessor,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Processor,
    WhisperFeatureExtractor,
)

from conftest import REPO_ROOT, require_fsdd, run_without_our_package
from modeling_opt_tri.feature_extraction_opt_tri import OptTriFeatureExtractor, resample
from modeling_opt_tri.image_processing_opt_tri import OptTriImageProcessor
from modeling_opt_tri.processing_opt_tri import AUDIO_FAMILIES, IMAGE_FAMILIES, OptTriProcessor

WORDS = ["a", "red", "circle", "blue", "square", "one", "two", "three", "zero", "nine"]
TEXTS = ["a red circle", None, "two blue square"]

IMAGE_PROCESSORS = {
    "clip": lambda: CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    "siglip": lambda: SiglipImageProcessor(size={"height": 24, "width": 24}),
    "dinov2": lambda: BitImageProcessor(
        size={"shortest_edge": 36}, crop_size={"height": 28, "width": 28}, do_convert_rgb=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ),
    "vit": lambda: ViTImageProcessor(size={"height": 32, "width": 32}),
}
AUDIO_EXTRACTORS = {
    "wav2vec2": lambda: Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True),  # HuBERT, WavLM
    "wav2vec2-base": lambda: Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False),
    "whisper": lambda: WhisperFeatureExtractor(feature_size=80, chunk_length=1),  # 1 s window: some clips are cut
    "whisper-128": lambda: WhisperFeatureExtractor(feature_size=128, chunk_length=1),
    "ast": lambda: ASTFeatureExtractor(num_mel_bins=32, max_length=48),  # 48 frames (0.5 s): most clips are cut
}


def _save(obj, folder: Path) -> str:
    obj.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Every tiny checkpoint folder: `text:bert`, `text:roberta`, `vision:<family>`, `audio:<family>`."""
    root = tmp_path_factory.mktemp("unimodal")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    chars = list("abcdefghijklmnopqrstuvwxyz") + ["Ġ"]
    bpe = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *chars, "Ġa", "re", "Ġre"])}
    paths = {
        "text:bert": _save(BertTokenizer(vocab=str(vocab)), root / "bert"),
        "text:roberta": _save(RobertaTokenizer(vocab=bpe, merges=[("Ġ", "a"), ("r", "e"), ("Ġ", "re")]), root / "ro"),
    }
    paths.update({f"vision:{name}": _save(make(), root / name) for name, make in IMAGE_PROCESSORS.items()})
    paths.update({f"audio:{name}": _save(make(), root / name) for name, make in AUDIO_EXTRACTORS.items()})
    return paths


@pytest.fixture(scope="module")
def speech():
    """Four FSDD recordings (8 kHz, float32 in [-1, 1]) of different lengths."""
    import soundfile as sf

    recordings = require_fsdd() / "recordings"
    waves = []
    for name in ("0_george_0.wav", "3_jackson_5.wav", "7_theo_12.wav", "9_nicolas_3.wav"):
        wave, rate = sf.read(recordings / name, dtype="float32")
        assert rate == 8000
        waves.append(wave)
    return waves


def _images():
    """RGB images of three sizes, PIL and array (the family processor gets them as given: ViT's and SigLIP's do not
    convert other modes to RGB; datasets rows reach the processor as RGB through `to_rgb`)."""
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)),
        rng.integers(0, 256, (48, 36, 3), dtype=np.uint8),  # HWC array
    ]


@pytest.mark.parametrize("family", sorted(IMAGE_PROCESSORS))
def test_image_family_parity(folders, family):
    """`pixel_values` equal the family's own processor on the same images, bit for bit (PIL backend)."""
    processor = OptTriProcessor.from_unimodal_pretrained(text=folders["text:bert"], vision=folders[f"vision:{family}"])
    own = IMAGE_PROCESSORS[family]()
    assert type(processor.image_processor) is type(own)
    assert type(own).__name__.endswith("Pil")  # no torchvision here: transformers picks the PIL backend
    images = _images()
    batch = processor(images=images, return_tensors="pt")
    expected = torch.from_numpy(np.asarray(own(images, return_tensors="np")["pixel_values"]))
    assert batch["pixel_values"].dtype == torch.float32
    torch.testing.assert_close(batch["pixel_values"], expected, rtol=0, atol=0)
    assert batch["image_mask"].tolist() == [1, 1, 1]


def _own_audio(name: str, clips_16k: list[np.ndarray]):
    """The family's own processor on 16 kHz clips, called as OptTriProcessor calls it; (tensor, mask or None)."""
    extractor = AUDIO_EXTRACTORS[name]()
    family = AUDIO_FAMILIES[type(extractor).__name__]
    out = extractor(clips_16k, sampling_rate=16000, return_tensors="np", **dict(family.call_kwargs))
    return np.asarray(out[family.source_key]), out.get("attention_mask"), family


@pytest.mark.parametrize("name", sorted(AUDIO_EXTRACTORS))
def test_audio_family_parity_on_fsdd(folders, speech, name):
    """The tower input from 8 kHz FSDD speech equals the family's own extractor on the same 16 kHz array (our
    `resample` of the whole clip): exactly, although OptTriProcessor resamples only what the family keeps."""
    processor = OptTriProcessor.from_unimodal_pretrained(text=folders["text:roberta"], audio=folders[f"audio:{name}"])
    batch = processor(audio=speech, sampling_rate=8000, return_tensors="np")
    clips_16k = [resample(wave, 8000, 16000) for wave in speech]
    expected, mask, family = _own_audio(name, clips_16k)
    np.testing.assert_array_equal(batch[family.input_key], expected)
    assert batch[family.input_key].dtype == np.float32
    np.testing.assert_array_equal(batch["audio_mask"], [1, 1, 1, 1])
    if mask is None:
        assert "audio_attention_mask" not in batch and "audio_attention_mask" not in processor.model_input_names
    else:
        np.testing.assert_array_equal(batch["audio_attention_mask"], mask)
        assert batch["audio_attention_mask"].dtype == np.int64
    if name.startswith("whisper"):  # asking Whisper for its frame mask does not change its features
        plain = AUDIO_EXTRACTORS[name]()(clips_16k, sampling_rate=16000, return_tensors="np")["input_features"]
        np.testing.assert_array_equal(batch["input_features"], plain)
        assert batch["input_features"].shape[1] == AUDIO_EXTRACTORS[name]().feature_size


def test_audio_shapes_and_keys(folders, speech):
    """Documented layouts: wav2vec2 `[B, N]` samples, Whisper `[B, n_mels, frames]`, AST `[B, frames, n_mels]`."""
    shapes = {}
    for name in ("wav2vec2", "whisper", "ast"):
        processor = OptTriProcessor.from_unimodal_pretrained(text=folders["text:bert"], audio=folders[f"audio:{name}"])
        batch = processor(audio=speech[:2], sampling_rate=8000, return_tensors="pt")
        shapes[name] = {key: tuple(value.shape) for key, value in batch.items()}
    longest = max(len(resample(wave, 8000, 16000)) for wave in speech[:2])
    assert shapes["wav2vec2"] == {
        "input_values": (2, longest), "audio_attention_mask": (2, longest), "audio_mask": (2,)
    }
    assert shapes["whisper"] == {"input_features": (2, 80, 100), "audio_attention_mask": (2, 100), "audio_mask": (2,)}
    assert shapes["ast"] == {"input_features": (2, 48, 32), "audio_mask": (2,)}


def test_resampler_against_a_reference_method(folders, speech):
    """Our polyphase `resample` (scipy `resample_poly`) against an FFT resampler (`scipy.signal.resample`), through the
    wav2vec2 and Whisper processors. The methods differ in their anti-alias filters and at the clip edges (the FFT
    method wraps around), not in the speech band: bounds on the relative RMS of the waveforms and on the mean
    difference of the tower inputs; the largest differences are printed (`-s`)."""
    from scipy.signal import resample as fft_resample

    reference = [fft_resample(wave, 2 * len(wave)).astype(np.float32) for wave in speech]
    ours = [resample(wave, 8000, 16000) for wave in speech]
    assert [len(clip) for clip in ours] == [len(clip) for clip in reference]
    relative = [float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2))) for a, b in zip(ours, reference)]
    assert max(relative) < 0.02, relative
    mine, _, _ = _own_audio("wav2vec2", ours)
    theirs, _, _ = _own_audio("wav2vec2", reference)
    waveform = np.abs(mine - theirs)
    assert 0 < waveform.mean() < 0.01  # input_values have unit variance
    mine, _, _ = _own_audio("whisper", ours)
    theirs, _, _ = _own_audio("whisper", reference)
    extractor = AUDIO_EXTRACTORS["whisper"]()
    centres = np.linspace(0, 8000, extractor.mel_filters.shape[0])[extractor.mel_filters.argmax(0)]
    speech_band = np.abs(mine - theirs)[:, centres < 3500]  # FSDD is 8 kHz: nothing above 4 kHz but filter leakage
    assert 0 < speech_band.mean() < 0.002 and np.abs(mine - theirs).mean() < 0.01
    print(
        f"resample vs FFT: waveform relative RMS {max(relative):.3g}; wav2vec2 input_values max {waveform.max():.3g} "
        f"mean {waveform.mean():.3g}; Whisper log-mel (< 3.5 kHz) max {speech_band.max():.3g} mean "
        f"{speech_band.mean():.3g}, all bins max {np.abs(mine - theirs).max():.3g}"
    )


def test_batch_with_missing_modalities(folders, speech):
    """Rows without an image / audio / text get zeros and a 0 in their mask; the other rows equal the family's own
    output on those rows alone (wav2vec2-base normalises over the padded batch, so this checks the padding too)."""
    processor = OptTriProcessor.from_unimodal_pretrained(
        text=folders["text:roberta"], vision=folders["vision:clip"], audio=folders["audio:wav2vec2-base"]
    )
    images = _images()
    batch = processor(
        text=TEXTS, images=[images[0], None, images[2]], audio=[None, speech[1], speech[3]], sampling_rate=8000,
        return_tensors="np",
    )
    assert batch["image_mask"].tolist() == [1, 0, 1] and batch["audio_mask"].tolist() == [0, 1, 1]
    assert batch["attention_mask"][1].sum() == 0 and batch["attention_mask"][0].sum() > 0
    own_pixels = IMAGE_PROCESSORS["clip"]()([images[0], images[2]], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(batch["pixel_values"][[0, 2]], own_pixels)
    assert not batch["pixel_values"][1].any()
    expected, _, _ = _own_audio("wav2vec2-base", [resample(speech[1], 8000, 16000), resample(speech[3], 8000, 16000)])
    np.testing.assert_array_equal(batch["input_values"][[1, 2]], expected)
    assert not batch["input_values"][0].any() and "audio_attention_mask" not in batch
    nothing = processor(audio=[None, None], sampling_rate=8000)
    assert nothing["audio_mask"].tolist() == [0, 0] and not nothing["input_values"].any()
    with pytest.raises(ValueError, match="batch sizes of the modalities differ: text has 3, audio has 2 rows"):
        processor(text=TEXTS, audio=speech[:2], sampling_rate=8000)


COMBINATIONS = [
    ("roberta", "clip", "whisper"),
    ("bert", "siglip", "wav2vec2"),
    ("bert", "dinov2", "ast"),
    ("roberta", "vit", None),  # audio omitted: ours
]


def _settings(sub_processor) -> dict:
    return {key: value for key, value in sub_processor.to_dict().items() if key != "auto_map"}


def _inputs(speech):
    images = _images()
    return dict(text=TEXTS, images=[images[0], None, images[2]], audio=[speech[0], speech[2], None], sampling_rate=8000)


@pytest.mark.parametrize("text,vision,audio", COMBINATIONS)
def test_save_and_reload(folders, speech, tmp_path, text, vision, audio):
    """save_pretrained / from_pretrained keep every family's class and settings, and give identical outputs; so
    does the loader older transformers versions call (`_get_arguments_from_pretrained`)."""
    processor = OptTriProcessor.from_unimodal_pretrained(
        text=folders[f"text:{text}"], vision=folders[f"vision:{vision}"],
        audio=None if audio is None else folders[f"audio:{audio}"],
    )
    processor.save_pretrained(tmp_path)
    nested = json.loads((tmp_path / "processor_config.json").read_text())
    assert set(nested) >= {"image_processor", "feature_extractor"}
    reloaded = OptTriProcessor.from_pretrained(tmp_path)
    legacy = OptTriProcessor._get_arguments_from_pretrained(tmp_path)
    for loaded in (reloaded, OptTriProcessor(*legacy)):
        for slot in ("image_processor", "feature_extractor", "tokenizer"):
            assert type(getattr(loaded, slot)) is type(getattr(processor, slot)), slot
        for slot in ("image_processor", "feature_extractor"):  # save_pretrained adds the processor's auto_map
            assert _settings(getattr(loaded, slot)) == _settings(getattr(processor, slot)), slot
        expected, got = processor(**_inputs(speech)), loaded(**_inputs(speech))
        assert sorted(got) == sorted(expected)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    if audio is None:
        assert isinstance(reloaded.feature_extractor, OptTriFeatureExtractor)


def test_preset_and_defaults_fill_omitted_parts(folders):
    preset = REPO_ROOT / "configuration" / "tiny"
    from_preset = OptTriProcessor.from_unimodal_pretrained(preset=preset, vision=folders["vision:siglip"])
    saved = OptTriProcessor.from_pretrained(preset)
    assert from_preset.tokenizer.get_vocab() == saved.tokenizer.get_vocab()
    assert from_preset.feature_extractor.to_dict() == saved.feature_extractor.to_dict()
    assert type(from_preset.image_processor).__name__ == "SiglipImageProcessorPil"
    defaults = OptTriProcessor.from_unimodal_pretrained(text=folders["text:bert"])
    assert isinstance(defaults.image_processor, OptTriImageProcessor)
    assert isinstance(defaults.feature_extractor, OptTriFeatureExtractor)


def test_composite_checkpoint_folder(folders, speech, tmp_path):
    """A `Wav2Vec2Processor` folder (feature extractor + CTC tokenizer, one nested processor_config.json) gives
    its feature extractor to `audio=`."""
    (tmp_path / "vocab.json").write_text(json.dumps({"<pad>": 0, "<unk>": 1, "|": 2, "a": 3, "b": 4}))
    composite = Wav2Vec2Processor(
        feature_extractor=AUDIO_EXTRACTORS["wav2vec2"](), tokenizer=Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"))
    )
    composite.save_pretrained(tmp_path / "ctc")
    processor = OptTriProcessor.from_unimodal_pretrained(text=folders["text:bert"], audio=tmp_path / "ctc")
    expected, _, _ = _own_audio("wav2vec2", [resample(speech[0], 8000, 16000)])
    np.testing.assert_array_equal(processor(audio=[speech[0]], sampling_rate=8000)["input_values"].numpy(), expected)


def test_legacy_hub_preprocessor_config(folders, tmp_path):
    """A `preprocessor_config.json` in the format of the original CLIP checkpoints on the Hub (`CLIPFeatureExtractor`,
    integer `size` / `crop_size`) loads as the CLIP family, processes like the class built directly, and round-trips."""
    legacy = {
        "crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True, "resample": 3, "size": 32,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "preprocessor_config.json").write_text(json.dumps(legacy))
    processor = OptTriProcessor.from_unimodal_pretrained(text=folders["text:bert"], vision=tmp_path / "clip")
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
    expected = IMAGE_PROCESSORS["clip"]()(_images(), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(processor(images=_images())["pixel_values"], expected, rtol=0, atol=0)
    processor.save_pretrained(tmp_path / "saved")
    reloaded = OptTriProcessor.from_pretrained(tmp_path / "saved")
    torch.testing.assert_close(reloaded(images=_images())["pixel_values"], expected, rtol=0, atol=0)


def test_clear_errors(folders, tmp_path, speech):
    bert = folders["text:bert"]
    with pytest.raises(ValueError, match=r"vision='.*nowhere' is not a checkpoint folder \(no such directory\)"):
        OptTriProcessor.from_unimodal_pretrained(text=bert, vision=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"audio='.*empty' is not a checkpoint folder .* none of preprocessor_config"):
        OptTriProcessor.from_unimodal_pretrained(text=bert, audio=tmp_path / "empty")
    with pytest.raises(ValueError, match=r"text='.*vocab.txt' is not a checkpoint folder"):
        OptTriProcessor.from_unimodal_pretrained(text=str(Path(bert).parent / "vocab.txt"))
    with pytest.raises(ValueError, match="text= is required"):
        OptTriProcessor.from_unimodal_pretrained(vision=folders["vision:clip"])
    with pytest.raises(ValueError, match=r"unknown arguments \['size'\]"):
        OptTriProcessor.from_unimodal_pretrained(text=bert, size=3)
    ConvNextImageProcessor().save_pretrained(tmp_path / "convnext")
    with pytest.raises(ValueError, match="ConvNextImageProcessor.* is not a supported vision family; supported: "
                                         "OptTriImageProcessor .*CLIPImageProcessor .*SiglipImageProcessor"):
        OptTriProcessor.from_unimodal_pretrained(text=bert, vision=tmp_path / "convnext")
    with pytest.raises(ValueError, match=r"audio='.*convnext': AutoFeatureExtractor could not load it"):
        OptTriProcessor.from_unimodal_pretrained(text=bert, audio=tmp_path / "convnext")  # an image processor folder
    EncodecFeatureExtractor().save_pretrained(tmp_path / "encodec")
    with pytest.raises(ValueError, match="EncodecFeatureExtractor is not a supported audio family; supported: "
                                         "OptTriFeatureExtractor .*WhisperFeatureExtractor .*ASTFeatureExtractor .*"
                                         "Wav2Vec2FeatureExtractor"):
        OptTriProcessor.from_unimodal_pretrained(text=bert, audio=tmp_path / "encodec")
    assert set(IMAGE_FAMILIES) >= {"CLIPImageProcessor", "SiglipImageProcessor", "BitImageProcessor"}
    vit = OptTriProcessor.from_unimodal_pretrained(text=bert, vision=folders["vision:vit"])
    with pytest.raises(ValueError, match="images: ViTImageProcessorPil rejected the input: .*convert them first"):
        vit(images=[Image.new("L", (20, 20))])  # ViT's processor does not convert grayscale to RGB
    processor = OptTriProcessor.from_unimodal_pretrained(text=bert, audio=folders["audio:whisper"])
    with pytest.raises(ValueError, match="audio was given without sampling_rate"):
        processor(audio=speech[:1])
    with pytest.raises(ValueError, match=r"audio\[1\]: audio must be mono"):
        processor(audio=[speech[0], np.stack([speech[1], speech[1]], axis=1)], sampling_rate=8000)
    with pytest.raises(ValueError, match="sampling_rate 8 Hz is outside the supported range"):
        processor(audio=speech[:1], sampling_rate=8)


REMOTE_BODY = """
import numpy as np, torch
from transformers import AutoProcessor
processor = AutoProcessor.from_pretrained("{folder}", trust_remote_code=True)
raw = np.load("{inputs}")
images = [raw["image0"], None, raw["image2"]]
batch = processor(text={texts!r}, images=images, audio=[raw["audio0"], raw["audio1"], None], sampling_rate=8000)
torch.save({{"batch": dict(batch), "classes": [type(processor).__module__, type(processor.image_processor).__name__,
            type(processor.feature_extractor).__name__]}}, "outputs.pt")
"""


@pytest.mark.slow
def test_trust_remote_code_round_trip(folders, speech, tmp_path):
    """A processor with CLIP + Whisper + RoBERTa preprocessing loads through AutoProcessor(trust_remote_code=True) in
    a fresh process without our package, and gives identical outputs."""
    processor = OptTriProcessor.from_unimodal_pretrained(
        text=folders["text:roberta"], vision=folders["vision:clip"], audio=folders["audio:whisper"]
    )
    folder = tmp_path / "saved"
    processor.save_pretrained(folder)
    images = _images()
    np.savez(
        tmp_path / "inputs.npz", image0=np.asarray(images[0]), image2=images[2], audio0=speech[0], audio1=speech[2]
    )
    body = REMOTE_BODY.format(folder=folder, inputs=tmp_path / "inputs.npz", texts=TEXTS)
    result = run_without_our_package(body, tmp_path)
    assert result["classes"][0].startswith("transformers_modules.")
    assert result["classes"][1:] == ["CLIPImageProcessorPil", "WhisperFeatureExtractor"]
    expected = processor(
        text=TEXTS, images=[np.asarray(images[0]), None, images[2]], audio=[speech[0], speech[2], None],
        sampling_rate=8000,
    )
    assert sorted(result["batch"]) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(result["batch"][key], expected[key], rtol=0, atol=0)
