"""The typed values that the phases of `OptTriForPreTraining.forward` hand to each other:

    PreTrainingBatch --plan_masks--> MaskPlan --encode_views--> EncodedViews --fuse_masked_views--> MaskedFusion

then the objectives of each level read them (`token_level_losses`, `modality_reconstruction_losses`,
`sample_level_losses`) and `weigh_losses` sums what they return. Per-modality values are dicts keyed by
`"text"`, `"image"`, `"audio"` (see `MODALITIES`); losses are keyed by the objective names of `config.objectives`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: The token-level objectives of each modality (a modality is token-masked only when one of its objectives runs).
TOKEN_OBJECTIVES: dict[str, tuple[str, ...]] = {"text": ("mlm",), "image": ("mrfr", "mrc", "mrc_kl"), "audio": ("mafr", "mac")}
#: The modality-level objective of each modality: its decoder writes it when it is dropped.
RECONSTRUCTION_OBJECTIVES: dict[str, str] = {"text": "dtr", "image": "dir", "audio": "dar"}
#: The sample-level objectives: they read the clean (unmasked) views.
SAMPLE_OBJECTIVES: tuple[str, ...] = ("contrastive", "itm", "wra", "tri_matching")

#: A unimodal encoder's states and their token mask: `((B, n, d), (B, n))`.
Part = tuple[torch.Tensor, torch.Tensor]


@dataclass
class PreTrainingBatch:
    """The checked inputs of one pre-training call, with the default masks filled in.

    `present[m]` `(B,)` bool says which samples have modality `m`; `tasks` the objectives of this call."""

    tasks: set[str]
    size: int
    present: dict[str, torch.Tensor]
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    token_type_ids: torch.Tensor | None = None
    pixel_values: torch.Tensor | None = None
    image_mask: torch.Tensor | None = None
    input_features: torch.Tensor | None = None
    audio_attention_mask: torch.Tensor | None = None
    image_codes: torch.Tensor | None = None
    image_code_probs: torch.Tensor | None = None
    audio_codes: torch.Tensor | None = None
    audio_codes_mask: torch.Tensor | None = None

    def given(self, modality: str) -> bool:
        """Whether the call has inputs for `modality` at all."""
        inputs = {"text": self.input_ids, "image": self.pixel_values, "audio": self.input_features}
        return inputs[modality] is not None

    def none(self) -> torch.Tensor:
        """`(B,)` all False, on the inputs' device."""
        return torch.zeros_like(self.present["text"])


@dataclass
class MaskPlan:
    """Token-level masking of one call: `rows[m]` `(B,)` the samples whose modality `m` is token-masked; the masked
    text (`text_ids`, `mlm_labels` with -100 where not masked), and the masked image patches `(B, patches)` and
    audio tokens `(B, tokens)` (`None` when nothing of that modality is masked); `audio_real` `(B, tokens)` the audio
    tokens that hold real frames."""

    rows: dict[str, torch.Tensor]
    text_ids: torch.Tensor | None = None
    mlm_labels: torch.Tensor | None = None
    image_masked: torch.Tensor | None = None
    audio_masked: torch.Tensor | None = None
    audio_real: torch.Tensor | None = None

    def token_masked(self, modality: str) -> bool:
        """Whether some token of `modality` is masked in this call."""
        return {"text": self.mlm_labels, "image": self.image_masked, "audio": self.audio_masked}[modality] is not None


@dataclass
class EncodedViews:
    """The unimodal encoders' outputs: `clean[m]` on the clean inputs (read by the sample-level objectives; absent
    when no sample-level objective runs and `m` is token-masked), `masked[m]` on the token-masked inputs (equal to
    `clean[m]` outside the masked rows), and `embeds[m]` `(B, projection_dim)` the normalised projected `[CLS]`."""

    clean: dict[str, Part] = field(default_factory=dict)
    masked: dict[str, Part] = field(default_factory=dict)
    embeds: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class MaskedFusion:
    """The cross-modal pass over the masked views after modality-level dropping.

    `selected` `(B, slots, d)`: the last layer's states at the positions a token-level head reads (`query_index`,
    valid where `slot_valid`); `full` `(R, S, d)` the full states of the `R` rows some decoder reads, `fusion_mask`
    `(B, S)`; `decoding[m]` `(B,)` the samples whose dropped modality `m` a decoder writes."""

    parts: dict[str, Part]
    segment_start: dict[str, int]
    query_index: torch.Tensor
    slot_valid: torch.Tensor
    selected: torch.Tensor
    full: torch.Tensor | None
    fusion_mask: torch.Tensor
    decoding: dict[str, torch.Tensor]

    def at_masked(self, modality: str) -> torch.Tensor:
        """The selected states of the masked tokens of `modality`, `(M, d)`, row-major."""
        start, length = self.segment_start[modality], self.parts[modality][0].shape[1]
        inside = (self.query_index >= start) & (self.query_index < start + length)
        return self.selected[self.slot_valid & inside]

    def decoder_inputs(self, modality: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows `(R_m,)`, their cross-modal states `(R_m, S, d)`, their mask `(R_m, S)`) for the decoder of `modality`."""
        decoded = self.decoding["text"] | self.decoding["image"] | self.decoding["audio"]
        row_in_full = torch.cumsum(decoded.long(), 0) - 1
        rows = self.decoding[modality].nonzero().flatten()
        return rows, self.full[row_in_full[rows]], self.fusion_mask[rows]


@dataclass
class TokenLevelLosses:
    """The token-level losses of one call and the MLM logits `(M, vocab)` at the masked text tokens."""

    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    mlm_logits: torch.Tensor | None = None
