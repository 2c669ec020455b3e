"""The phases of `OptTriForPreTraining.forward` ([`OptTriPreTrainingPhases`], its public methods) and the typed values
that they hand to each other:

    PreTrainingBatch --plan_masks--> MaskPlan --encode_views--> EncodedViews --fuse_masked_views--> MaskedFusion

then the objectives of each level read them (`token_level_losses`, `modality_reconstruction_losses`,
`sample_level_losses`) and `weigh_losses` sums what they return. Per-modality values are dicts keyed by
`"text"`, `"image"`, `"audio"` (see `MODALITIES`); losses are keyed by the objective names of `config.objectives`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .configuration_opt_tri import PRETRAINING_OBJECTIVES
from .modeling_opt_tri_decoders import code_decoder_targets
from .modeling_opt_tri_inputs import _MODEL_INPUT_NAMES, _check_code_inputs, _check_model_inputs, _check_token_ids
from .modeling_opt_tri_layers import MODALITIES, _asked, _wants_outputs, cls_follows_tokens
from .modeling_opt_tri_losses import (
    clamped_logit_scale,
    codes_by_patch,
    contrastive_loss,
    gather_true,
    itm_pairs,
    masked_frame_contrastive_loss,
    masked_regression_loss,
    sample_itm_negatives,
    token_cross_entropy,
    true_positions,
    wra_loss,
)
from .modeling_opt_tri_masking import choose_masked_modalities, drop_modalities, mask_positions, mask_text_tokens
from .modeling_opt_tri_outputs import _TOWER_FIELDS, TRI_MATCHING_CLASSES

#: The token-level objectives of each modality (a modality is token-masked only when one of its objectives runs).
TOKEN_OBJECTIVES: dict[str, tuple[str, ...]] = {"text": ("mlm",), "image": ("mrfr", "mrc", "mrc_kl"), "audio": ("mafr", "mac")}
#: The modality-level objective of each modality: its decoder writes it when it is dropped.
RECONSTRUCTION_OBJECTIVES: dict[str, str] = {"text": "dtr", "image": "dir", "audio": "dar"}
#: The sample-level objectives: they read the clean (unmasked) views.
SAMPLE_OBJECTIVES: tuple[str, ...] = ("contrastive", "itm", "wra", "tri_matching")

#: A unimodal encoder's states and their token mask: `((B, n, d), (B, n))`.
Part = tuple[torch.Tensor, torch.Tensor]


def host_counts(counts: dict[str, torch.Tensor]) -> dict[str, int]:
    """The scalar tensors `counts` as Python ints, in one device-to-host copy. The step's row selections and the
    shapes that depend on the random masking need these sizes on the host; batching them keeps the step at three
    host-device syncs (in `prepare_batch`, `plan_masks` and `fuse_masked_views`), whatever the objectives."""
    if not counts:
        return {}
    values = torch.stack([value.reshape(()).long() for value in counts.values()]).tolist()
    return dict(zip(counts, values))


@dataclass
class PreTrainingBatch:
    """The checked inputs of one pre-training call, with the default masks filled in.

    `present[m]` `(B,)` bool says which samples have modality `m`; `tasks` the objectives of this call; `counts`
    on the host: how many samples have each modality pair (`"text+image"`, ...) and all three (`"all"`)."""

    tasks: set[str]
    size: int
    present: dict[str, torch.Tensor]
    counts: dict[str, int] = field(default_factory=dict)
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
    tokens that hold real frames; `row_counts[m]` on the host, how many samples `rows[m]` holds."""

    rows: dict[str, torch.Tensor]
    row_counts: dict[str, int] = field(default_factory=dict)
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
    `(B, S)`; `decoding[m]` `(B,)` the samples whose dropped modality `m` a decoder writes. On the host:
    `masked_counts[m]` the number of masked tokens of `m` that a head reads, `decoded_counts[m]` of `decoding[m]`."""

    parts: dict[str, Part]
    segment_start: dict[str, int]
    query_index: torch.Tensor
    slot_valid: torch.Tensor
    selected: torch.Tensor
    full: torch.Tensor | None
    fusion_mask: torch.Tensor
    decoding: dict[str, torch.Tensor]
    masked_counts: dict[str, int] = field(default_factory=dict)
    decoded_counts: dict[str, int] = field(default_factory=dict)

    def at_masked(self, modality: str) -> torch.Tensor:
        """The selected states of the masked tokens of `modality`, `(M, d)`, row-major."""
        start, length = self.segment_start[modality], self.parts[modality][0].shape[1]
        inside = (self.query_index >= start) & (self.query_index < start + length)
        return gather_true(self.selected, self.slot_valid & inside, self.masked_counts[modality])

    def decoder_inputs(self, modality: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows `(R_m,)`, their cross-modal states `(R_m, S, d)`, their mask `(R_m, S)`) for the decoder of `modality`."""
        decoded = self.decoding["text"] | self.decoding["image"] | self.decoding["audio"]
        row_in_full = torch.cumsum(decoded.long(), 0) - 1
        rows = true_positions(self.decoding[modality], self.decoded_counts[modality])
        return rows, self.full[row_in_full[rows]], self.fusion_mask[rows]


