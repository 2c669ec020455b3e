"""OPT-Tri model configuration.

`OptTriConfig` nests one configuration per component:

- `text_config`: any `transformers` text encoder config (a [`BertConfig`] by default; RoBERTa and other BERT-like
  encoders work too), so that the text encoder can start from an existing checkpoint.
- `vision_config`: a [`ViTConfig`] (ViT over image patches; no object detector) or another supported vision family.
- `audio_config`: an [`OptTriAudioConfig`] (log-mel patches through a patch stem and a pre-norm transformer) or another
  supported audio family (AST, wav2vec2, HuBERT, WavLM, Whisper).
- `cross_modal_config`: an [`OptTriFusionConfig`] (the single-stream cross-modal encoder over
  `[CLS] text | image | audio`). It is not called `fusion_config`: transformers >= 5.24 reserves
  `config.fusion_config` for its runtime kernel fusions, and `from_pretrained` fails on a config with that attribute.
  `fusion_config=` is still accepted as an input alias (older `config.json` files).

Plus the settings of the pre-training objectives (see `OptTriForPreTraining`).
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from typing import Any

from transformers import AutoConfig, BertConfig, PretrainedConfig, ViTConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)


def _check_positive_ints(config: PretrainedConfig, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got {value!r}")


def _check_heads(config: PretrainedConfig) -> None:
    if config.hidden_size % config.num_attention_heads != 0:
        raise ValueError(
            f"{type(config).__name__}: hidden_size ({config.hidden_size}) must be divisible by "
            f"num_attention_heads ({config.num_attention_heads})"
        )


def _refuse_other_model_type(cls: type[PretrainedConfig], config_dict: dict[str, Any]) -> None:
    """Raise when `config_dict` (e.g. a checkpoint's `config.json`) is of another model type than `cls`.

    `PretrainedConfig.from_pretrained` only logs a warning there and then builds a default config, so that
    `OptTriModel.from_pretrained(<a BERT folder>)` would silently return a randomly initialised model.
    """
    model_type = config_dict.get("model_type") if isinstance(config_dict, dict) else None
    if model_type is not None and model_type != cls.model_type:
        raise ValueError(
            f"Cannot build {cls.__name__} (model_type {cls.model_type!r}) from a config of model_type "
            f"{model_type!r}: the checkpoint is not an OPT-Tri {cls.model_type!r} checkpoint. To start an OPT-Tri "
            "encoder from a BERT/ViT/AST checkpoint, use OptTriForPreTraining.from_unimodal_pretrained(text=..., "
            "vision=..., audio=...)."
        )


def _refuse_missing_path(name: Any) -> None:
    """Raise `FileNotFoundError` for a path that exists neither locally nor can be a Hub repo id (huggingface_hub
    would only say "Repo id must be in the form 'repo_name' or 'namespace/repo_name'")."""
    if not isinstance(name, (str, os.PathLike)) or os.path.exists(name):
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(os.fspath(name))
    except HFValidationError:
        raise FileNotFoundError(
            f"{os.fspath(name)!r} does not exist: it is neither a local checkpoint folder nor a valid Hub model id"
        ) from None


#: BERT's special ids, the defaults wherever a vocabulary holds them.
BERT_SPECIAL_IDS: dict[str, int] = {"pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102, "mask_token_id": 103}
#: The defaults in a vocabulary too small for BERT's ids (a test vocabulary, a custom tokenizer): the first ids.
SMALL_VOCAB_SPECIAL_IDS: dict[str, int] = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "mask_token_id": 3}


def default_special_ids(vocab_size: Any) -> dict[str, int]:
    """The default `pad/bos/eos/mask_token_id` of a text vocabulary of `vocab_size` ids: BERT's when it holds them
    (`vocab_size > 103`), else the first ids (`0`..`3`), so that a default config always passes its own checks.
    Explicit ids (and every saved config, which carries them) are kept as given."""
    if isinstance(vocab_size, int) and not isinstance(vocab_size, bool) and vocab_size > max(BERT_SPECIAL_IDS.values()):
        return dict(BERT_SPECIAL_IDS)
    return dict(SMALL_VOCAB_SPECIAL_IDS)


class OptTriTransformerConfig(PretrainedConfig):
    r"""
    The geometry shared by OPT-Tri's own pre-norm transformer encoders ([`OptTriAudioConfig`] and
    [`OptTriFusionConfig`] add their own settings to it).

    Args:
        hidden_size (`int`, defaults to 768), num_hidden_layers (`int`, defaults to 12), num_attention_heads (`int`,
            defaults to 12), intermediate_size (`int`, defaults to 3072): transformer geometry.
        hidden_act (`str`, defaults to `"gelu"`), layer_norm_eps (`float`, defaults to 1e-12), hidden_dropout_prob,
            attention_probs_dropout_prob (`float`, default to 0.0): as in BERT/ViT.
        initializer_range (`float`, defaults to 0.02): std of the normal initialiser.
    """

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        _check_positive_ints(self, ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"))
        _check_heads(self)


class OptTriAudioConfig(OptTriTransformerConfig):
    r"""
    Configuration of the OPT-Tri audio encoder: log-mel frames are cut into patches of `patch_frames` frames by a
    linear (strided convolution) stem, a learned `[CLS]` token and learned positions are added, and a pre-norm
    transformer encodes them.

    Args:
        num_mel_bins (`int`, defaults to 80): number of mel bins of the input features (the feature extractor's
            `feature_size`).
        patch_frames (`int`, defaults to 4): frames per audio token (10 ms hop -> one token per 40 ms).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: transformer geometry.
        hidden_act (`str`, defaults to `"gelu"`), layer_norm_eps, hidden_dropout_prob, attention_probs_dropout_prob:
            as in BERT/ViT.
        max_position_embeddings (`int`, defaults to 256): the most audio tokens (excluding `[CLS]`) one clip may have.
        initializer_range (`float`, defaults to 0.02): std of the normal initialiser.
    """

    model_type = "opt_tri_audio"
    base_config_key = "audio_config"

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        _refuse_other_model_type(cls, config_dict)
        return super().from_dict(config_dict, **kwargs)

    def __init__(
        self,
        num_mel_bins: int = 80,
        patch_frames: int = 4,
        max_position_embeddings: int = 256,
        num_hidden_layers: int = 12,
        **kwargs,
    ):
        self.num_mel_bins = num_mel_bins
        self.patch_frames = patch_frames
        self.max_position_embeddings = max_position_embeddings
        super().__init__(num_hidden_layers=num_hidden_layers, **kwargs)
        _check_positive_ints(self, ("num_mel_bins", "patch_frames", "max_position_embeddings"))


class OptTriFusionConfig(OptTriTransformerConfig):
    r"""
    Configuration of the OPT-Tri cross-modal encoder: one pre-norm transformer over the concatenation
    `[CLS] text | image | audio`, each part projected to `hidden_size` and tagged with a modality-type embedding.

    Args:
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: transformer geometry.
        hidden_act, layer_norm_eps, hidden_dropout_prob, attention_probs_dropout_prob: as in BERT/ViT.
        initializer_range (`float`, defaults to 0.02): std of the normal initialiser.
    """

    model_type = "opt_tri_fusion"
    base_config_key = "cross_modal_config"

    def __init__(self, num_hidden_layers: int = 6, **kwargs):
        super().__init__(num_hidden_layers=num_hidden_layers, **kwargs)


class OptTriTextDecoderConfig(OptTriTransformerConfig):
    r"""
    Configuration of the OPT-Tri text decoder: a causal pre-norm transformer with cross-attention to the cross-modal
    encoder's states, used for captioning, ASR and text reconstruction (DTR), compatible with `generate()`.

    Args:
        vocab_size (`int`, defaults to 30522): the text vocabulary (shared with the text encoder's tokenizer).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: transformer geometry.
        hidden_act, layer_norm_eps, hidden_dropout_prob, attention_probs_dropout_prob: as in BERT.
        max_position_embeddings (`int`, defaults to 128): the longest sequence the decoder generates.
        bos_token_id / eos_token_id / pad_token_id: start (`[CLS]`), end (`[SEP]`) and padding ids. By default
            BERT's `101` / `102` / `0` when the vocabulary holds them, else `1` / `2` / `0` (see
            `default_special_ids`).
        initializer_range (`float`, defaults to 0.02): std of the normal initialiser.
    """

    model_type = "opt_tri_text_decoder"
    base_config_key = "text_decoder_config"

    def __init__(
        self,
        vocab_size: int = 30522,
        num_hidden_layers: int = 6,
        max_position_embeddings: int = 128,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        defaults = default_special_ids(vocab_size)
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.bos_token_id = defaults["bos_token_id"] if bos_token_id is None else bos_token_id
        self.eos_token_id = defaults["eos_token_id"] if eos_token_id is None else eos_token_id
        self.pad_token_id = defaults["pad_token_id"] if pad_token_id is None else pad_token_id
        self.use_cache = kwargs.pop("use_cache", True)
        super().__init__(num_hidden_layers=num_hidden_layers, **kwargs)
        _check_positive_ints(self, ("vocab_size", "max_position_embeddings"))


#: Defaults of the code decoders by modality: the codebook sizes are the `OptTriImageVQConfig` /
#: `OptTriAudioVQConfig` defaults, and an audio clip has at most 256 codes (10.24 s at 4 frames of 10 ms per code).
CODE_DECODER_DEFAULTS: dict[str, dict[str, int]] = {
    "image": {"codebook_size": 8192, "grid_size": 28},  # 224 px with 8x downsampling
    "audio": {"codebook_size": 1024, "num_codes": 256},
}


class OptTriCodeDecoderConfig(OptTriTransformerConfig):
    r"""
    Configuration of an OPT-Tri code decoder: a causal pre-norm transformer with cross-attention to the cross-modal
    encoder's states that writes the discrete codes of a VQ tokenizer ([`OptTriImageVQModel`] for images,
    [`OptTriAudioVQModel`] for audio), used by [`OptTriForTextToImage`] and [`OptTriForTextToAudio`].

    Vocabulary: ids `0 .. codebook_size - 1` are the tokenizer's codes, unshifted (a code id *is* the codebook index),
    followed by three special ids: `bos_token_id = codebook_size` (start of every sequence),
    `eos_token_id = codebook_size + 1` (end of audio; never used for images) and `pad_token_id = codebook_size + 2`
    (after the end of a shorter clip in a batch). `vocab_size = codebook_size + 3`. Generation only ever samples real
    codes (and, for audio, the end code), never BOS or PAD.

    Sequence layout:

    - `modality="image"`: exactly `num_codes = grid_size ** 2` codes, the `(grid_size, grid_size)` code grid of one
      image read in raster order (row by row). There is no end code: an image always has all its codes.
    - `modality="audio"`: a variable number of codes, one per `frames_per_code` log-mel frames, followed by the end
      code (`eos_token_id`). `num_codes` is the longest clip in codes; generation stops there if no end code came.

    Args:
        modality (`str`, defaults to `"image"`): `"image"` (fixed-size code grid) or `"audio"` (variable length).
        codebook_size (`int`, *optional*): number of codes `K` of the VQ tokenizer; defaults to 8192 for images and
            1024 for audio (the VQ configs' defaults).
        grid_size (`int`, *optional*): images only: side of the code grid (`image_size / downsample` of the
            tokenizer); defaults to `sqrt(num_codes)` when `num_codes` is given, else 28 (224 px, 8x downsampling).
        num_codes (`int`, *optional*): codes per image (`grid_size ** 2`, the default), or the most codes per audio
            clip (defaults to 256).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: transformer geometry.
        hidden_act, layer_norm_eps, hidden_dropout_prob, attention_probs_dropout_prob: as in BERT.
        max_position_embeddings (`int`, *optional*): learned positions; at least (and by default) `num_codes + 1`
            (the BOS token plus the codes).
        initializer_range (`float`, defaults to 0.02): std of the normal initialiser.
        use_cache (`bool`, defaults to `True`): keep a self-attention KV cache while generating.
    """

    model_type = "opt_tri_code_decoder"
    NUM_SPECIAL_TOKENS = 3

    def __init__(
        self,
        modality: str = "image",
        codebook_size: int | None = None,
        grid_size: int | None = None,
        num_codes: int | None = None,
        num_hidden_layers: int = 6,
        max_position_embeddings: int | None = None,
        **kwargs,
    ):
        codebook_size, grid_size, num_codes = _code_layout(modality, codebook_size, grid_size, num_codes)
        self.modality = modality
        self.codebook_size = codebook_size
        self.grid_size = grid_size
        self.num_codes = num_codes
        self.use_cache = kwargs.pop("use_cache", True)
        _check_positive_ints(self, ("codebook_size", "num_codes"))
        if codebook_size < 2:
            raise ValueError(f"OptTriCodeDecoderConfig.codebook_size must be at least 2, got {codebook_size}")
        self.max_position_embeddings = num_codes + 1 if max_position_embeddings is None else max_position_embeddings
        # The special ids and the vocabulary follow from codebook_size; saved configs carry them, so check they agree.
        derived = {
            "vocab_size": codebook_size + self.NUM_SPECIAL_TOKENS,
            "bos_token_id": codebook_size,
            "eos_token_id": codebook_size + 1,
            "pad_token_id": codebook_size + 2,
        }
        for name, value in derived.items():
            given = kwargs.pop(name, None)
            if given is not None and given != value:
                raise ValueError(
                    f"OptTriCodeDecoderConfig.{name} follows from codebook_size={codebook_size} and must be {value} "
                    f"(codes 0..{codebook_size - 1}, then BOS, EOS, PAD); got {given!r}"
                )
            setattr(self, name, value)
        super().__init__(num_hidden_layers=num_hidden_layers, **kwargs)
        _check_positive_ints(self, ("max_position_embeddings",))
        if self.max_position_embeddings < num_codes + 1:
            raise ValueError(
                f"OptTriCodeDecoderConfig.max_position_embeddings ({self.max_position_embeddings}) must be at least "
                f"num_codes + 1 = {num_codes + 1} (the BOS token plus every code)"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"OptTriCodeDecoderConfig.{name} must be a float in [0, 1), got {value!r}")


def _code_layout(modality: str, codebook_size: int | None, grid_size: int | None, num_codes: int | None):
    """`(codebook_size, grid_size, num_codes)` of a code decoder, the defaults filled in (see
    `OptTriCodeDecoderConfig`); raise `ValueError` for a modality, grid or code count that cannot be."""
    if modality not in CODE_DECODER_DEFAULTS:
        raise ValueError(f"OptTriCodeDecoderConfig.modality must be 'image' or 'audio', got {modality!r}")
    defaults = CODE_DECODER_DEFAULTS[modality]
    codebook_size = defaults["codebook_size"] if codebook_size is None else codebook_size
    if modality == "audio":
        if grid_size is not None:
            raise ValueError("OptTriCodeDecoderConfig.grid_size is for images; audio code sequences are 1-D")
        return codebook_size, None, defaults["num_codes"] if num_codes is None else num_codes
    if grid_size is None:
        if num_codes is None:
            grid_size = defaults["grid_size"]
        elif isinstance(num_codes, int) and num_codes > 0 and math.isqrt(num_codes) ** 2 == num_codes:
            grid_size = math.isqrt(num_codes)
        else:
            raise ValueError(
                f"OptTriCodeDecoderConfig: an image has a square code grid, so num_codes must be a square "
                f"(grid_size ** 2); got num_codes={num_codes!r}. Set grid_size instead."
            )
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size <= 0:
        raise ValueError(f"OptTriCodeDecoderConfig.grid_size must be a positive int, got {grid_size!r}")
    num_codes = grid_size**2 if num_codes is None else num_codes
    if num_codes != grid_size**2:
        raise ValueError(
            f"OptTriCodeDecoderConfig: num_codes ({num_codes}) must be grid_size ** 2 = {grid_size ** 2} "
            "(one code per cell of the image's code grid)"
        )
    return codebook_size, grid_size, num_codes


class OptTriImageDecoderConfig(OptTriCodeDecoderConfig):
    r"""
    [`OptTriCodeDecoderConfig`] of the image code decoder (`modality="image"`), `OptTriConfig.image_decoder_config`.
    A class of its own so that `OptTriImageDecoderConfig.from_pretrained(<a saved OptTriConfig>)` reads the image
    decoder's sub-config (`base_config_key`), not the audio decoder's.
    """

    base_config_key = "image_decoder_config"

    def __init__(self, modality: str = "image", **kwargs):
        super().__init__(modality=modality, **kwargs)


class OptTriAudioDecoderConfig(OptTriCodeDecoderConfig):
    r"""
    [`OptTriCodeDecoderConfig`] of the audio code decoder (`modality="audio"`), `OptTriConfig.audio_decoder_config`
    (see [`OptTriImageDecoderConfig`] for why it is a class of its own).
    """

    base_config_key = "audio_decoder_config"

    def __init__(self, modality: str = "audio", **kwargs):
        super().__init__(modality=modality, **kwargs)


CODE_DECODER_CONFIG_CLASSES: dict[str, type[OptTriCodeDecoderConfig]] = {
    "image": OptTriImageDecoderConfig,
    "audio": OptTriAudioDecoderConfig,
}

#: Code decoder settings that follow from the codebook and the code count (`OptTriConfig.size_code_decoders`
#: recomputes them), and the bookkeeping keys of a config dict.
_DERIVED_CODE_DECODER_KEYS = frozenset(
    ("model_type", "transformers_version", "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id",
     "max_position_embeddings", "num_codes", "grid_size")
)


#: Pre-training objectives and their default loss weights. See `OptTriForPreTraining` for what each one is.
PRETRAINING_OBJECTIVES: dict[str, float] = {
    "mlm": 1.0,  # masked language modelling (15%, 80/10/10)
    "mrfr": 1.0,  # masked image patch regression
    "mafr": 1.0,  # masked audio frame regression
    "mac": 1.0,  # masked audio frame contrastive (InfoNCE against the true frame)
    "contrastive": 1.0,  # contrastive alignment of every modality pair
    "itm": 1.0,  # pairwise matching (text-image, text-audio, image-audio) with hard negatives
    "tri_matching": 1.0,  # 5-way tri-modal matching
    "wra": 0.1,  # word-region alignment by optimal transport (IPOT)
    "dtr": 1.0,  # text reconstruction through the text decoder from the other modalities (text dropped)
    # The objectives below predict VQ codes, so they need the image / audio tokenizers' codes as inputs (the
    # pre-training script computes them with `--image_tokenizer` / `--audio_tokenizer`, which switch them on).
    "mrc": 0.0,  # masked region classification: the VQ codes under each masked image patch
    "mrc_kl": 0.0,  # MRC-kl: KL divergence to the tokenizer's soft code assignments of the masked patches
    "dir": 0.0,  # image reconstruction: the image code decoder writes a dropped image's codes
    "dar": 0.0,  # audio reconstruction: the audio code decoder writes a dropped clip's codes
}
CODE_OBJECTIVES: tuple[str, ...] = ("mrc", "mrc_kl", "dir", "dar")


def _as_sub_config(value: Any, default_cls: type[PretrainedConfig], name: str) -> PretrainedConfig:
    if value is None:
        return default_cls()
    if isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", None)
        if model_type is None or model_type == default_cls.model_type:
            return default_cls(**value)
        return AutoConfig.for_model(model_type, **value)
    raise TypeError(f"{name} must be a dict or a PretrainedConfig, got {type(value).__name__}")


class OptTriConfig(PretrainedConfig):
    r"""
    Configuration of an OPT-Tri model ([`OptTriModel`], [`OptTriForPreTraining`], ...).

    Args:
        text_config (`dict` or `PretrainedConfig`, *optional*): text encoder config; a [`BertConfig`] by default.
            A dict with a `model_type` key builds that type through `AutoConfig`.
        vision_config (`dict` or `PretrainedConfig`, *optional*): vision tower config; a [`ViTConfig`] by default, or
            a CLIP vision, SigLIP vision or DINOv2 config (`VISION_TOWERS` in `modeling_opt_tri_towers.py`).
        audio_config (`dict` or `PretrainedConfig`, *optional*): audio tower config; an [`OptTriAudioConfig`] by
            default, or an AST, wav2vec2, HuBERT, WavLM or Whisper config (`AUDIO_TOWERS`; Whisper: its encoder).
        cross_modal_config (`dict` or [`OptTriFusionConfig`], *optional*): cross-modal encoder config (`fusion_config`
            is accepted as an alias of this argument, never stored under that name).
        text_decoder_config (`dict` or [`OptTriTextDecoderConfig`], *optional*): text decoder config (captioning,
            ASR, DTR); its vocabulary must be the text encoder's.
        image_decoder_config (`dict` or [`OptTriCodeDecoderConfig`], *optional*): the image code decoder of
            [`OptTriForTextToImage`]. By default: `modality="image"`, 8192 codes, a code grid of
            `vision_config.image_size // 8` per side (an image tokenizer with 8x downsampling), and the cross-modal
            encoder's geometry. A dict without `grid_size`/`num_codes` gets that grid.
        audio_decoder_config (`dict` or [`OptTriCodeDecoderConfig`], *optional*): the audio code decoder of
            [`OptTriForTextToAudio`]. By default: `modality="audio"`, 1024 codes, at most
            `audio_config.max_position_embeddings * audio_config.patch_frames // 4` codes (the longest clip the audio
            encoder reads, at 4 frames per code; 256 with another audio family), and the cross-modal encoder's
            geometry. A dict without `num_codes` gets that length. In a dict for either decoder, each of
            `hidden_size`, `num_hidden_layers`, `num_attention_heads` and `intermediate_size` that is not given is the
            cross-modal encoder's. Configs saved before these decoders existed load with these defaults.
        projection_dim (`int`, defaults to 256): size of the projected, normalised retrieval embeddings.
        logit_scale_init_value (`float`, defaults to 2.6592): initial value of the learnable contrastive logit scale
            (log of the inverse temperature, as in CLIP).
        initializer_range (`float`, defaults to 0.02): std of the normal initialiser of OPT-Tri's own layers.
        objectives (`dict[str, float]`, *optional*): the pre-training objectives to compute and their loss
            weights; keys are from `PRETRAINING_OBJECTIVES`, and a weight of 0 switches an objective off.
        mlm_probability (`float`, defaults to 0.15): fraction of text tokens masked for MLM (80% `[MASK]`, 10% random,
            10% unchanged).
        mvm_probability (`float`, defaults to 0.15): fraction of image patches masked for masked vision modelling.
        mam_probability (`float`, defaults to 0.15): fraction of audio tokens masked for masked audio modelling.
        modality_mask_probability (`float`, defaults to 0.3): probability that a whole modality of a sample is
            masked out (modality-level masking; the case where every modality would be masked is skipped).
        masking_policy (`str`, defaults to `"conditional"`): `"conditional"` masks tokens of one modality at a time
            (UNITER), `"joint"` masks all modalities in the same pass (OPT).
        mac_temperature (`float`, defaults to 0.07): temperature of the masked audio contrastive loss.
        itm_hard_negative_fraction (`float`, defaults to 0.5): how the ITM negatives are drawn. Each one comes from
            the batch's contrastive similarities (a hard negative, as in ALBEF) with this probability, and uniformly
            from the other samples otherwise. Hard negatives alone stall ITM at its label prior while the unimodal
            encoders are still weak (a hard negative then often describes the same colours and shapes); the uniform
            share keeps the matching signal learnable from the first steps.
        itm_rows_per_sample (`int`, defaults to 1): cross-modal rows that pairwise matching (ITM, and WRA with it)
            scores per sample. `1` (UNITER, FLAVA): the positive pair with probability 1/2, else a negative that
            replaces one side, chosen at random. `3` (ALBEF): the positive pair, the text with a negative image and
            the image with a negative text. ITM is most of a pre-training step's cross-modal work: with FLAVA's
            objectives on the tiny preset a step is 16.4 GFLOP with `3` and 11.3 with `1`, and the main job ran
            1.56x longer with `3`, for the same retrieval (mean R@1 25.8% against 25.9%) and similar ITM
            re-ranking (15.1% against 14.2%, one seed each). Configs saved before this option existed load with
            `1`.
        contrastive_local_loss (`bool`, defaults to `False`): with several processes, each one computes the contrastive
            loss of its own rows against the gathered gallery (open_clip's `--local-loss --gather-with-grad`): the same
            gradients as the global loss, with `world` times fewer logits per process.
        mask_token_id (`int`, *optional*): id of the tokenizer's `[MASK]` token: 103 (BERT's) by default, or 3 in a
            vocabulary of at most 103 ids (see `default_special_ids`).
        special_token_ids (`list[int]`, *optional*): ids never chosen for MLM (`[PAD]`, `[CLS]`, `[SEP]`, ...);
            BERT's `[0, 100, 101, 102]` by default, `[0, 1, 2]` in a vocabulary of at most 103 ids.
    """

    model_type = "opt_tri"
    sub_configs = {
        "text_config": AutoConfig,
        "vision_config": AutoConfig,
        "audio_config": OptTriAudioConfig,
        "cross_modal_config": OptTriFusionConfig,
        "text_decoder_config": OptTriTextDecoderConfig,
        "image_decoder_config": OptTriImageDecoderConfig,
        "audio_decoder_config": OptTriAudioDecoderConfig,
    }

    def __init__(
        self,
        text_config: dict | PretrainedConfig | None = None,
        vision_config: dict | PretrainedConfig | None = None,
        audio_config: dict | PretrainedConfig | None = None,
        cross_modal_config: dict | PretrainedConfig | None = None,
        text_decoder_config: dict | PretrainedConfig | None = None,
        image_decoder_config: dict | PretrainedConfig | None = None,
        audio_decoder_config: dict | PretrainedConfig | None = None,
        projection_dim: int = 256,
        logit_scale_init_value: float = 2.6592,
        initializer_range: float = 0.02,
        objectives: dict[str, float] | None = None,
        mlm_probability: float = 0.15,
        mvm_probability: float = 0.15,
        mam_probability: float = 0.15,
        modality_mask_probability: float = 0.3,
        masking_policy: str = "conditional",
        mac_temperature: float = 0.07,
        itm_hard_negative_fraction: float = 0.5,
        itm_rows_per_sample: int = 1,
        contrastive_local_loss: bool = False,
        mask_token_id: int | None = None,
        special_token_ids: list[int] | None = None,
        **kwargs,
    ):
        self.text_config = _as_sub_config(text_config, BertConfig, "text_config")
        self.vision_config = _as_sub_config(vision_config, ViTConfig, "vision_config")
        self.audio_config = _as_sub_config(audio_config, OptTriAudioConfig, "audio_config")
        legacy = kwargs.pop("fusion_config", None)  # old name; see the module docstring
        if legacy is not None and cross_modal_config is not None:
            raise ValueError("Pass cross_modal_config or its old name fusion_config, not both")
        cross_modal_config = legacy if legacy is not None else cross_modal_config
        self.cross_modal_config = _as_sub_config(cross_modal_config, OptTriFusionConfig, "cross_modal_config")
        if text_decoder_config is None:
            text_decoder_config = self._default_text_decoder_config()
        self.text_decoder_config = _as_sub_config(text_decoder_config, OptTriTextDecoderConfig, "text_decoder_config")
        self.image_decoder_config = self._code_decoder_config(image_decoder_config, "image")
        self.audio_decoder_config = self._code_decoder_config(audio_decoder_config, "audio")
        self.projection_dim = projection_dim
        self.logit_scale_init_value = logit_scale_init_value
        self.initializer_range = initializer_range
        self.objectives = dict(PRETRAINING_OBJECTIVES if objectives is None else objectives)
        self.mlm_probability = mlm_probability
        self.mvm_probability = mvm_probability
        self.mam_probability = mam_probability
        self.modality_mask_probability = modality_mask_probability
        self.masking_policy = masking_policy
        self.mac_temperature = mac_temperature
        self.itm_hard_negative_fraction = itm_hard_negative_fraction
        self.itm_rows_per_sample = itm_rows_per_sample
        self.contrastive_local_loss = contrastive_local_loss
        defaults = default_special_ids(self.text_config.vocab_size)
        self.mask_token_id = defaults["mask_token_id"] if mask_token_id is None else mask_token_id
        if special_token_ids is None:  # BERT's [PAD], [UNK], [CLS], [SEP]; in a small vocabulary [PAD], BOS, EOS
            special_token_ids = [0, 100, 101, 102] if defaults == BERT_SPECIAL_IDS else [0, 1, 2]
        self.special_token_ids = list(special_token_ids)
        super().__init__(**kwargs)
        self._validate_settings()

    def _default_text_decoder_config(self) -> dict[str, Any]:
        """The text decoder's settings when none are given: the cross-modal encoder's geometry, the text encoder's
        vocabulary and its own special ids where its config has them (RoBERTa: <s>, </s>, <pad>)."""
        cm = self.cross_modal_config
        return dict(
            vocab_size=self.text_config.vocab_size,
            hidden_size=cm.hidden_size,
            num_hidden_layers=cm.num_hidden_layers,
            num_attention_heads=cm.num_attention_heads,
            intermediate_size=cm.intermediate_size,
            bos_token_id=getattr(self.text_config, "bos_token_id", None),
            eos_token_id=getattr(self.text_config, "eos_token_id", None),
            pad_token_id=getattr(self.text_config, "pad_token_id", None),
        )

    def _code_decoder_config(self, value: dict | PretrainedConfig | None, modality: str) -> PretrainedConfig:
        """The image or audio code decoder config from `value` (see the class docstring for the defaults)."""
        name = f"{modality}_decoder_config"
        config_class = CODE_DECODER_CONFIG_CLASSES[modality]
        if isinstance(value, PretrainedConfig):
            if getattr(value, "modality", None) != modality:
                raise ValueError(f"{name} must be an OptTriCodeDecoderConfig with modality={modality!r}")
            return value
        if value is not None and not isinstance(value, dict):
            raise TypeError(f"{name} must be a dict or an OptTriCodeDecoderConfig, got {type(value).__name__}")
        value = dict(value or {})
        model_type = value.pop("model_type", OptTriCodeDecoderConfig.model_type)
        if model_type != OptTriCodeDecoderConfig.model_type:
            raise ValueError(f"{name} must be of model_type {OptTriCodeDecoderConfig.model_type!r}, got {model_type!r}")
        if value.setdefault("modality", modality) != modality:
            raise ValueError(f"{name} has modality={value['modality']!r}; it must be {modality!r}")
        if modality == "image" and "grid_size" not in value and "num_codes" not in value:
            value["grid_size"] = max(1, self.vision_config.image_size // 8)
        if modality == "audio" and "num_codes" not in value:
            audio = self.audio_config  # other audio families: as many codes as our default encoder reads (256 * 4 // 4)
            frames = getattr(audio, "max_position_embeddings", 256) * getattr(audio, "patch_frames", 4)
            value["num_codes"] = max(1, frames // 4)
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            value.setdefault(key, getattr(self.cross_modal_config, key))  # geometry not given: the cross-modal encoder's
        return config_class(**value)

    def size_code_decoders(self, image_tokenizer=None, audio_tokenizer=None) -> list[str]:
        """
        Size the code decoders (and so the MRC head) to VQ tokenizers ([`OptTriImageVQModel`] /
        [`OptTriAudioVQModel`], or their configs): the image decoder gets the tokenizer's `codebook_size` and code
        grid (`image_size // downsample`), the audio decoder its `codebook_size` and as many codes as the longest clip
        the audio encoder takes (`max_position_embeddings * patch_frames` frames, `frames_per_code` frames a code).
        The decoders' geometry is kept. Returns the names of the sub-configs that changed (`"image_decoder_config"`,
        `"audio_decoder_config"`). A built model is sized with its own `size_code_decoders`, which also rebuilds the
        modules.
        """
        image = getattr(image_tokenizer, "config", image_tokenizer)
        audio = getattr(audio_tokenizer, "config", audio_tokenizer)
        wanted = {}
        if image is not None:
            wanted["image"] = dict(codebook_size=image.codebook_size, grid_size=image.image_size // image.downsample)
        if audio is not None:
            longest = self.audio_config.max_position_embeddings * self.audio_config.patch_frames
            wanted["audio"] = dict(codebook_size=audio.codebook_size, num_codes=-(-longest // audio.frames_per_code))
        changed = []
        for modality, fields in wanted.items():
            name = f"{modality}_decoder_config"
            current = getattr(self, name)
            values = {key: value for key, value in current.to_dict().items() if key not in _DERIVED_CODE_DECODER_KEYS}
            sized = CODE_DECODER_CONFIG_CLASSES[modality](**{**values, **fields})
            if sized.to_dict() != current.to_dict():
                setattr(self, name, sized)
                changed.append(name)
        return changed

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        """`PretrainedConfig.from_dict`, but a config of another `model_type` (e.g. a BERT checkpoint's) raises."""
        _refuse_other_model_type(cls, config_dict)
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PretrainedConfig.from_pretrained`, but a local path that does not exist raises `FileNotFoundError`."""
        _refuse_missing_path(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def validate(self) -> None:
        """Check the whole config: transformers' own validators (`PretrainedConfig.validate`, also run by
        `save_pretrained`), then OPT-Tri's (sub-configs, ids, objectives, masking settings), each raising an error
        that names the setting. OPT-Tri's run on construction too; call `validate()` after changing attributes."""
        super().validate()
        self._validate_settings()

    def _validate(self) -> None:
        """Deprecated name of [`validate`], kept for one release."""
        warnings.warn("OptTriConfig._validate() is deprecated: call validate()", FutureWarning, stacklevel=2)
        self.validate()

    def _validate_settings(self) -> None:
        _check_positive_ints(self, ("projection_dim",))
        for sub in (self.text_config, self.vision_config):
            for name in ("hidden_size", "num_attention_heads"):
                if not hasattr(sub, name):
                    raise ValueError(f"{type(sub).__name__} has no `{name}`; OPT-Tri needs a transformer encoder config")
            _check_positive_ints(sub, ("hidden_size", "num_attention_heads"))
            _check_heads(sub)
        _check_positive_ints(self.vision_config, ("image_size", "patch_size"))
        if not math.isfinite(self.logit_scale_init_value):
            raise ValueError(f"logit_scale_init_value must be a finite number, got {self.logit_scale_init_value!r}")
        if self.vision_config.image_size % self.vision_config.patch_size != 0:
            raise ValueError(
                f"vision_config.image_size ({self.vision_config.image_size}) must be divisible by patch_size "
                f"({self.vision_config.patch_size})"
            )
        dc = self.text_decoder_config
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(dc, name)
            if not isinstance(value, int) or not 0 <= value < dc.vocab_size:
                raise ValueError(
                    f"text_decoder_config.{name} must be an id in [0, {dc.vocab_size}), got {value!r}; set it to "
                    "your tokenizer's [CLS] (bos), [SEP] (eos) and [PAD] ids"
                )
        if self.text_decoder_config.vocab_size != self.text_config.vocab_size:
            raise ValueError(
                f"text_decoder_config.vocab_size ({self.text_decoder_config.vocab_size}) must equal "
                f"text_config.vocab_size ({self.text_config.vocab_size}): the decoder writes the encoder's vocabulary"
            )
        unknown = set(self.objectives) - set(PRETRAINING_OBJECTIVES)
        if unknown:
            raise ValueError(f"Unknown pre-training objectives {sorted(unknown)}; known: {sorted(PRETRAINING_OBJECTIVES)}")
        for name, weight in self.objectives.items():
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                raise ValueError(f"objectives[{name!r}] must be a non-negative number, got {weight!r}")
        for name in ("mlm_probability", "mvm_probability", "mam_probability", "modality_mask_probability"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
        if self.masking_policy not in ("conditional", "joint"):
            raise ValueError(f"masking_policy must be 'conditional' or 'joint', got {self.masking_policy!r}")
        vocab = self.text_config.vocab_size
        for token_id in [self.mask_token_id, *self.special_token_ids]:
            if not isinstance(token_id, int) or not 0 <= token_id < vocab:
                raise ValueError(f"mask_token_id/special_token_ids must be ids in [0, {vocab}); got {token_id!r}")
        if not self.mac_temperature > 0:
            raise ValueError(f"mac_temperature must be positive, got {self.mac_temperature!r}")
        fraction = self.itm_hard_negative_fraction
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"itm_hard_negative_fraction must be a number in [0, 1], got {fraction!r}")
        if not isinstance(self.contrastive_local_loss, bool):
            raise ValueError(f"contrastive_local_loss must be True or False, got {self.contrastive_local_loss!r}")
        if self.itm_rows_per_sample not in (1, 3) or isinstance(self.itm_rows_per_sample, bool):
            raise ValueError(f"itm_rows_per_sample must be 1 or 3, got {self.itm_rows_per_sample!r}")

    def get_text_config(self, decoder: bool | None = None, encoder: bool | None = None) -> PretrainedConfig:
        """The text decoder's config for `decoder=True` (what `generate()` builds its cache from), else the text
        encoder's. Both share one vocabulary."""
        if decoder and not encoder and getattr(self, "text_decoder_config", None) is not None:
            return self.text_decoder_config
        return getattr(self, "text_config", self)

    @property
    def num_image_patches(self) -> int:
        """Number of patches per image (without the `[CLS]` token)."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["objectives"] = copy.deepcopy(self.objectives)
        return output


__all__ = [
    "OptTriAudioConfig",
    "OptTriAudioDecoderConfig",
    "OptTriCodeDecoderConfig",
    "OptTriConfig",
    "OptTriFusionConfig",
    "OptTriImageDecoderConfig",
    "OptTriTextDecoderConfig",
    "PRETRAINING_OBJECTIVES",
]

OptTriConfig.register_for_auto_class()
