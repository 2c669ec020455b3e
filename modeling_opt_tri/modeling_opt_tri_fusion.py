"""The cross-modal encoder's side of [`OptTriModel`]: building its input `[CLS] text | image | audio` from the towers'
states (modality-type embeddings, one attention mask) and running it in full, at the `[CLS]` only, or at selected
positions (`fuse_selected`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .modeling_opt_tri_inputs import _check_model_inputs
from .modeling_opt_tri_layers import (
    MODALITY_AUDIO,
    MODALITY_CLS,
    MODALITY_IMAGE,
    MODALITY_TEXT,
    cls_follows_tokens,
    project_cls,
)


@dataclass
class FusionTokens:
    """The tokens of `modality` as the cross-modal encoder's first layer reads them, computed once per distinct row:
    `embeddings` `(B, n, d)` (projected to the fusion width, plus the modality-type embedding), `projected` the
    first layer's queries, keys and values of them (each `(B, n, d)`), `mask` `(B, n)`. Matching objectives that
    score several combinations of the same rows gather these instead of redoing the per-token work. When the first
    layer is an FSDP unit (its parameters are gathered only around its own forward), `embeddings` / `projected` are
    `None` and `states` `(B, n, d_m)` keeps the unimodal states for the full path ([`fuse_tokens`])."""

    modality: str
    embeddings: torch.Tensor | None
    projected: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    mask: torch.Tensor
    states: torch.Tensor | None = None

    def take(self, index: torch.Tensor) -> FusionTokens:
        """The rows `index` `(R,)`."""
        if self.projected is None:
            return FusionTokens(self.modality, None, None, self.mask[index], self.states[index])
        return FusionTokens(self.modality, self.embeddings[index], tuple(x[index] for x in self.projected), self.mask[index])


_FUSION_CODES = {"text": MODALITY_TEXT, "image": MODALITY_IMAGE, "audio": MODALITY_AUDIO}


class OptTriFusionMixin:
    """Fusion methods of [`OptTriModel`] (they read its towers, projections and `fusion_encoder`)."""

    def _encode_for_fusion(
        self, input_ids, attention_mask, token_type_ids, pixel_values, image_mask, input_features,
        audio_attention_mask, image_bool_masked_pos=None, audio_bool_masked_pos=None, tower_kwargs=None,
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[int]]:
        """Check the inputs and run the unimodal encoders: returns (the unimodal output fields, and the cross-modal
        encoder's inputs, masks and modality codes, one per given modality). With `tower_kwargs`
        (`output_attentions` / `output_hidden_states`), the fields include each tower's own output."""
        batch = _check_model_inputs(
            self.config, input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            pixel_values=pixel_values, image_mask=image_mask, input_features=input_features,
            audio_attention_mask=audio_attention_mask,
        )
        fusion_inputs: list[torch.Tensor] = []
        fusion_masks: list[torch.Tensor] = []
        modality_ids: list[int] = []
        fields: dict[str, torch.Tensor | tuple | None] = {}

        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            text_out = self.text_tower(input_ids, attention_mask, token_type_ids, **(tower_kwargs or {}))
            text_hidden = text_out.last_hidden_state
            fields["text_last_hidden_state"] = text_hidden
            fields["text_outputs"] = text_out if tower_kwargs else None
            if self.text_projection is not None:
                fields["text_embeds"] = project_cls(self.text_projection, text_hidden)
            fusion_inputs.append(self.text_to_fusion(text_hidden))
            fusion_masks.append(attention_mask.long())
            modality_ids.append(MODALITY_TEXT)
        if pixel_values is not None:
            image_out = self.image_tower(pixel_values, image_bool_masked_pos, **(tower_kwargs or {}))
            image_hidden = image_out.last_hidden_state
            fields["image_last_hidden_state"] = image_hidden
            fields["image_outputs"] = image_out if tower_kwargs else None
            if self.image_projection is not None:
                fields["image_embeds"] = project_cls(self.image_projection, image_hidden)
            if image_mask is None:
                image_mask = torch.ones(batch, dtype=torch.long, device=image_hidden.device)
            fusion_inputs.append(self.image_to_fusion(image_hidden))
            fusion_masks.append(image_mask.long()[:, None].expand(-1, image_hidden.shape[1]))
            modality_ids.append(MODALITY_IMAGE)
        if input_features is not None:
            audio_out, token_mask = self.audio_tower(
                input_features, audio_attention_mask, audio_bool_masked_pos, **(tower_kwargs or {})
            )
            audio_hidden = audio_out.last_hidden_state
            token_mask = cls_follows_tokens(token_mask)
            fields["audio_last_hidden_state"] = audio_hidden
            fields["audio_outputs"] = audio_out if tower_kwargs else None
            fields["audio_token_mask"] = token_mask
            if self.audio_projection is not None:
                fields["audio_embeds"] = project_cls(self.audio_projection, audio_hidden)
            fusion_inputs.append(self.audio_to_fusion(audio_hidden))
            fusion_masks.append(token_mask)
            modality_ids.append(MODALITY_AUDIO)

        return fields, fusion_inputs, fusion_masks, modality_ids

    def pooled_output(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_attention_mask: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """
        The cross-modal `[CLS]` state `(B, fusion_hidden)`, i.e. `forward(...).pooler_output`, with the last
        cross-modal layer computed at the `[CLS]` only (its keys and values still come from every position). The
        classification and question-answering heads use it when no hidden states or attentions are asked for.
        Inputs as for `forward`. It does not go through `forward`, so forward hooks on this module do not run.
        """
        _, inputs, masks, codes = self._encode_for_fusion(
            input_ids, attention_mask, token_type_ids, pixel_values, image_mask, input_features, audio_attention_mask
        )
        embeddings, fusion_mask, _ = self._fusion_embeddings(inputs, masks, codes)
        cls_index = torch.zeros(embeddings.shape[0], 1, dtype=torch.long, device=embeddings.device)
        selected, _ = self.fusion_encoder.forward_selected(embeddings, fusion_mask, cls_index)
        return self.fusion_layernorm(selected[:, 0])

    def fuse(
        self,
        text: tuple[torch.Tensor, torch.Tensor] | None = None,
        image: tuple[torch.Tensor, torch.Tensor] | None = None,
        audio: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Run the cross-modal encoder on unimodal encoder states, each given as `(states (B, n, d), mask (B, n))`.
        Pre-training uses it to score mismatched combinations without running the unimodal encoders again.

        Returns `(hidden (B, S, fusion_hidden), fusion_mask (B, S), modality_ids (S,))`.
        """
        hidden, mask, modality_ids, _, _ = self._fuse(*self._fusion_inputs(text, image, audio), False, False)
        return hidden, mask, modality_ids

    def fuse_selected(
        self,
        text: tuple[torch.Tensor, torch.Tensor] | None = None,
        image: tuple[torch.Tensor, torch.Tensor] | None = None,
        audio: tuple[torch.Tensor, torch.Tensor] | None = None,
        query_index: torch.Tensor | None = None,
        full_rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """
        [`~OptTriModel.fuse`] for objectives that read only some cross-modal states: the `[CLS]` (matching) or the
        masked tokens (masked modelling). The last layer runs only at the positions `query_index` `(B, k)` (default:
        the `[CLS]`) and at every position of the rows `full_rows` `(R,)` (e.g. the rows a decoder cross-attends to).
        The results equal the matching entries of `fuse()`.

        Returns `(selected (B, k, fusion_hidden), full (R, S, fusion_hidden) or None, fusion_mask (B, S),
        modality_ids (S,))`.
        """
        inputs, masks, codes = self._fusion_inputs(text, image, audio)
        embeddings, fusion_mask, modality_ids = self._fusion_embeddings(inputs, masks, codes)
        if query_index is None:
            query_index = torch.zeros(embeddings.shape[0], 1, dtype=torch.long, device=embeddings.device)
        selected, full = self.fusion_encoder.forward_selected(embeddings, fusion_mask, query_index, full_rows)
        return (
            self.fusion_layernorm(selected),
            None if full is None else self.fusion_layernorm(full),
            fusion_mask,
            modality_ids,
        )

    def fusion_tokens(self, modality: str, part: tuple[torch.Tensor, torch.Tensor]) -> FusionTokens:
        """`part` `(states (B, n, d_m), mask (B, n))` of `modality` as the first cross-modal layer reads it."""
        if callable(getattr(self.fusion_encoder.layers[0], "unshard", None)):  # an FSDP unit: run it whole
            return FusionTokens(modality, None, None, part[1].long(), part[0])
        project = {"text": self.text_to_fusion, "image": self.image_to_fusion, "audio": self.audio_to_fusion}[modality]
        code = torch.full((1,), _FUSION_CODES[modality], dtype=torch.long, device=part[0].device)
        embeddings = project(part[0]) + self.modality_embeddings(code)
        projected = self.fusion_encoder.layers[0].project_for_attention(embeddings)
        return FusionTokens(modality, embeddings, projected, part[1].long())

    def fuse_tokens(self, parts: list[FusionTokens], cls_only: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The cross-modal encoder over `[CLS] | parts...` (in the order text, image, audio, as `fuse`) from their
        [`FusionTokens`]: the `[CLS]` state `(R, 1, d)` with `cls_only`, else every state `(R, S, d)`; and the
        mask `(R, S)`. Equals `fuse_selected(...)[0]` / `fuse(...)[0]` on the same states."""
        if parts[0].projected is None:  # the first layer is an FSDP unit: the full path (same result)
            by = {part.modality: (part.states, part.mask) for part in parts}
            if cls_only:
                selected, _, mask, _ = self.fuse_selected(by.get("text"), by.get("image"), by.get("audio"))
                return selected, mask
            hidden, mask, _ = self.fuse(by.get("text"), by.get("image"), by.get("audio"))
            return hidden, mask
        rows, device = parts[0].embeddings.shape[0], parts[0].embeddings.device
        code = torch.full((1,), MODALITY_CLS, dtype=torch.long, device=device)
        cls = self.fusion_cls_token.to(parts[0].embeddings.dtype) + self.modality_embeddings(code)  # (1, 1, d)
        cls_projected = self.fusion_encoder.layers[0].project_for_attention(cls)
        embeddings = torch.cat([cls.expand(rows, -1, -1)] + [part.embeddings for part in parts], dim=1)
        projected = tuple(
            torch.cat([cls_projected[i].expand(rows, -1, -1)] + [part.projected[i] for part in parts], dim=1)
            for i in range(3)
        )
        mask = torch.cat([parts[0].mask.new_ones(rows, 1)] + [part.mask for part in parts], dim=1)
        query_index = torch.zeros(rows, 1, dtype=torch.long, device=device) if cls_only else None
        hidden = self.fusion_encoder.forward_projected(embeddings, projected, mask, query_index)
        return self.fusion_layernorm(hidden), mask

    def _fusion_inputs(self, text, image, audio) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
        inputs, masks, ids = [], [], []
        for part, project, code in (
            (text, self.text_to_fusion, MODALITY_TEXT),
            (image, self.image_to_fusion, MODALITY_IMAGE),
            (audio, self.audio_to_fusion, MODALITY_AUDIO),
        ):
            if part is not None:
                inputs.append(project(part[0]))
                masks.append(part[1].long())
                ids.append(code)
        if not inputs:
            raise ValueError("fuse() needs at least one modality")
        return inputs, masks, ids

    def _fuse(self, inputs, masks, modality_codes, output_attentions, output_hidden_states):
        embeddings, fusion_mask, modality_ids = self._fusion_embeddings(inputs, masks, modality_codes)
        hidden, all_hidden, all_attentions = self.fusion_encoder(
            embeddings, fusion_mask, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )
        return self.fusion_layernorm(hidden), fusion_mask, modality_ids, all_hidden, all_attentions

    def _fusion_embeddings(self, inputs, masks, modality_codes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`[CLS] | part | part ...` embeddings with modality-type embeddings, their 0/1 mask and the modality ids."""
        batch = inputs[0].shape[0]
        device = inputs[0].device
        lengths = [x.shape[1] for x in inputs]
        modality_ids = torch.empty(1 + sum(lengths), dtype=torch.long, device=device)
        modality_ids[:1] = MODALITY_CLS
        start = 1
        for code, length in zip(modality_codes, lengths):  # fill kernels only: no copy from the host, no sync
            modality_ids[start : start + length] = code
            start += length
        cls = self.fusion_cls_token.expand(batch, -1, -1).to(inputs[0].dtype)
        embeddings = torch.cat([cls] + inputs, dim=1) + self.modality_embeddings(modality_ids)
        fusion_mask = torch.cat([masks[0].new_ones(batch, 1)] + masks, dim=1)
        return embeddings, fusion_mask, modality_ids