@dataclass
class TokenLevelLosses:
    """The token-level losses of one call and the MLM logits `(M, vocab)` at the masked text tokens."""

    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    mlm_logits: torch.Tensor | None = None


#: The modality pairs of the pairwise sample-level objectives (contrastive, ITM, WRA).
_PAIRS = (("text", "image"), ("text", "audio"), ("image", "audio"))


class OptTriPreTrainingPhases:
    """The phases of [`OptTriForPreTraining`]'s forward, mixed into it as public methods (they read `self.config`,
    `self.opt_tri` and the heads). Each takes and returns the typed values above."""

    def mask_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, generator=None):
        """BERT masking of the `rows` `(B,)` bool: returns (masked ids, labels with -100 where not masked)."""
        return mask_text_tokens(self.config, input_ids, attention_mask, rows, generator)

    @staticmethod
    def mask_positions(real: torch.Tensor, rows: torch.Tensor, probability: float, generator=None) -> torch.Tensor:
        """Choose ~`probability` of the `real` `(B, n)` positions of the `rows`, at least one per row
        ([`mask_positions`])."""
        return mask_positions(real, rows, probability, generator)

    def choose_masked_modalities(self, present: dict[str, torch.Tensor], wanted: dict[str, bool], generator=None) -> dict[str, torch.Tensor]:
        """Per sample, which modalities get token-level masking: one (conditional) or all present (joint)."""
        return choose_masked_modalities(self.config.masking_policy, present, wanted, generator)

    def drop_modalities(self, present: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], generator=None) -> dict[str, torch.Tensor]:
        """Modality-level masking: drop each present modality not in `keep` with p=modality_mask_probability."""
        return drop_modalities(self.config.modality_mask_probability, present, keep, generator)

    def prepare_batch(self, tasks: list[str] | tuple[str, ...] | None, **inputs: torch.Tensor | None) -> PreTrainingBatch:
        """Check the inputs and `tasks` (clear `ValueError`s), fill in the default masks, find which samples have
        each modality. `inputs`: the tensor arguments of `forward` by name."""
        cfg = self.config
        if tasks is None:
            tasks = [name for name, weight in cfg.objectives.items() if weight > 0]
        unknown = set(tasks) - set(PRETRAINING_OBJECTIVES)
        if unknown:
            raise ValueError(f"Unknown pre-training tasks {sorted(unknown)}; known: {sorted(PRETRAINING_OBJECTIVES)}")
        tasks = set(tasks)
        code_inputs = ("pixel_values", "image_codes", "image_code_probs", "input_features", "audio_codes", "audio_codes_mask")
        _check_code_inputs(cfg, self.mrc_head is not None, tasks, *(inputs[name] for name in code_inputs))
        size = _check_model_inputs(cfg, **{name: inputs[name] for name in _MODEL_INPUT_NAMES})
        _check_token_ids(inputs["input_ids"], cfg.text_config.vocab_size, "input_ids")  # before a [MASK] hides one
        device = self.opt_tri.logit_scale.device
        if inputs["input_ids"] is not None and inputs["attention_mask"] is None:
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if inputs["pixel_values"] is not None and inputs["image_mask"] is None:
            inputs["image_mask"] = torch.ones(size, dtype=torch.long, device=device)
        if inputs["input_features"] is not None and inputs["audio_attention_mask"] is None:
            inputs["audio_attention_mask"] = self.opt_tri.audio_input_mask(inputs["input_features"], None).to(device)
        no = torch.zeros(size, dtype=torch.bool, device=device)
        present = {
            "text": inputs["attention_mask"].bool().any(1) if inputs["input_ids"] is not None else no,
            "image": inputs["image_mask"].bool() if inputs["pixel_values"] is not None else no,
            "audio": inputs["audio_attention_mask"].bool().any(1) if inputs["input_features"] is not None else no,
        }
        counts = {f"{a}+{b}": present[a] & present[b] for a, b in _PAIRS}
        counts["all"] = present["text"] & present["image"] & present["audio"]
        counts = host_counts({name: rows.sum() for name, rows in counts.items()})
        return PreTrainingBatch(tasks=tasks, size=size, present=present, counts=counts, **inputs)

    def plan_masks(self, batch: PreTrainingBatch, generator: torch.Generator | None = None) -> MaskPlan:
        """Token-level masking: which samples have which modality token-masked (`config.masking_policy`), then the
        masked text tokens (80/10/10), image patches and audio tokens of those samples."""
        cfg, tasks = self.config, batch.tasks
        wanted = {m: bool(tasks & set(objectives)) for m, objectives in TOKEN_OBJECTIVES.items()}
        any_wanted = bool(tasks & set().union(*TOKEN_OBJECTIVES.values()))
        rows = self.choose_masked_modalities(batch.present, wanted, generator) if any_wanted else {m: batch.none() for m in MODALITIES}
        plan = MaskPlan(rows=rows, row_counts=host_counts({m: rows[m].sum() for m in MODALITIES}), text_ids=batch.input_ids)
        if batch.input_ids is not None and plan.row_counts["text"]:
            plan.text_ids, plan.mlm_labels = self.mask_text(batch.input_ids, batch.attention_mask, rows["text"], generator=generator)
        if batch.pixel_values is not None and plan.row_counts["image"]:
            real = torch.ones(batch.size, cfg.num_image_patches, dtype=torch.bool, device=batch.pixel_values.device)
            plan.image_masked = self.mask_positions(real, rows["image"], cfg.mvm_probability, generator=generator)
        if batch.input_features is not None:
            plan.audio_real = self.opt_tri.audio_token_mask(batch.input_features, batch.audio_attention_mask)[:, 1:].bool()
            if plan.row_counts["audio"]:
                plan.audio_masked = self.mask_positions(plan.audio_real, rows["audio"], cfg.mam_probability, generator=generator)
        return plan

    def encode_views(self, batch: PreTrainingBatch, plan: MaskPlan) -> EncodedViews:
        """Run the unimodal encoders. The sample-level objectives read the clean inputs (a masked colour word or patch
        would make a true pair look mismatched); the masked-modelling pass reads the token-masked inputs, which
        differ from the clean ones only in the token-masked rows: only those rows are encoded a second time."""
        sample_tasks = bool(batch.tasks & set(SAMPLE_OBJECTIVES))
        every_row = torch.arange(batch.size, device=batch.present["text"].device)
        clean: dict[str, torch.Tensor] = {}
        masked: dict[str, torch.Tensor] = {}
        for m in (m for m in MODALITIES if batch.given(m)):
            if sample_tasks or not plan.token_masked(m):
                clean[m] = self._encode_rows(batch, plan, m, every_row, masked=False)
            if not plan.token_masked(m):
                masked[m] = clean[m]
            elif m in clean:  # re-encode only the token-masked rows
                rows = true_positions(plan.rows[m], plan.row_counts[m])
                masked[m] = clean[m].index_copy(0, rows, self._encode_rows(batch, plan, m, rows, masked=True))
            else:
                masked[m] = self._encode_rows(batch, plan, m, every_row, masked=True)
        token_masks = self._token_masks(batch, masked)
        embeds = {m: self.opt_tri.project_cls(m, clean.get(m, masked[m])) for m in masked}
        return EncodedViews(
            clean={m: (clean[m], token_masks[m]) for m in clean},
            masked={m: (masked[m], token_masks[m]) for m in masked},
            embeds=embeds,
        )

    def _encode_rows(self, batch: PreTrainingBatch, plan: MaskPlan, modality: str, rows: torch.Tensor, masked: bool) -> torch.Tensor:
        """The unimodal encoder's states of `modality` for the `rows`, on the clean or the token-masked inputs."""
        base = self.opt_tri
        if modality == "text":
            ids = plan.text_ids if masked else batch.input_ids
            types = None if batch.token_type_ids is None else batch.token_type_ids[rows]
            return base.encode_text(ids[rows], batch.attention_mask[rows], types)
        if modality == "image":
            return base.encode_image(batch.pixel_values[rows], plan.image_masked[rows] if masked else None)
        audio_masked = plan.audio_masked[rows] if masked else None
        return base.encode_audio(batch.input_features[rows], batch.audio_attention_mask[rows], audio_masked)[0]

    def _token_masks(self, batch: PreTrainingBatch, states: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The cross-modal token mask of each encoded modality (a clip without audio has no [CLS] either)."""
        masks = {}
        if batch.given("text"):
            masks["text"] = batch.attention_mask
        if batch.given("image"):
            masks["image"] = batch.image_mask[:, None].expand(-1, states["image"].shape[1])
        if batch.given("audio"):
            masks["audio"] = cls_follows_tokens(self.opt_tri.audio_token_mask(batch.input_features, batch.audio_attention_mask))
        return masks

    def needs_masked_fusion(self, batch: PreTrainingBatch, plan: MaskPlan) -> bool:
        """Whether a token-level or reconstruction objective runs, so the masked views go through the cross-modal
        encoder."""
        token_level = bool(batch.tasks & set().union(*TOKEN_OBJECTIVES.values()))
        masked = any(plan.row_counts[m] for m in MODALITIES)
        return (token_level and masked) or bool(batch.tasks & set(RECONSTRUCTION_OBJECTIVES.values()))

    def fuse_masked_views(self, batch: PreTrainingBatch, plan: MaskPlan, views: EncodedViews,
                          generator: torch.Generator | None = None) -> MaskedFusion:
        """Modality-level masking, then the cross-modal encoder over the masked views. Its last layer runs only at
        the positions a token-level head reads, and in full only for the rows whose dropped modality a decoder
        writes (`OptTriModel.fuse_selected`)."""
        kept = self.drop_modalities(batch.present, plan.rows, generator)
        parts = {m: (views.masked[m][0], views.masked[m][1] * kept[m][:, None].long()) for m in views.masked}
        wanted = {  # per part: the positions whose cross-modal state a head reads
            "text": plan.mlm_labels != -100 if "mlm" in batch.tasks and plan.mlm_labels is not None else None,
            "image": plan.image_masked if batch.tasks & set(TOKEN_OBJECTIVES["image"]) else None,
            "audio": plan.audio_masked if batch.tasks & set(TOKEN_OBJECTIVES["audio"]) else None,
        }
        device = batch.present["text"].device
        columns, segment_start, offset = [torch.zeros(batch.size, 1, dtype=torch.bool, device=device)], {}, 1
        for m in (m for m in MODALITIES if m in parts):
            segment_start[m], length = offset, parts[m][0].shape[1]
            want = wanted[m]
            if want is None:
                want = torch.zeros(batch.size, length, dtype=torch.bool, device=device)
            elif m != "text":  # image / audio masks index the tokens after the part's own [CLS]
                want = torch.cat([torch.zeros_like(want[:, :1]), want], dim=1)
            columns.append(want)
            offset += length
        needed = torch.cat(columns, dim=1)  # (B, S)
        counts = needed.sum(1)
        decoding = self._decoded_rows(batch, kept)
        decoded = decoding["text"] | decoding["image"] | decoding["audio"]
        host = host_counts({
            "slots": counts.max(), "decoded": decoded.sum(), **{f"decoded_{m}": decoding[m].sum() for m in MODALITIES},
            **{f"masked_{m}": wanted[m].sum() for m in parts if wanted[m] is not None},
        })
        slots = max(host["slots"], 1)
        query_index = torch.argsort((~needed).to(torch.uint8), dim=1, stable=True)[:, :slots]  # needed ones first
        full_rows = true_positions(decoded, host["decoded"]) if host["decoded"] else None
        selected, full, fusion_mask, _ = self.opt_tri.fuse_selected(
            parts.get("text"), parts.get("image"), parts.get("audio"), query_index=query_index, full_rows=full_rows
        )
        return MaskedFusion(
            parts=parts, segment_start=segment_start, query_index=query_index,
            slot_valid=torch.arange(slots, device=device)[None, :] < counts[:, None], selected=selected, full=full,
            fusion_mask=fusion_mask, decoding=decoding, decoded_counts={m: host[f"decoded_{m}"] for m in MODALITIES},
            masked_counts={m: host.get(f"masked_{m}", 0) for m in MODALITIES},
        )

    def _decoded_rows(self, batch: PreTrainingBatch, kept: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per modality, the samples whose dropped modality its decoder writes (DTR, DIR, DAR, when asked for and
        their targets are given)."""
        targets = {"text": batch.input_ids, "image": batch.image_codes, "audio": batch.audio_codes}
        decoding = {}
        for m, task in RECONSTRUCTION_OBJECTIVES.items():
            wanted = task in batch.tasks and targets[m] is not None
            decoding[m] = batch.present[m] & ~kept[m] if wanted else batch.none()
        return decoding

    def modality_reconstruction_losses(self, batch: PreTrainingBatch, fusion: MaskedFusion) -> dict[str, torch.Tensor]:
        """DTR, DIR and DAR: the decoders write a dropped modality from the cross-modal states of the others."""
        cfg, losses = self.config, {}
        if fusion.decoded_counts["text"]:
            rows, states, mask = fusion.decoder_inputs("text")
            ids, text_mask = batch.input_ids[rows], batch.attention_mask[rows]
            target = ids[:, 1:].masked_fill(text_mask[:, 1:] == 0, -100)
            hidden = self.text_decoder(ids[:, :-1], text_mask[:, :-1], states, mask)
            losses["dtr"] = token_cross_entropy(self.lm_head(hidden), target)
        if fusion.decoded_counts["image"]:  # the image code decoder writes the dropped image's VQ codes
            rows, states, mask = fusion.decoder_inputs("image")
            inputs, target = code_decoder_targets(cfg.image_decoder_config, batch.image_codes[rows])
            hidden = self.image_decoder(inputs, None, states, mask)
            losses["dir"] = token_cross_entropy(self.image_head(hidden), target)
        if fusion.decoded_counts["audio"]:  # ... and the audio code decoder the dropped clip's (then its end code)
            rows, states, mask = fusion.decoder_inputs("audio")
            codes_mask = batch.audio_codes_mask[rows] if batch.audio_codes_mask is not None else None
            inputs, target = code_decoder_targets(cfg.audio_decoder_config, batch.audio_codes[rows], codes_mask)
            attention = (inputs != cfg.audio_decoder_config.pad_token_id).long()
            hidden = self.audio_decoder(inputs, attention, states, mask)
            losses["dar"] = token_cross_entropy(self.audio_head(hidden), target)
        return losses

    def token_level_losses(self, batch: PreTrainingBatch, plan: MaskPlan, fusion: MaskedFusion) -> TokenLevelLosses:
        """MLM, MRFR, MRC, MRC-kl, MAFR and MAC at the masked tokens' cross-modal states."""
        cfg, tasks, result, count = self.config, batch.tasks, TokenLevelLosses(), fusion.masked_counts
        if "mlm" in tasks and plan.mlm_labels is not None:
            result.mlm_logits = self.mlm_head(fusion.at_masked("text"))  # (M, vocab)
            labels = gather_true(plan.mlm_labels, plan.mlm_labels != -100, count["text"])
            result.losses["mlm"] = token_cross_entropy(result.mlm_logits, labels)
        if plan.image_masked is not None and tasks & set(TOKEN_OBJECTIVES["image"]):
            patches = fusion.at_masked("image")  # (M, hidden), in the order of image_masked
            if "mrfr" in tasks:
                target = self.opt_tri.image_reconstruction_target(batch.pixel_values)
                target = gather_true(target, plan.image_masked, count["image"])
                result.losses["mrfr"] = masked_regression_loss(self.mrfr_head(patches), target)
            if tasks & {"mrc", "mrc_kl"}:
                result.losses.update(self._masked_code_losses(batch, plan.image_masked, count["image"], patches))
        if plan.audio_masked is not None and tasks & set(TOKEN_OBJECTIVES["audio"]):
            tokens = fusion.at_masked("audio")
            target = self.opt_tri.audio_reconstruction_target(batch.input_features)
            if "mafr" in tasks:
                at_masked = gather_true(target, plan.audio_masked, count["audio"])
                result.losses["mafr"] = masked_regression_loss(self.mafr_head(tokens), at_masked)
            if "mac" in tasks:
                result.losses["mac"] = masked_frame_contrastive_loss(
                    self.mac_head(tokens), target, plan.audio_masked, plan.audio_real, cfg.mac_temperature, count["audio"]
                )
        return result

    def _masked_code_losses(self, batch: PreTrainingBatch, image_masked: torch.Tensor, count: int,
                            patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """MRC (the VQ codes under each masked patch) and MRC-kl (KL divergence to the soft code assignments), at the
        `count` masked patches `image_masked` `(B, N)`."""
        log_probs = F.log_softmax(self.mrc_head(patches).float(), dim=-1)  # (M, r*r, K)
        per_side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        losses = {}
        if "mrc" in batch.tasks:
            target = gather_true(codes_by_patch(batch.image_codes, per_side), image_masked, count)  # (M, r*r)
            losses["mrc"] = F.nll_loss(log_probs.flatten(0, 1), target.flatten().long())
        if "mrc_kl" in batch.tasks:
            soft = gather_true(codes_by_patch(batch.image_code_probs, per_side), image_masked, count).float()  # (M, r*r, K)
            losses["mrc_kl"] = F.kl_div(log_probs, soft, reduction="none").sum(-1).mean()
        return losses

    def sample_level_losses(self, batch: PreTrainingBatch, views: EncodedViews,
                            generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Contrastive alignment of every modality pair, pairwise matching (ITM) with WRA, 5-way tri-modal matching,
        all on the clean views."""
        tasks, present, states, embeds = batch.tasks, batch.present, views.clean, views.embeds
        losses, tokens = {}, {}
        if tasks & {"itm", "wra", "tri_matching"}:  # each state's first cross-modal work, once for every matching row
            tokens = {m: self.opt_tri.fusion_tokens(m, states[m]) for m in states}
        if "contrastive" in tasks:
            pair_losses = [
                contrastive_loss(
                    embeds[a], embeds[b], self.opt_tri.logit_scale, present[a] & present[b], self.config.contrastive_local_loss
                )
                for a, b in _PAIRS
                if a in embeds and b in embeds and batch.counts[f"{a}+{b}"] >= 2
            ]
            if pair_losses:
                losses["contrastive"] = torch.stack(pair_losses).mean()
        if tasks & {"itm", "wra"}:
            itm_losses, wra_losses = [], []
            for a, b in _PAIRS:
                if a not in states or b not in states or batch.counts[f"{a}+{b}"] < 2:
                    continue
                valid = true_positions(present[a] & present[b], batch.counts[f"{a}+{b}"])
                itm, wra = self.pair_matching(a, b, states, embeds, valid, "wra" in tasks and a == "text", generator, tokens)
                itm_losses.append(itm)
                if wra is not None:
                    wra_losses.append(wra)
            if "itm" in tasks and itm_losses:
                losses["itm"] = torch.stack(itm_losses).mean()
            if wra_losses:
                losses["wra"] = torch.stack(wra_losses).mean()
        if "tri_matching" in tasks and len(states) == 3:
            if batch.counts["all"] >= 3:
                rows = true_positions(present["text"] & present["image"] & present["audio"], batch.counts["all"])
                losses["tri_matching"] = self.tri_matching(states, rows, generator, tokens)
        return losses

    def weigh_losses(self, losses: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The weighted sum of the `losses` by `config.objectives` (weight 1 for a task asked for by name but absent
        from the config); `None` when there is none."""
        total = None
        for name, value in losses.items():
            term = self.config.objectives.get(name, 1.0) * value
            total = term if total is None else total + term
        return total

    def _clean_outputs(self, output_attentions, output_hidden_states, batch: PreTrainingBatch) -> dict:
        """The base model's per-tower outputs on the clean inputs, when hidden states or attentions are asked for."""
        attentions, hidden = _wants_outputs(self.config, output_attentions, output_hidden_states)
        if not (attentions or _asked(hidden)):
            return {}
        base_output = self.opt_tri(
            **{name: getattr(batch, name) for name in _MODEL_INPUT_NAMES},
            output_attentions=attentions, output_hidden_states=hidden, return_dict=True,
        )
        return {name: base_output.get(name) for name in _TOWER_FIELDS}

    def pair_matching(self, a, b, states, embeds, valid, want_wra=False, generator=None, tokens=None):
        """
        ITM for the pair (a, b) of the samples `valid` (their indices `(n,)` into the batch; or a `(B,)` bool mask,
        at the cost of a host sync), on the rows given by `itm_pairs` (`config.itm_rows_per_sample`). A negative
        partner is drawn from the contrastive similarities (hard) with probability
        `config.itm_hard_negative_fraction`, else uniformly from the other rows. `tokens`: the
        [`FusionTokens`] of the states by modality (computed here when not given), gathered for every row.
        """
        base = self.opt_tri
        rows = valid.nonzero().flatten() if valid.dtype == torch.bool else valid
        with torch.no_grad():
            logits = embeds[a][rows].float() @ embeds[b][rows].float().t() * clamped_logit_scale(base.logit_scale)
        neg_a, neg_b = sample_itm_negatives(logits, self.config.itm_hard_negative_fraction, generator)
        neg_a, neg_b = rows[neg_a], rows[neg_b]
        a_index, b_index, labels = itm_pairs(rows, neg_a, neg_b, self.config.itm_rows_per_sample, generator)
        tokens = tokens or {m: base.fusion_tokens(m, states[m]) for m in (a, b)}
        parts = [tokens[a].take(a_index), tokens[b].take(b_index)]  # a before b: the order of MODALITIES
        if not want_wra:  # ITM reads the [CLS] only
            cls = base.fuse_tokens(parts)[0][:, 0]
            return F.cross_entropy(self.itm_head(cls).float(), labels), None
        fused, fusion_mask = base.fuse_tokens(parts, cls_only=False)
        itm = F.cross_entropy(self.itm_head(fused[:, 0]).float(), labels)
        # token states only: `[CLS] a | b`, without each part's first position (its unimodal [CLS]); slices of
        # lengths known on the host rather than indices found on the device
        length_a, length_b = states[a][0].shape[1], states[b][0].shape[1]
        xa, xb = slice(2, 1 + length_a), slice(2 + length_a, 1 + length_a + length_b)
        wra = wra_loss(fused[:, xa], fusion_mask[:, xa], fused[:, xb], fusion_mask[:, xb], labels.bool())
        return itm, wra

    def tri_matching(self, states, valid, generator=None, tokens=None):
        """5-way matching: which modalities of a (text, image, audio) triple belong to the same sample, for the
        samples `valid` (their indices `(n,)` into the batch; or a `(B,)` bool mask, at the cost of a host sync).
        `tokens`: as for `pair_matching`."""
        rows = valid.nonzero().flatten() if valid.dtype == torch.bool else valid
        n = rows.shape[0]
        device = rows.device
        classes = torch.randint(len(TRI_MATCHING_CLASSES), (n,), device=device, generator=generator)
        shift1 = torch.randint(1, n, (1,), device=device, generator=generator)
        shift2 = shift1
        if n > 2:  # uniform over {1..n-1} minus {shift1} (a shift of 0 would pick the sample itself)
            shift2 = torch.randint(1, n - 1, (1,), device=device, generator=generator)
            shift2 = shift2 + (shift2 >= shift1).long()
        other1 = rows[(torch.arange(n, device=device) + shift1) % n]  # always a different sample
        other2 = rows[(torch.arange(n, device=device) + shift2) % n]  # different from the sample and from other1
        text_idx = torch.where((classes == 1) | (classes == 4), other1, rows)
        image_idx = torch.where(classes == 3, other1, rows)
        audio_idx = torch.where(classes == 2, other1, torch.where(classes == 4, other2, rows))
        tokens = tokens or {m: self.opt_tri.fusion_tokens(m, states[m]) for m in MODALITIES}
        parts = [tokens["text"].take(text_idx), tokens["image"].take(image_idx), tokens["audio"].take(audio_idx)]
        cls = self.opt_tri.fuse_tokens(parts)[0][:, 0]
        return F.cross_entropy(self.tri_matching_head(cls).float(), classes)
