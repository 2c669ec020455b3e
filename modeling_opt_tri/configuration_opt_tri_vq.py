"""Configurations of the OPT-Tri discrete VQ tokenizers (image and audio).

This is a Hub file: it is copied next to tokenizer checkpoints as remote code and imports nothing from the rest of the
`modeling_opt_tri` package.

- [`OptTriImageVQConfig`] configures [`OptTriImageVQModel`]: a convolutional VQ autoencoder that turns a normalised
  image `(B, 3, H, W)` into a grid of codes `(B, H / downsample, W / downsample)` and back.
- [`OptTriAudioVQConfig`] configures [`OptTriAudioVQModel`]: a 1-D convolutional VQ autoencoder over normalised log-mel
  frames `(B, num_mel_bins, T)` that gives one code per `frames_per_code` frames, and turns codes back into log-mel
  frames and (by Griffin-Lim) into a waveform.

Both use an EMA codebook ([`OptTriVectorQuantizer`]); the quantizer settings (`codebook_size`, `embedding_dim`,
`commitment_cost`, `ema_decay`, `dead_code_threshold`) mean the same in both configs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from transformers import PretrainedConfig

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _check_positive_ints(config: PretrainedConfig, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got {value!r}")


def _check_power_of_two(config: PretrainedConfig, name: str) -> int:
    """Return log2 of `config.<name>`, which must be a positive power of two."""
    value = getattr(config, name)
    if value & (value - 1) != 0:
        raise ValueError(f"{type(config).__name__}.{name} must be a power of two (1, 2, 4, 8, ...), got {value}")
    return value.bit_length() - 1


def _check_number(config: PretrainedConfig, name: str, low: float, high: float, low_open: bool, high_open: bool) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{type(config).__name__}.{name} must be a finite number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{type(config).__name__}.{name} must be in {interval}, got {value!r}")


def _check_quantizer(config: PretrainedConfig) -> None:
    """Validate the settings shared by both VQ configs."""
    _check_positive_ints(config, ("codebook_size", "embedding_dim", "hidden_channels", "num_res_blocks"))
    if config.codebook_size < 2:
        raise ValueError(f"{type(config).__name__}.codebook_size must be at least 2, got {config.codebook_size}")
    _check_number(config, "commitment_cost", 0.0, math.inf, low_open=False, high_open=True)
    _check_number(config, "ema_decay", 0.0, 1.0, low_open=False, high_open=True)
    _check_number(config, "dead_code_threshold", 0.0, math.inf, low_open=False, high_open=True)
    _check_number(config, "initializer_range", 0.0, math.inf, low_open=True, high_open=True)


class OptTriImageVQConfig(PretrainedConfig):
    r"""
    Configuration of [`OptTriImageVQModel`], the OPT-Tri image tokenizer (a convolutional VQ autoencoder with an EMA
    codebook).

    The encoder maps `pixel_values` `(B, num_channels, H, W)` to `(B, embedding_dim, H / downsample, W / downsample)`
    with `log2(downsample)` stride-2 convolutions, each level preceded by `num_res_blocks` residual blocks at
    `hidden_channels * channel_multipliers[level]` channels. Each vector is replaced by its nearest codebook entry, and
    the decoder mirrors the encoder (nearest-neighbour upsampling + convolutions).

    Inputs are the output of `OptTriImageProcessor`: pixels scaled to [0, 1] and normalised as
    `(pixel - image_mean) / image_std`. `image_mean`/`image_std` are stored here so that decoded pixels can be mapped
    back to images (`OptTriImageVQModel.to_pil`); they must match the image processor's.

    Args:
        num_channels (`int`, defaults to 3): image channels.
        image_size (`int`, defaults to 224): the image side the tokenizer is trained for (informative: any `H`, `W`
            divisible by `downsample` work). Must be divisible by `downsample`.
        downsample (`int`, defaults to 8): spatial reduction factor, a power of two (`2 ** num_levels`); an image of
            side `S` gives `S / downsample` x `S / downsample` codes.
        codebook_size (`int`, defaults to 8192): number of codes `K`.
        embedding_dim (`int`, defaults to 64): dimension of the code vectors.
        hidden_channels (`int`, defaults to 128): channels of the first encoder level (and the last decoder level).
        channel_multipliers (`list[int]`, *optional*): per-level channel multipliers, `log2(downsample)` of them;
            defaults to `[1, 2, 2, 4, ...]` truncated to that length (`[1, 2, 2]` for `downsample=8`).
        num_res_blocks (`int`, defaults to 2): residual blocks per level.
        commitment_cost (`float`, defaults to 0.25): weight `beta` of the commitment loss
            `beta * ||z - sg(e)||^2` (the codebook itself is learned by EMA, not by gradients).
        ema_decay (`float`, defaults to 0.99): decay of the EMA codebook statistics, in [0, 1).
        dead_code_threshold (`float`, defaults to 1.0): a code whose EMA usage (the exponential moving average of the
            number of encoder vectors assigned to it per training step, `code_usage`) falls below this is restarted
            at a random encoder output of the current batch. 0 disables restarts. Keep it well below the average usage
            `vectors per batch / codebook_size`, or codes are restarted over and over.
        image_mean (`list[float]`, defaults to the ImageNet mean), image_std (`list[float]`, defaults to the ImageNet
            std): the normalisation of the inputs (as `OptTriImageProcessor`).
        initializer_range (`float`, defaults to 0.02): std of the normal initialiser of the codebook before its
            data-dependent initialisation on the first training batch.
    """

    model_type = "opt_tri_image_vq"

    def __init__(
        self,
        num_channels: int = 3,
        image_size: int = 224,
        downsample: int = 8,
        codebook_size: int = 8192,
        embedding_dim: int = 64,
        hidden_channels: int = 128,
        channel_multipliers: Sequence[int] | None = None,
        num_res_blocks: int = 2,
        commitment_cost: float = 0.25,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 1.0,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ):
        self.num_channels = num_channels
        self.image_size = image_size
        self.downsample = downsample
        self.codebook_size = codebook_size
        self.embedding_dim = embedding_dim
        self.hidden_channels = hidden_channels
        self.num_res_blocks = num_res_blocks
        self.commitment_cost = commitment_cost
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        _check_positive_ints(self, ("num_channels", "image_size", "downsample"))
        _check_quantizer(self)
        num_levels = _check_power_of_two(self, "downsample")
        if image_size % downsample != 0:
            raise ValueError(f"image_size ({image_size}) must be divisible by downsample ({downsample})")
        if channel_multipliers is None:
            channel_multipliers = ([1, 2, 2] + [4] * num_levels)[:num_levels]
        if isinstance(channel_multipliers, (str, bytes)) or not isinstance(channel_multipliers, Sequence):
            raise ValueError(f"channel_multipliers must be a list of positive ints, got {channel_multipliers!r}")
        channel_multipliers = list(channel_multipliers)
        if len(channel_multipliers) != num_levels:
            raise ValueError(
                f"channel_multipliers needs log2(downsample) = {num_levels} entries (one per downsampling level), "
                f"got {channel_multipliers}"
            )
        if any(isinstance(m, bool) or not isinstance(m, int) or m <= 0 for m in channel_multipliers):
            raise ValueError(f"channel_multipliers must be positive ints, got {channel_multipliers}")
        self.channel_multipliers = channel_multipliers
        mean = list(IMAGENET_MEAN if image_mean is None else image_mean)
        std = list(IMAGENET_STD if image_std is None else image_std)
        if len(mean) != num_channels or len(std) != num_channels:
            raise ValueError(f"image_mean and image_std need {num_channels} values each, got {mean} and {std}")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in mean):
            raise ValueError(f"image_mean values must be finite numbers, got {mean}")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in std):
            raise ValueError(f"image_std values must be positive and finite, got {std}")
        self.image_mean = [float(v) for v in mean]
        self.image_std = [float(v) for v in std]

    @property
    def num_levels(self) -> int:
        """Number of stride-2 levels, `log2(downsample)`."""
        return self.downsample.bit_length() - 1

    @classmethod
    def from_image_processor(cls, image_processor: Any, **kwargs: Any) -> OptTriImageVQConfig:
        """A config whose `image_size`, `image_mean` and `image_std` are those of `image_processor` (an
        `OptTriImageProcessor`, or anything with those attributes); `kwargs` set the other fields."""
        kwargs.setdefault("image_size", int(image_processor.image_size))
        if getattr(image_processor, "do_normalize", True):
            kwargs.setdefault("image_mean", list(image_processor.image_mean))
            kwargs.setdefault("image_std", list(image_processor.image_std))
        else:  # pixels stay in [0, 1]
            kwargs.setdefault("image_mean", [0.0] * 3)
            kwargs.setdefault("image_std", [1.0] * 3)
        return cls(**kwargs)


class OptTriAudioVQConfig(PretrainedConfig):
    r"""
    Configuration of [`OptTriAudioVQModel`], the OPT-Tri audio tokenizer: a 1-D convolutional VQ autoencoder over
    normalised log-mel frames with an EMA codebook, plus Griffin-Lim to turn decoded frames into a waveform.

    The encoder maps `input_features` `(B, num_mel_bins, T)` (the output of `OptTriFeatureExtractor`) to one code
    vector per `frames_per_code` frames with `log2(frames_per_code)` stride-2 convolutions; the decoder mirrors it.

    The spectrogram settings (`sampling_rate`, `n_fft`, `hop_length`, `mel_mean`, `mel_std`, `num_mel_bins`) must be
    the feature extractor's: they define the mel filter bank and the normalisation that `decode_waveform` inverts.
    [`OptTriAudioVQConfig.from_feature_extractor`] copies them.

    Args:
        num_mel_bins (`int`, defaults to 80): mel bins of the input features (the feature extractor's `feature_size`).
        frames_per_code (`int`, defaults to 4): temporal downsampling, a power of two: one code per
            `frames_per_code` frames (40 ms at a 10 ms hop).
        codebook_size (`int`, defaults to 1024): number of codes `K`.
        embedding_dim (`int`, defaults to 64): dimension of the code vectors.
        hidden_channels (`int`, defaults to 256): channels of the convolutional encoder/decoder.
        num_res_blocks (`int`, defaults to 2): residual blocks per level.
        commitment_cost (`float`, defaults to 0.25), ema_decay (`float`, defaults to 0.99),
            dead_code_threshold (`float`, defaults to 1.0): as in [`OptTriImageVQConfig`].
        sampling_rate (`int`, defaults to 16000), n_fft (`int`, defaults to 400), hop_length (`int`, defaults to
            160): the STFT of the feature extractor (Hann window of `n_fft` samples, centred frames).
        mel_mean (`float`, defaults to -4.27), mel_std (`float`, defaults to 4.57): features are
            `(log(mel) - mel_mean) / mel_std` (natural log), as in the feature extractor.
        mel_inversion_iters (`int`, defaults to 100): `decode_waveform` maps mel power back to linear power with the
            pseudo-inverse of the mel filter bank (clipped at 0), then refines it with this many non-negative
            least-squares (multiplicative) updates; 0 keeps the clipped pseudo-inverse.
        griffin_lim_iters (`int`, defaults to 32): Griffin-Lim iterations of `decode_waveform`.
        griffin_lim_momentum (`float`, defaults to 0.99): momentum of the fast Griffin-Lim algorithm (Perraudin et
            al., 2013); 0 gives the original algorithm.
        initializer_range (`float`, defaults to 0.02): std of the codebook's initialiser before its data-dependent
            initialisation on the first training batch.
    """

    model_type = "opt_tri_audio_vq"

    def __init__(
        self,
        num_mel_bins: int = 80,
        frames_per_code: int = 4,
        codebook_size: int = 1024,
        embedding_dim: int = 64,
        hidden_channels: int = 256,
        num_res_blocks: int = 2,
        commitment_cost: float = 0.25,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 1.0,
        sampling_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        mel_mean: float = -4.27,
        mel_std: float = 4.57,
        mel_inversion_iters: int = 100,
        griffin_lim_iters: int = 32,
        griffin_lim_momentum: float = 0.99,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ):
        self.num_mel_bins = num_mel_bins
        self.frames_per_code = frames_per_code
        self.codebook_size = codebook_size
        self.embedding_dim = embedding_dim
        self.hidden_channels = hidden_channels
        self.num_res_blocks = num_res_blocks
        self.commitment_cost = commitment_cost
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold
        self.sampling_rate = sampling_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.mel_mean = mel_mean
        self.mel_std = mel_std
        self.mel_inversion_iters = mel_inversion_iters
        self.griffin_lim_iters = griffin_lim_iters
        self.griffin_lim_momentum = griffin_lim_momentum
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        _check_positive_ints(
            self, ("num_mel_bins", "frames_per_code", "sampling_rate", "n_fft", "hop_length", "griffin_lim_iters")
        )
        _check_quantizer(self)
        if isinstance(mel_inversion_iters, bool) or not isinstance(mel_inversion_iters, int) or mel_inversion_iters < 0:
            raise ValueError(f"{type(self).__name__}.mel_inversion_iters must be a non-negative int, got {mel_inversion_iters!r}")
        _check_power_of_two(self, "frames_per_code")
        if hop_length > n_fft:
            raise ValueError(f"hop_length ({hop_length}) must not exceed n_fft ({n_fft}) (Griffin-Lim needs overlap)")
        _check_number(self, "mel_mean", -math.inf, math.inf, low_open=True, high_open=True)
        _check_number(self, "mel_std", 0.0, math.inf, low_open=True, high_open=True)
        _check_number(self, "griffin_lim_momentum", 0.0, 1.0, low_open=False, high_open=True)

    @property
    def num_levels(self) -> int:
        """Number of stride-2 levels, `log2(frames_per_code)`."""
        return self.frames_per_code.bit_length() - 1

    @classmethod
    def from_feature_extractor(cls, feature_extractor: Any, **kwargs: Any) -> OptTriAudioVQConfig:
        """A config whose spectrogram settings (`num_mel_bins`, `sampling_rate`, `n_fft`, `hop_length`, `mel_mean`,
        `mel_std`) are those of `feature_extractor` (an `OptTriFeatureExtractor`); `kwargs` set the other fields."""
        kwargs.setdefault("num_mel_bins", int(feature_extractor.feature_size))
        kwargs.setdefault("sampling_rate", int(feature_extractor.sampling_rate))
        kwargs.setdefault("n_fft", int(feature_extractor.n_fft))
        kwargs.setdefault("hop_length", int(feature_extractor.hop_length))
        kwargs.setdefault("mel_mean", float(feature_extractor.mel_mean))
        kwargs.setdefault("mel_std", float(feature_extractor.mel_std))
        return cls(**kwargs)


OptTriImageVQConfig.register_for_auto_class()
OptTriAudioVQConfig.register_for_auto_class()

__all__ = ["OptTriAudioVQConfig", "OptTriImageVQConfig"]
