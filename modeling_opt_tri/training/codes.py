"""VQ-code targets for the code objectives of pre-training (MRC, MRC-kl, DIR, DAR).

Frozen image / audio tokenizers ([`OptTriImageVQModel`], [`OptTriAudioVQModel`]) turn each batch's pixels and log-mel
frames into the codes that `OptTriForPreTraining` predicts. They run under `torch.no_grad()` in eval mode and are
never updated.
"""

from __future__ import annotations

import torch

from ..configuration_opt_tri import OptTriConfig
from ..modeling_opt_tri_vq import OptTriAudioVQModel, OptTriImageVQModel

IMAGE_CODE_OBJECTIVES = ("mrc", "mrc_kl", "dir")
AUDIO_CODE_OBJECTIVES = ("dar",)


class VQCodeTargets:
    """
    Computes `image_codes` `(B, g, g)`, `image_code_probs` `(B, g, g, K)` (only when MRC-kl is on) and
    `audio_codes` / `audio_codes_mask` `(B, n)` for a batch.

    Args:
        image_tokenizer, audio_tokenizer: the frozen tokenizers (either may be `None`).
        soft_temperature: temperature of the soft code assignments (MRC-kl targets).
        need_soft: whether to compute the soft assignments.
    """

    def __init__(
        self,
        image_tokenizer: OptTriImageVQModel | None,
        audio_tokenizer: OptTriAudioVQModel | None,
        soft_temperature: float = 1.0,
        need_soft: bool = False,
    ) -> None:
        if not soft_temperature > 0:
            raise ValueError(f"--code_soft_temperature must be positive, got {soft_temperature!r}")
        self.image_tokenizer = image_tokenizer.eval().requires_grad_(False) if image_tokenizer is not None else None
        self.audio_tokenizer = audio_tokenizer.eval().requires_grad_(False) if audio_tokenizer is not None else None
        self.soft_temperature = soft_temperature
        self.need_soft = need_soft

    @staticmethod
    def load(image_path: str | None, audio_path: str | None) -> tuple[OptTriImageVQModel | None, OptTriAudioVQModel | None]:
        image = OptTriImageVQModel.from_pretrained(image_path) if image_path else None
        audio = OptTriAudioVQModel.from_pretrained(audio_path) if audio_path else None
        return image, audio

    @staticmethod
    def check_compatible(config: OptTriConfig, processor, image: OptTriImageVQModel | None, audio: OptTriAudioVQModel | None) -> None:
        """Raise, naming the setting, when a tokenizer does not fit the model or the processor."""
        if image is not None:
            ic, idc = image.config, config.image_decoder_config
            size = config.vision_config.image_size
            if ic.image_size != size:
                raise ValueError(f"--image_tokenizer was trained on {ic.image_size}-px images; the model reads {size} px")
            ip = processor.image_processor
            if [round(v, 6) for v in ic.image_mean] != [round(float(v), 6) for v in ip.image_mean] or [
                round(v, 6) for v in ic.image_std
            ] != [round(float(v), 6) for v in ip.image_std]:
                raise ValueError(
                    f"--image_tokenizer normalises pixels with mean {ic.image_mean} / std {ic.image_std}, the processor "
                    f"with {list(ip.image_mean)} / {list(ip.image_std)}: the codes would be of differently normalised images"
                )
            grid = ic.image_size // ic.downsample
            if (idc.codebook_size, idc.grid_size) != (ic.codebook_size, grid):
                raise ValueError(
                    f"image_decoder_config (codebook {idc.codebook_size}, grid {idc.grid_size}) does not match "
                    f"--image_tokenizer (codebook {ic.codebook_size}, grid {grid})"
                )
        if audio is not None:
            ac, adc = audio.config, config.audio_decoder_config
            if ac.num_mel_bins != config.audio_config.num_mel_bins:
                raise ValueError(
                    f"--audio_tokenizer reads {ac.num_mel_bins} mel bins; the model's audio encoder "
                    f"{config.audio_config.num_mel_bins}"
                )
            fe = processor.feature_extractor
            for name in ("sampling_rate", "n_fft", "hop_length", "mel_mean", "mel_std"):
                ours, theirs = getattr(fe, name, None), getattr(ac, name)
                if ours is not None and ours != theirs:
                    raise ValueError(f"--audio_tokenizer expects {name}={theirs}; the processor uses {name}={ours}")
            if adc.codebook_size != ac.codebook_size:
                raise ValueError(
                    f"audio_decoder_config.codebook_size ({adc.codebook_size}) does not match --audio_tokenizer "
                    f"({ac.codebook_size})"
                )

    def to(self, device: torch.device) -> VQCodeTargets:
        for tokenizer in (self.image_tokenizer, self.audio_tokenizer):
            if tokenizer is not None:
                tokenizer.to(device)
        return self

    @torch.no_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        extra: dict[str, torch.Tensor] = {}
        if self.image_tokenizer is not None and batch.get("pixel_values") is not None:
            if self.need_soft:
                codes, soft = self.image_tokenizer.encode_soft(batch["pixel_values"], self.soft_temperature)
                extra["image_codes"], extra["image_code_probs"] = codes, soft
            else:
                extra["image_codes"] = self.image_tokenizer.encode(batch["pixel_values"])
        if self.audio_tokenizer is not None and batch.get("input_features") is not None:
            codes, mask = self.audio_tokenizer.encode(
                batch["input_features"], batch.get("audio_attention_mask"), return_mask=True
            )
            extra["audio_codes"], extra["audio_codes_mask"] = codes, mask
        return extra
