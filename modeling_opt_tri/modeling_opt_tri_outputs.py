"""The `ModelOutput` dataclasses of OPT-Tri's models and heads."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .modeling_opt_tri_layers import MODALITY_AUDIO, MODALITY_IMAGE, MODALITY_TEXT


def _nested_to_tuple(output: ModelOutput) -> tuple:
    """The fields that are set, with nested outputs (per tower) turned into tuples too (as `CLIPOutput` does)."""
    return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in ModelOutput.to_tuple(output))


def _renamed_field(old: str, new: str) -> property:
    """A read-only `old` attribute of an output that gives its field `new` with a `FutureWarning` (kept for one
    release after a rename)."""

    def read(self):
        message = f"`{old}` is deprecated and will be removed in the next release: use `{new}`"
        warnings.warn(message, FutureWarning, stacklevel=2)
        return getattr(self, new)

    return property(read, doc=f"Deprecated name of `{new}`.")


_TOWER_FIELDS = ("text_outputs", "image_outputs", "audio_outputs", "cross_modal_outputs")


def _tower_fields(base_output: ModelOutput | None) -> dict:
    """The per-tower outputs and cross-modal hidden states / attentions of an [`OptTriModelOutput`], for a head."""
    if base_output is None:
        return {}
    fields = {name: base_output.get(name) for name in _TOWER_FIELDS}
    return {**fields, "hidden_states": base_output.hidden_states, "attentions": base_output.attentions}


@dataclass
class OptTriModelOutput(ModelOutput):
    r"""
    Output of [`OptTriModel`]. `B` is the batch size, `L` the text length, `N` the number of image patches, `A` the
    number of audio tokens and `S = 1 + L' + (1 + N)' + (1 + A)'` the cross-modal length, where a primed part is
    present only when that modality was given.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(B, S, fusion_hidden)`): cross-modal encoder output.
        pooler_output (`torch.FloatTensor` of shape `(B, fusion_hidden)`): the cross-modal `[CLS]` state.
        fusion_attention_mask (`torch.LongTensor` of shape `(B, S)`): 1 for positions the cross-modal encoder
            attended to (real tokens of the modalities present in each row).
        modality_ids (`torch.LongTensor` of shape `(S,)`): 0 for `[CLS]`, 1 text, 2 image, 3 audio.
        text_embeds / image_embeds / audio_embeds (`torch.FloatTensor` of shape `(B, projection_dim)`): projected,
            L2-normalised embeddings of each unimodal encoder's `[CLS]` state (for retrieval); `None` when the
            modality was not given.
        text_last_hidden_state (`(B, L, text_hidden)`), image_last_hidden_state (`(B, 1 + N, vision_hidden)`),
            audio_last_hidden_state (`(B, 1 + A, audio_hidden)`): the unimodal encoders' outputs.
        audio_token_mask (`torch.LongTensor` of shape `(B, 1 + A)`): 1 for real audio tokens (`[CLS]` included).
        hidden_states (`tuple(torch.FloatTensor)`): cross-modal hidden states, embeddings and after each layer, when
            `output_hidden_states=True` (the same as `cross_modal_outputs.hidden_states`).
        attentions (`tuple(torch.FloatTensor)`): cross-modal attention weights `(B, heads, S, S)` per layer, when
            `output_attentions=True` (computed on the eager path).
        text_outputs / image_outputs / audio_outputs (`ModelOutput`): each given tower's own output
            (`last_hidden_state`, `hidden_states`, `attentions`), when hidden states or attentions are asked for
            (as FLAVA's `text_output` / `image_output`).
        cross_modal_outputs (`BaseModelOutputWithPooling`): the cross-modal encoder's output (`last_hidden_state`,
            `pooler_output`, `hidden_states` before the final LayerNorm, `attentions`), when asked for.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    fusion_attention_mask: torch.LongTensor | None = None
    modality_ids: torch.LongTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    text_last_hidden_state: torch.FloatTensor | None = None
    image_last_hidden_state: torch.FloatTensor | None = None
    audio_last_hidden_state: torch.FloatTensor | None = None
    audio_token_mask: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    text_outputs: ModelOutput | None = None
    image_outputs: ModelOutput | None = None
    audio_outputs: ModelOutput | None = None
    cross_modal_outputs: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return _nested_to_tuple(self)

    def modality_slice(self, modality: str) -> slice:
        """Positions of `modality` ("text", "image" or "audio") in `last_hidden_state`."""
        code = {"text": MODALITY_TEXT, "image": MODALITY_IMAGE, "audio": MODALITY_AUDIO}[modality]
        positions = (self.modality_ids == code).nonzero().flatten()
        if positions.numel() == 0:
            raise ValueError(f"No {modality} in this output: the model was called without that modality.")
        return slice(int(positions[0]), int(positions[-1]) + 1)


#: The 5 classes of tri-modal matching.
TRI_MATCHING_CLASSES = ("all_match", "image_audio_match", "text_image_match", "text_audio_match", "none_match")


@dataclass
class OptTriForPreTrainingOutput(ModelOutput):
    r"""
    Output of [`OptTriForPreTraining`]. Each `*_loss` is a scalar, or `None` when that objective was not computed in
    this call (switched off, not scheduled for this step, or its modalities absent from the batch).

    Args:
        loss: weighted sum of the computed losses (weights from `config.objectives`).
        mlm_logits (`(M, vocab)`): masked language modelling logits of the M masked tokens, in the row-major order of
            `mlm_labels != -100` (only masked tokens are decoded). mlm_labels (`(B, L)`, -100 where not masked).
        mrc_loss / mrc_kl_loss / dir_loss / dar_loss: the VQ-code objectives (computed only when the codes are given).
        text_embeds / image_embeds / audio_embeds (`(B, projection_dim)`): normalised retrieval embeddings.
        logit_scale: the contrastive logit scale (before `exp`).
        text_outputs / image_outputs / audio_outputs / cross_modal_outputs: the base model's outputs on the clean
            (unmasked) inputs, when `output_hidden_states` / `output_attentions` are asked for (see
            [`OptTriModelOutput`]).
    """

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    mrfr_loss: torch.FloatTensor | None = None
    mafr_loss: torch.FloatTensor | None = None
    mac_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    tri_matching_loss: torch.FloatTensor | None = None
    wra_loss: torch.FloatTensor | None = None
    dtr_loss: torch.FloatTensor | None = None
    mrc_loss: torch.FloatTensor | None = None
    mrc_kl_loss: torch.FloatTensor | None = None
    dir_loss: torch.FloatTensor | None = None
    dar_loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    mlm_labels: torch.LongTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None
    text_outputs: ModelOutput | None = None
    image_outputs: ModelOutput | None = None
    audio_outputs: ModelOutput | None = None
    cross_modal_outputs: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return _nested_to_tuple(self)

    def losses(self) -> dict[str, float]:
        """The computed per-objective losses as Python floats (for logging)."""
        return {k[: -len("_loss")]: float(v.detach()) for k, v in self.items() if k.endswith("_loss") and v is not None}


@dataclass
class OptTriDecoderModelOutput(ModelOutput):
    r"""
    Output of [`OptTriTextDecoder`] / [`OptTriCodeDecoder`] with `return_dict=True`.

    Args:
        last_hidden_state (`(B, n, hidden)`): the final LayerNorm's output.
        hidden_states (`tuple(torch.FloatTensor)`): the embeddings and each layer's output `(B, n, hidden)`, when
            `output_hidden_states` (a list of indices keeps those entries only).
        attentions / cross_attentions (`tuple(torch.FloatTensor)`): per layer, the self-attention weights
            `(B, heads, n, past + n)` and the cross-attention weights `(B, heads, n, S)`, when `output_attentions`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class OptTriCaptioningOutput(ModelOutput):
    r"""
    Output of [`OptTriForConditionalGeneration`].

    Args:
        loss: next-token cross-entropy over the labelled positions, when `labels` (or `shift_labels`) are given.
        logits (`(B, n, vocab)`): next-token scores.
        cache (`Cache`): the decoder's self-attention cache (`past_key_values` before transformers 5.25).
        hidden_states (`tuple(torch.FloatTensor)`): the decoder's embeddings and layer outputs `(B, n, hidden)`, when
            `output_hidden_states`.
        attentions / cross_attentions (`tuple(torch.FloatTensor)`): the decoder's self-attention `(B, heads, n,
            past + n)` and cross-attention `(B, heads, n, S)` weights per layer, when `output_attentions`.
        encoder_hidden_states (`(B, S, cross_modal_hidden)`), encoder_states_mask (`(B, S)`): the cross-modal
            states the decoder attends to (reused across generation steps) and their mask, the names `forward` takes
            them under. (`encoder_attention_mask` is the deprecated name of the mask here: as an input it is the
            conditioning text's mask.)
        encoder_outputs ([`OptTriModelOutput`]): the tri-modal model's full output (its own hidden states and
            attentions when asked for), when this call ran the encoder (not with precomputed states).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_hidden_states: torch.FloatTensor | None = None
    encoder_states_mask: torch.LongTensor | None = None
    encoder_outputs: OptTriModelOutput | None = None

    #: The mask of `encoder_hidden_states` was called `encoder_attention_mask`, the name of another mask as an input.
    encoder_attention_mask = _renamed_field("encoder_attention_mask", "encoder_states_mask")


@dataclass
class OptTriCodeDecoderOutput(ModelOutput):
    r"""
    Output of [`OptTriForTextToImage`] and [`OptTriForTextToAudio`]. `n` is the number of decoder positions: the
    image's `num_codes`, or for audio the longest clip's codes + 1 (its end code) in teacher forcing.

    Args:
        loss (`torch.FloatTensor` of shape `()`): mean next-code cross-entropy over the labelled positions (the codes,
            and for audio the end code), when `labels` are given.
        logits (`torch.FloatTensor` of shape `(B, n, vocab_size)`): next-code scores over the whole decoder vocabulary
            (`codebook_size` codes, then BOS, end, PAD).
        cache (`Cache`): the decoder's self-attention cache, when `use_cache`.
        hidden_states, attentions, cross_attentions: the code decoder's per-layer states and self-/cross-attention
            weights (as in [`OptTriCaptioningOutput`]), when asked for.
        encoder_hidden_states (`(B, S, cross_modal_hidden)`), encoder_states_mask (`(B, S)`): the cross-modal
            states the decoder attends to and their mask (`encoder_attention_mask` is its deprecated name here).
        encoder_outputs ([`OptTriModelOutput`]): the tri-modal model's full output, when this call ran the encoder.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_hidden_states: torch.FloatTensor | None = None
    encoder_states_mask: torch.LongTensor | None = None
    encoder_outputs: OptTriModelOutput | None = None

    #: The mask of `encoder_hidden_states` was called `encoder_attention_mask`, the name of another mask as an input.
    encoder_attention_mask = _renamed_field("encoder_attention_mask", "encoder_states_mask")


@dataclass
class OptTriCodeGenerationOutput(ModelOutput):
    r"""
    Output of `generate` of [`OptTriForTextToImage`] / [`OptTriForTextToAudio`]. `B'` is the batch size times
    `num_return_sequences` (the samples of one input are consecutive).

    Args:
        codes (`torch.LongTensor`): the generated codes, always in `[0, codebook_size)`: `(B', grid_size, grid_size)`
            for images (raster order); `(B', T')` for audio, `T'` the longest clip, with 0 after a clip's end.
        codes_mask (`torch.LongTensor`, same shape as `codes`): 1 for generated codes, 0 after the end of a clip (all
            1 for images). Pass it to `OptTriAudioVQModel.decode_waveform` as the code mask.
        sequences (`torch.LongTensor` of shape `(B', 1 + steps)`): the raw decoder ids: BOS, the codes, and for audio
            the end code and PAD after it.
        generate_output (`GenerateOutput`, *optional*): `GenerationMixin.generate`'s own output (scores, logits,
            attentions, hidden states, cache, beam indices) with `return_dict_in_generate=True`.
    """

    codes: torch.LongTensor | None = None
    codes_mask: torch.LongTensor | None = None
    sequences: torch.LongTensor | None = None
    generate_output: ModelOutput | None = None


@dataclass
class OptTriClassifierOutput(ModelOutput):
    r"""
    Output of [`OptTriForSequenceClassification`], [`OptTriForQuestionAnswering`] and [`OptTriForPairReasoning`].

    Args:
        loss (`torch.FloatTensor` of shape `()`): the training loss, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(B, num_labels)`): class (answer) scores before softmax / sigmoid
            (`(B, 1)` for regression, `(B, 2)` for pair reasoning).
        hidden_states (`tuple(torch.FloatTensor)`): cross-modal hidden states `(B, S, fusion_hidden)`, embeddings and
            after each layer, when `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`): cross-modal attention weights `(B, heads, S, S)` per layer, when
            `output_attentions=True`.
        text_outputs / image_outputs / audio_outputs / cross_modal_outputs: each tower's own output and the
            cross-modal encoder's, when hidden states or attentions are asked for (see [`OptTriModelOutput`]). For
            pair reasoning, `image_outputs` and `cross_modal_outputs` have `2B` rows: the first images, then the
            second images.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    text_outputs: ModelOutput | None = None
    image_outputs: ModelOutput | None = None
    audio_outputs: ModelOutput | None = None
    cross_modal_outputs: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple:
        return _nested_to_tuple(self)


@dataclass
class OptTriRetrievalOutput(ModelOutput):
    r"""
    Output of [`OptTriForRetrieval`] (dual encoder). `B` is the batch size; row `i` of the query modality is paired
    with row `i` of the gallery modality.

    Args:
        loss (`torch.FloatTensor` of shape `()`): `contrastive_loss + itm_loss_weight * itm_loss`, with
            `return_loss=True`.
        contrastive_loss (`torch.FloatTensor` of shape `()`): symmetric InfoNCE over the `(B, B)` similarities.
        itm_loss (`torch.FloatTensor` of shape `()`): matching (ITM) cross-entropy of the cross-encoder over the
            positive pairs and one hard negative per side (sampled from the similarities, as in pre-training).
        logits_per_query (`torch.FloatTensor` of shape `(B, B)`): `exp(logit_scale) * cos(query_i, gallery_j)`.
        logits_per_gallery (`torch.FloatTensor` of shape `(B, B)`): its transpose.
        query_embeds / gallery_embeds (`torch.FloatTensor` of shape `(B, projection_dim)`): projected, L2-normalised
            embeddings (the base model's `get_*_features`).
        logit_scale (`torch.FloatTensor` of shape `()`): the learnable log inverse temperature.
        text_outputs / image_outputs / audio_outputs (`BaseModelOutputWithPooling`): the query and gallery towers'
            outputs (`pooler_output` = the embeddings), when hidden states or attentions are asked for.
        logits_per_text / logits_per_image / logits_per_audio: the same logits named by modality, as CLIP and CLAP
            name them (`logits_per_<query>` is `logits_per_query`, `logits_per_<gallery>` its transpose).
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    logits_per_query: torch.FloatTensor | None = None
    logits_per_gallery: torch.FloatTensor | None = None
    query_embeds: torch.FloatTensor | None = None
    gallery_embeds: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None
    text_outputs: BaseModelOutputWithPooling | None = None
    image_outputs: BaseModelOutputWithPooling | None = None
    audio_outputs: BaseModelOutputWithPooling | None = None
    logits_per_text: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_audio: torch.FloatTensor | None = None

    def to_tuple(self) -> tuple:
        return _nested_to_tuple(self)


@dataclass
class OptTriRerankOutput(ModelOutput):
    r"""
    Output of [`OptTriForRetrieval.rerank`]. `Q` queries, `N` candidates, `k = min(top_k, N)`.

    Args:
        indices (`torch.LongTensor` of shape `(Q, k)`): candidate indices, best first by `scores`.
        scores (`torch.FloatTensor` of shape `(Q, k)`): the re-ranking score of each of `indices`
            ([`~OptTriForRetrieval.shortlist_scores`]: ITM log matching probability + weighted dual-encoder logit).
        retrieval_indices (`torch.LongTensor` of shape `(Q, k)`): the first-stage shortlist, best first by the
            dual-encoder similarity.
        similarity (`torch.FloatTensor` of shape `(Q, N)`): dual-encoder cosine similarities.
        matching_probabilities (`torch.FloatTensor` of shape `(Q, k)`): the cross-encoder's (ITM) matching
            probability of each of `indices`.
    """

    indices: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None
    retrieval_indices: torch.LongTensor | None = None
    similarity: torch.FloatTensor | None = None
    matching_probabilities: torch.FloatTensor | None = None
