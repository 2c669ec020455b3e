"""PyTorch OPT-Tri: a tri-modal (text, image, audio) pre-trainer in the line of OPT and UNITER.

Architecture (see `OptTriConfig`):

    text  -> BERT-style encoder (any `transformers` text encoder) ----\
    image -> ViT over patches ------------------------------------------> project + modality type -> cross-modal
    audio -> log-mel patch stem + pre-norm transformer ----------------/        encoder over [CLS] text | image | audio

Any non-empty subset of the three modalities is a valid input, per batch and per row (a row without a modality is
masked out of the cross-modal attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import can_return_tuple, logging

from .configuration_opt_tri import (  # noqa: F401 (PRETRAINING_OBJECTIVES is re-exported)
    PRETRAINING_OBJECTIVES,
    OptTriAudioConfig,
    OptTriCodeDecoderConfig,
    OptTriConfig,
)
from .modeling_opt_tri_outputs import (  # noqa: F401 (the public names are re-exported)
    _TOWER_FIELDS,
    _tower_fields,
    OptTriModelOutput,
    TRI_MATCHING_CLASSES,
    OptTriForPreTrainingOutput,
    OptTriDecoderModelOutput,
    OptTriCaptioningOutput,
    OptTriCodeDecoderOutput,
    OptTriCodeGenerationOutput,
    OptTriClassifierOutput,
    OptTriRetrievalOutput,
    OptTriRerankOutput,
)
from .modeling_opt_tri_layers import (  # noqa: F401 (the public names are re-exported)
    cls_follows_tokens,
    project_cls,
    MODALITY_CLS,
    MODALITY_TEXT,
    MODALITY_IMAGE,
    MODALITY_AUDIO,
    MODALITIES,
    eager_attention_forward,
    OptTriAttention,
    OptTriMLP,
    OptTriLayer,
    OptTriEncoder,
    _wants_outputs,
    _asked,
    OptTriAudioEmbeddings,
    OptTriPredictionHead,
    OptTriMaskedCodeHead,
    OptTriClassificationMLP,
    OptTriPromptLearner,
    _pooled_cls,
)
from .modeling_opt_tri_fusion import OptTriFusionMixin
from .modeling_opt_tri_towers import (  # noqa: F401 (the public names are re-exported)
    AUDIO_TOWERS,
    POOLED_TEXT_TOWERS,
    VISION_TOWERS,
    OptTriAudioModel,
    OptTriTowersMixin,
    TowerAdapter,
    audio_target_size,
    tower_adapter,
)
from .modeling_opt_tri_inputs import (  # noqa: F401 (the public names are re-exported)
    _check_token_ids,
    _check_code_inputs,
    _MODEL_INPUT_NAMES,
    _check_audio_features,
    _audio_inputs,
    _audio_input_names,
    _check_model_inputs,
    EVAL_SEED,
    _eval_generator,
    _check_retrieval_inputs,
    _required,
    _check_pair,
)
from .modeling_opt_tri_losses import (  # noqa: F401 (the public names are re-exported)
    clamped_logit_scale,
    token_cross_entropy,
    mlm_loss,
    masked_regression_loss,
    masked_frame_contrastive_loss,
    contrastive_loss,
    ipot_transport,
    wra_loss,
    patchify_images,
    patchify_audio,
    codes_by_patch,
    itm_pairs,
    sample_itm_negatives,
    _take,
    _classification_loss,
)
from .modeling_opt_tri_decoders import (  # noqa: F401 (the public names are re-exported)
    OptTriDecoderAttention,
    OptTriDecoderLayer,
    OptTriCausalDecoder,
    OptTriTextDecoder,
    _states_mask,
    _cache_argument,
    _check_decoder_ids,
    _check_generate_arguments,
    _decoder_output,
    _shift_right,
    OptTriCodeDecoder,
    OptTriCodeDecoderSizingMixin,
    build_code_decoder,
    build_masked_code_head,
    _check_sampling_arguments,
    _check_code_generate_arguments,
    _CODE_GENERATION_FIXED_SETTINGS,
    _private_rng,
    code_decoder_targets,
)
from .modeling_opt_tri_generation import OptTriCodeSamplingMixin, OptTriTextSamplingMixin
from .modeling_opt_tri_tuning import OptTriTowerTuningMixin
from .modeling_opt_tri_conversion import (  # noqa: F401 (the public names are re-exported)
    build_from_unimodal_checkpoints,
    _resize_text_vocabulary,
)
from .modeling_opt_tri_masking import (  # noqa: F401 (the public names are re-exported)
    choose_masked_modalities,
    drop_modalities,
    mask_positions,
    mask_text_tokens,
)
from .modeling_opt_tri_phases import (  # noqa: F401 (the public names are re-exported)
    OptTriPreTrainingPhases,
    RECONSTRUCTION_OBJECTIVES,
    SAMPLE_OBJECTIVES,
    TOKEN_OBJECTIVES,
    EncodedViews,
    MaskedFusion,
    MaskPlan,
    PreTrainingBatch,
    TokenLevelLosses,
)
from .modeling_opt_tri_hub import (  # noqa: F401 (the public names are re-exported)
    OptTriHubMixin,
    MODEL_CARD_MARKER,
    PIPELINE_TAGS,
    USAGE_SNIPPET,
    model_card_metadata,
    default_model_card,
    _save_hub_files,
)

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Pre-trained model base
# ----------------------------------------------------------------------------------------------------------------------


#: The pre-training heads' modules (`OptTriForPreTraining`): a pre-training checkpoint holds them, and the base model
#: and every head that does not build them load such a checkpoint quietly (a missing tower weight is still reported).
PRETRAINING_HEAD_MODULES = (
    "mlm_head", "mrfr_head", "mafr_head", "mac_head", "mrc_head", "itm_head", "tri_matching_head",
    "text_decoder", "lm_head", "image_decoder", "image_head", "audio_decoder", "audio_head",
)
_PRETRAINING_HEAD_KEYS = [rf"^{name}\." for name in PRETRAINING_HEAD_MODULES]


class OptTriPreTrainedModel(OptTriHubMixin, OptTriTowerTuningMixin, PreTrainedModel):
    config_class = OptTriConfig
    base_model_prefix = "opt_tri"
    _keys_to_ignore_on_load_unexpected = _PRETRAINING_HEAD_KEYS
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # forward() takes **kwargs but averages its losses itself: Trainer must scale for gradient accumulation
    accepts_loss_kwargs = False
    _supports_sdpa = True
    _supports_attention_backend = True
    # completed in `post_init` from the layers actually built (the towers' own lists come from transformers)
    _no_split_modules = ["OptTriLayer", "OptTriDecoderLayer"]

    def post_init(self) -> None:
        """`PreTrainedModel.post_init`, then `_no_split_modules` reduced to the block classes this model contains:
        the towers' own lists (gathered by transformers), our encoder layers and the decoder layers."""
        super().post_init()
        built = {type(module).__name__ for module in self.modules()}
        self._no_split_modules = {name for name in self._no_split_modules if name in built}
        self.register_forward_pre_hook(_audio_input_names, with_kwargs=True)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, OptTriAudioEmbeddings):
            init.trunc_normal_(module.cls_token, std=std)
            if module.mask_token is not None:
                init.trunc_normal_(module.mask_token, std=std)
        elif isinstance(module, OptTriModel):
            init.trunc_normal_(module.fusion_cls_token, std=std)
            if module.logit_scale is not None:
                init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            for embedding in (module.vision_mask_embedding, module.audio_mask_embedding):
                if embedding is not None:  # the mask embeddings of towers without their own mask token
                    init.trunc_normal_(embedding, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    @classmethod
    def from_unimodal_pretrained(
        cls,
        text: str | None = None,
        vision: str | None = None,
        audio: str | None = None,
        config: OptTriConfig | None = None,
        **config_kwargs,
    ) -> OptTriPreTrainedModel:
        """
        Build a model whose unimodal encoders start from local `transformers` checkpoint folders, as OPT started from
        BERT and wav2vec 2.0 ([`build_from_unimodal_checkpoints`] has the details). The cross-modal encoder and
        heads are newly initialised.
        """
        return build_from_unimodal_checkpoints(cls, text, vision, audio, config, **config_kwargs)

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing: bool = True):
        """`PreTrainedModel.resize_token_embeddings` for the one text vocabulary of OPT-Tri: every module over it
        (text encoder embeddings, text decoder embeddings, LM and MLM heads) is resized, and both the encoder's and
        the decoder's `vocab_size` follow, so the resized model saves and reloads. Returns the input embeddings."""
        return _resize_text_vocabulary(self, new_num_tokens, pad_to_multiple_of, mean_resizing)


# ----------------------------------------------------------------------------------------------------------------------
# The tri-modal model
# ----------------------------------------------------------------------------------------------------------------------


class OptTriModel(OptTriPreTrainedModel, OptTriFusionMixin, OptTriTowersMixin):
    """
    Text, vision and audio encoders feeding one single-stream cross-modal encoder over `[CLS] text | image | audio`.

    Example:

    ```python
    >>> model = OptTriModel(config)
    >>> out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)  # any non-empty subset of modalities
    >>> out.pooler_output.shape, out.text_embeds.shape
    ```
    """

    def __init__(
        self, config: OptTriConfig, use_mask_tokens: bool = True, use_projections: bool = True, use_audio: bool = True
    ):
        r"""
        Args:
            use_mask_tokens: build the vision and audio mask tokens (masked modelling, `*_bool_masked_pos`).
            use_projections: build the retrieval projections and `logit_scale` (`*_embeds`, `get_*_features`).
            use_audio: build the audio tower. The heads pass `False` for what their objectives never use, so that
                every parameter they hold gets a gradient (DDP without `find_unused_parameters`).
        """
        super().__init__(config)
        self._build_towers(config, use_mask_tokens, use_audio)

        fusion = config.cross_modal_config
        self.text_to_fusion = nn.Linear(config.text_config.hidden_size, fusion.hidden_size)
        self.image_to_fusion = nn.Linear(config.vision_config.hidden_size, fusion.hidden_size)
        self.audio_to_fusion = nn.Linear(config.audio_config.hidden_size, fusion.hidden_size) if use_audio else None
        self.modality_embeddings = nn.Embedding(4, fusion.hidden_size)
        self.fusion_cls_token = nn.Parameter(torch.zeros(1, 1, fusion.hidden_size))
        self.fusion_encoder = OptTriEncoder(fusion)
        self.fusion_layernorm = nn.LayerNorm(fusion.hidden_size, eps=fusion.layer_norm_eps)

        self.text_projection = self.image_projection = self.audio_projection = self.logit_scale = None
        if use_projections:
            self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
            self.image_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
            if use_audio:
                self.audio_projection = nn.Linear(config.audio_config.hidden_size, config.projection_dim, bias=False)
            self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    # -- cross-modal -------------------------------------------------------------------------------------------------

    def cross_modal_states(self, return_outputs: bool = False, **inputs) -> tuple:
        """What a decoder reads: the cross-modal states `(B, S, hidden)` and their mask `(B, S)` of `inputs` (the
        arguments of `forward`), plus this model's whole output with `return_outputs`."""
        out = self(**inputs, return_dict=True)
        if return_outputs:
            return out.last_hidden_state, out.fusion_attention_mask, out
        return out.last_hidden_state, out.fusion_attention_mask

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_attention_mask: torch.LongTensor | None = None,
        image_bool_masked_pos: torch.BoolTensor | None = None,
        audio_bool_masked_pos: torch.BoolTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> OptTriModelOutput:
        r"""
        Args:
            input_ids (`(B, L)`), attention_mask (`(B, L)`), token_type_ids (`(B, L)`): tokenised text. A row whose
                `attention_mask` is all 0 has no text.
            pixel_values (`(B, 3, H, W)`): images from [`OptTriImageProcessor`].
            image_mask (`(B,)`): 1 where the row has an image (default: all rows).
            input_features (`(B, num_mel_bins, T)`), audio_attention_mask (`(B, T)`): log-mel frames from
                [`OptTriFeatureExtractor`]. A row whose mask is all 0 has no audio. Other audio towers read their
                family's input (docs/PROCESSORS.md): the wav2vec2 family `input_values (B, samples)` with a sample
                mask, AST `(B, frames, num_mel_bins)`; `audio_mask (B,)` says which rows have audio (every OPT-Tri
                model's `forward` takes `input_values` and `audio_mask`: `_audio_input_names`).
            image_bool_masked_pos (`(B, N)` bool), audio_bool_masked_pos (`(B, A)` bool): patches / audio tokens to
                replace by the learned mask token (masked modelling in pre-training).

            output_attentions, output_hidden_states: as in `transformers` (defaults from the config). They apply to
                every tower: the output then also holds `text_outputs` / `image_outputs` / `audio_outputs` (each
                tower's own output) and `cross_modal_outputs`. `output_hidden_states` may be the index or indices of
                the states to keep (per tower; the others are `None`). The cross-modal and audio encoders compute
                attention weights on the eager path whatever the attention implementation; the text and vision
                towers follow `transformers` and return no weights under SDPA (use `attn_implementation="eager"`).

        At least one of `input_ids`, `pixel_values` and `input_features` must be given, with the same batch size.
        """
        output_attentions, output_hidden_states = _wants_outputs(self.config, output_attentions, output_hidden_states)
        wanted = output_attentions or _asked(output_hidden_states)
        tower_kwargs = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
        fields, fusion_inputs, fusion_masks, modality_ids = self._encode_for_fusion(
            input_ids, attention_mask, token_type_ids, pixel_values, image_mask, input_features,
            audio_attention_mask, image_bool_masked_pos, audio_bool_masked_pos, tower_kwargs if wanted else None,
        )
        hidden, fusion_mask, modality_ids_t, all_hidden, all_attentions = self._fuse(
            fusion_inputs, fusion_masks, modality_ids, output_attentions, output_hidden_states
        )
        if wanted:
            fields["cross_modal_outputs"] = BaseModelOutputWithPooling(
                last_hidden_state=hidden, pooler_output=hidden[:, 0], hidden_states=all_hidden, attentions=all_attentions
            )
        output = OptTriModelOutput(
            last_hidden_state=hidden,
            pooler_output=hidden[:, 0],
            fusion_attention_mask=fusion_mask,
            modality_ids=modality_ids_t,
            hidden_states=all_hidden,
            attentions=all_attentions,
            **fields,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------------------------------------------------
# Pre-training model
# ----------------------------------------------------------------------------------------------------------------------


class OptTriForPreTraining(OptTriPreTrainedModel, OptTriPreTrainingPhases, OptTriCodeDecoderSizingMixin):
    """
    OPT-Tri with every OPT/UNITER pre-training objective. One call runs each unimodal encoder once on the clean
    inputs, whose states serve every sample-level objective, and a second time only on the rows whose modality is
    token-masked, for the masked-modelling pass (FLAVA runs two full passes):

    - token level: MLM (15%, 80/10/10), MRFR (masked image patch regression to the normalised pixels), MAFR (masked
      audio patch regression to the log-mel frames) and MAC (InfoNCE between the predicted and the true frame patch,
      negatives from real frames only). With the image tokenizer's codes (`image_codes`): MRC (the VQ codes under each
      masked patch) and MRC-kl (KL divergence to the tokenizer's soft assignments `image_code_probs`).
      `masking_policy="conditional"` masks one modality per sample (UNITER), `"joint"` all of them (OPT). Modalities
      not token-masked are dropped from the cross-modal input with probability `modality_mask_probability`
      (modality-level masking; a sample always keeps one modality).
    - modality level: the decoders write a dropped modality from the cross-modal states of the others: DTR (text, by
      the text decoder), DIR (image VQ codes, by the image code decoder) and DAR (audio VQ codes, by the audio code
      decoder). DIR and DAR need `image_codes` / `audio_codes`.
    - sample level: contrastive alignment of every modality pair (learnable temperature, gathered across processes),
      pairwise matching (ITM) of every pair with negatives sampled from the contrastive similarities (hard) or
      uniformly (`itm_hard_negative_fraction`), 5-way tri-modal matching, and word-region alignment (WRA) by IPOT
      optimal transport between text and image tokens.

    `tasks` picks the objectives of one call (one task per step, the OPT/UNITER scheduling); by default every
    objective with a positive weight runs and `loss` is their weighted sum (FLAVA's scheduling).

    What is random: which modalities of a sample are token-masked (conditional policy), which tokens / patches /
    audio tokens are masked and how (80/10/10 for text), which modalities are dropped (modality-level masking),
    the ITM negatives (hard or uniform) and the `rows_per_sample=1` pairing, and the tri-modal matching classes
    and partners. In training mode these draws come from the `generator` passed to `forward`, or torch's global RNG
    when it is `None`, and dropout (in the towers; the presets' cross-modal encoder has none) from the global RNG.
    In `eval()` mode without a `generator`, a generator with a fixed seed is used, so identical calls give
    identical outputs and the global RNG is left alone.

    `forward` runs named phases, each a public method with typed inputs and outputs
    (`modeling_opt_tri_phases.py`): `prepare_batch` -> `plan_masks` -> `encode_views` -> `fuse_masked_views` ->
    `modality_reconstruction_losses` and `token_level_losses` -> `sample_level_losses` -> `weigh_losses`.
    """

    def __init__(self, config: OptTriConfig):
        super().__init__(config)
        self.opt_tri = OptTriModel(config)
        fc = config.cross_modal_config
        vc = config.vision_config
        ac = config.audio_config
        self.mlm_head = OptTriPredictionHead(fc.hidden_size, config.text_config.vocab_size, fc.hidden_act, fc.layer_norm_eps)
        patch_dim = vc.num_channels * vc.patch_size**2
        self.mrfr_head = OptTriPredictionHead(fc.hidden_size, patch_dim, fc.hidden_act, fc.layer_norm_eps)
        frame_dim = audio_target_size(ac)
        self.mafr_head = OptTriPredictionHead(fc.hidden_size, frame_dim, fc.hidden_act, fc.layer_norm_eps)
        self.mac_head = OptTriPredictionHead(fc.hidden_size, frame_dim, fc.hidden_act, fc.layer_norm_eps)
        self.itm_head = nn.Linear(fc.hidden_size, 2)
        self.tri_matching_head = nn.Linear(fc.hidden_size, len(TRI_MATCHING_CLASSES))
        # MRC / MRC-kl: a patch covers r x r cells of the image tokenizer's code grid (None when the grids disagree)
        self.mrc_head = build_masked_code_head(config)
        # the text decoder (shared with OptTriForConditionalGeneration) for DTR
        self.text_decoder = OptTriTextDecoder(config.text_decoder_config, fc.hidden_size)
        self.lm_head = nn.Linear(config.text_decoder_config.hidden_size, config.text_decoder_config.vocab_size, bias=False)
        # the code decoders (shared with OptTriForTextToImage / OptTriForTextToAudio: same names) for DIR and DAR;
        # `size_code_decoders` fits them (and the MRC head) to VQ tokenizers
        self.image_decoder, self.image_head = build_code_decoder(config, "image")
        self.audio_decoder, self.audio_head = build_code_decoder(config, "audio")
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        """The MLM head's output layer (as BERT's pre-training head); `resize_token_embeddings` also resizes the
        text decoder's `lm_head`."""
        return self.mlm_head.decoder

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.mlm_head.decoder = value

    # -- forward -----------------------------------------------------------------------------------------------------

    def forward(
        self, input_ids: torch.LongTensor | None = None, attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None, pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None, input_features: torch.FloatTensor | None = None,
        audio_attention_mask: torch.LongTensor | None = None, image_codes: torch.LongTensor | None = None,
        image_code_probs: torch.FloatTensor | None = None, audio_codes: torch.LongTensor | None = None,
        audio_codes_mask: torch.LongTensor | None = None, tasks: list[str] | tuple[str, ...] | None = None,
        output_attentions: bool | None = None, output_hidden_states: bool | int | list[int] | None = None,
        return_dict: bool | None = None, generator: torch.Generator | None = None, **kwargs,
    ) -> OptTriForPreTrainingOutput:
        r"""Inputs as for [`OptTriModel`] (clean: masking happens here), plus the VQ codes `image_codes` `(B, g, g)`,
        `image_code_probs` `(B, g, g, K)`, `audio_codes` / `audio_codes_mask` `(B, n)`; `tasks` (default: every
        objective with a positive weight); `output_*`: also the base model's per-tower outputs on the clean inputs;
        `generator`: every random draw (class docstring). Phases: `prepare_batch` -> `plan_masks` -> `encode_views`
        -> `fuse_masked_views` -> reconstruction / token-level -> `sample_level_losses` -> `weigh_losses`."""
        generator = _eval_generator(self, generator, self.opt_tri.logit_scale.device)
        batch = self.prepare_batch(
            tasks, input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            pixel_values=pixel_values, image_mask=image_mask, input_features=input_features,
            audio_attention_mask=audio_attention_mask, image_codes=image_codes, image_code_probs=image_code_probs,
            audio_codes=audio_codes, audio_codes_mask=audio_codes_mask,
        )
        plan = self.plan_masks(batch, generator)
        views = self.encode_views(batch, plan)
        losses, token_level = {}, TokenLevelLosses()
        if self.needs_masked_fusion(batch, plan):
            fusion = self.fuse_masked_views(batch, plan, views, generator)
            losses.update(self.modality_reconstruction_losses(batch, fusion))  # first: the order of the weighted sum
            token_level = self.token_level_losses(batch, plan, fusion)
            losses.update(token_level.losses)
        losses.update(self.sample_level_losses(batch, views, generator))
        output = OptTriForPreTrainingOutput(
            loss=self.weigh_losses(losses), **{f"{name}_loss": value for name, value in losses.items()},
            mlm_logits=token_level.mlm_logits, mlm_labels=plan.mlm_labels, text_embeds=views.embeds.get("text"),
            image_embeds=views.embeds.get("image"), audio_embeds=views.embeds.get("audio"),
            logit_scale=self.opt_tri.logit_scale, **self._clean_outputs(output_attentions, output_hidden_states, batch),
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------------------------------------------------
# Text decoder and generation (captioning, ASR)
# ----------------------------------------------------------------------------------------------------------------------


class OptTriForConditionalGeneration(OptTriPreTrainedModel, OptTriTextSamplingMixin, GenerationMixin):
    """
    Text generation conditioned on any subset of image and audio (captioning, ASR) and optionally text: the
    cross-modal encoder reads the inputs once, and a causal text decoder with cross-attention writes the text.

    Example:

    ```python
    >>> ids = model.generate(pixel_values=pixels, max_new_tokens=20)                  # captioning
    >>> ids = model.generate(input_features=feats, audio_attention_mask=mask, num_beams=3)  # ASR
    >>> processor.batch_decode(ids, skip_special_tokens=True)
    ```

    Decoder prompts (`input_ids`) may be left-padded (`attention_mask` 0): positions count real tokens only, so a
    padded batch generates what each prompt generates alone.
    """

    def __init__(self, config: OptTriConfig):
        super().__init__(config)
        self.opt_tri = OptTriModel(config)
        self.text_decoder = OptTriTextDecoder(config.text_decoder_config, config.cross_modal_config.hidden_size)
        self.lm_head = nn.Linear(config.text_decoder_config.hidden_size, config.text_decoder_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The decoder's token embeddings (this head's `input_ids` are decoder tokens)."""
        return self.text_decoder.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_decoder.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def encode(
        self,
        pixel_values=None,
        image_mask=None,
        input_features=None,
        audio_attention_mask=None,
        encoder_input_ids=None,
        encoder_attention_mask=None,
        output_attentions: bool | None = None,
        output_hidden_states=None,
        return_outputs: bool = False,
    ):
        """Cross-modal states `(B, S, hidden)` and mask `(B, S)` of the conditioning inputs (and the tri-modal model's
        output with `return_outputs`)."""
        if pixel_values is None and input_features is None and encoder_input_ids is None:
            raise ValueError("Nothing to condition on: pass pixel_values and/or input_features (or encoder_input_ids)")
        return self.opt_tri.cross_modal_states(
            return_outputs, input_ids=encoder_input_ids, attention_mask=encoder_attention_mask,
            pixel_values=pixel_values, image_mask=image_mask, input_features=input_features,
            audio_attention_mask=audio_attention_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_attention_mask: torch.LongTensor | None = None,
        encoder_input_ids: torch.LongTensor | None = None,
        encoder_attention_mask: torch.LongTensor | None = None,
        encoder_hidden_states: torch.FloatTensor | None = None,
        encoder_states_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | list[int] | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> OptTriCaptioningOutput:
        r"""
        Args:
            input_ids (`(B, n)`), attention_mask (`(B, past + n)`): decoder tokens (start with `[CLS]`, the BOS);
                padding (left or right) is 0 in the mask.
            pixel_values, image_mask, input_features, audio_attention_mask: the conditioning image and/or audio.
            encoder_input_ids, encoder_attention_mask: optional conditioning text (e.g. a question).
            encoder_hidden_states, encoder_states_mask: precomputed cross-modal states (from `encode`), which skip
                the encoder.
            labels (`(B, n)`): target tokens aligned with the logits (position `t` predicts `labels[:, t]`), -100
                where ignored. When given without `input_ids`, the decoder input is `labels` shifted right behind the
                BOS token (teacher forcing, as in BART/Whisper).
            shift_labels (`(B, n)`, keyword): targets already aligned with the logits (transformers' name); they
                take precedence over `labels` for the loss.
            cache (`Cache`), use_cache: the decoder's self-attention cache (`past_key_values=` is accepted with a
                deprecation warning).
            position_ids (`(B, n)`): decoder positions (default: counted over the real tokens of `attention_mask`).
            output_attentions, output_hidden_states (`bool`, or for hidden states a list of indices), return_dict.
        """
        dc = self.config.text_decoder_config
        cache = _cache_argument(cache, kwargs)
        shift_labels = kwargs.pop("shift_labels", None)
        output_attentions, output_hidden_states = _wants_outputs(self.config, output_attentions, output_hidden_states)
        encoder_outputs = None
        if encoder_hidden_states is None:
            encoder_hidden_states, encoder_states_mask, encoder_outputs = self.encode(
                pixel_values, image_mask, input_features, audio_attention_mask, encoder_input_ids,
                encoder_attention_mask, output_attentions, output_hidden_states, return_outputs=True,
            )
        encoder_states_mask = _states_mask(encoder_hidden_states, encoder_states_mask)
        if input_ids is None:
            if labels is None:
                raise ValueError("Pass input_ids (decoder tokens) or labels")
            input_ids = _shift_right(labels, dc.bos_token_id, dc.pad_token_id)
            if attention_mask is None:
                attention_mask = (input_ids != dc.pad_token_id).long()
                attention_mask[:, 0] = 1
        _check_decoder_ids(input_ids, dc.vocab_size, encoder_hidden_states.shape[0], "input_ids (decoder tokens)")
        use_cache = use_cache if use_cache is not None else (dc.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config.get_text_config(decoder=True))
        decoded = self.text_decoder(
            input_ids, attention_mask, encoder_hidden_states, encoder_states_mask, cache if use_cache else None,
            position_ids, output_attentions, output_hidden_states, return_dict=True,
        )
        return _decoder_output(
            OptTriCaptioningOutput, self.config, self.lm_head(decoded.last_hidden_state),
            shift_labels if shift_labels is not None else labels, cache if use_cache else None, decoded,
            encoder_hidden_states, encoder_states_mask, encoder_outputs, return_dict,
        )


# ----------------------------------------------------------------------------------------------------------------------
# Code decoders: images and audio as discrete VQ codes (text-to-image, text-to-audio)
#
# A causal decoder with cross-attention to the cross-modal encoder's states writes the codes of a VQ tokenizer
# (`OptTriImageVQModel` / `OptTriAudioVQModel`, separate checkpoints), which then turns them into pixels or a waveform.
# Code ids are the codebook indices themselves; BOS, the end-of-audio code and PAD follow them (see
# `OptTriCodeDecoderConfig`), so there is no +1 shift to get wrong, and sampling is restricted to real codes.
# ----------------------------------------------------------------------------------------------------------------------


class OptTriCodeGenerationModel(
    OptTriPreTrainedModel, OptTriCodeSamplingMixin, OptTriCodeDecoderSizingMixin, GenerationMixin
):
    """
    Shared base of [`OptTriForTextToImage`] and [`OptTriForTextToAudio`]: the tri-modal model (`self.opt_tri`, so a
    pre-training checkpoint loads into it), a code decoder (`self.<modality>_decoder`, an [`OptTriCodeDecoder`]) and
    a code head (`self.<modality>_head`), configured by `config.<modality>_decoder_config`.

    The conditioning is any non-empty subset of text, image and audio, read once by the cross-modal encoder (text for
    text-to-image and text-to-speech; an image for image-to-audio, and so on). `input_ids` are the text prompt, so
    the input embeddings (what `resize_token_embeddings` resizes) are the text encoder's; the output embeddings are
    the code head, whose vocabulary is the VQ tokenizer's codebook.
    """

    modality: str = "image"

    def __init__(self, config: OptTriConfig):
        super().__init__(config)
        self.opt_tri = OptTriModel(config)
        decoder, head = build_code_decoder(config, self.modality)
        setattr(self, f"{self.modality}_decoder", decoder)
        setattr(self, f"{self.modality}_head", head)
        self.post_init()
        self._set_generation_ids()

    def _set_generation_ids(self) -> None:
        """GenerationMixin's default special ids (taken from the text decoder) replaced by the code decoder's."""
        dc = self.decoder_config
        if getattr(self, "generation_config", None) is not None:
            self.generation_config.bos_token_id = dc.bos_token_id
            self.generation_config.eos_token_id = dc.eos_token_id if self.modality == "audio" else None
            self.generation_config.pad_token_id = dc.pad_token_id

    # -- parts ---------------------------------------------------------------------------------------------------------

    @property
    def decoder_config(self) -> OptTriCodeDecoderConfig:
        """`config.image_decoder_config` or `config.audio_decoder_config`."""
        return getattr(self.config, f"{self.modality}_decoder_config")

    @property
    def code_decoder(self) -> OptTriCodeDecoder:
        return getattr(self, f"{self.modality}_decoder")

    @property
    def code_head(self) -> nn.Linear:
        return getattr(self, f"{self.modality}_head")

    def get_input_embeddings(self) -> nn.Module:
        """The text encoder's word embeddings (`input_ids` are the text prompt)."""
        return self.opt_tri.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.opt_tri.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.code_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        setattr(self, f"{self.modality}_head", value)

    def encode(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        pixel_values=None,
        image_mask=None,
        input_features=None,
        audio_attention_mask=None,
        output_attentions: bool | None = None,
        output_hidden_states=None,
        return_outputs: bool = False,
    ):
        """Cross-modal states `(B, S, hidden)` and mask `(B, S)` of the conditioning inputs (any non-empty subset of
        text `(B, L)`, image `(B, 3, H, W)` and audio `(B, n_mels, T)`), and with `return_outputs` the tri-modal
        model's output."""
        if input_ids is None and pixel_values is None and input_features is None:
            raise ValueError(
                f"Nothing to condition the {self.modality} on: pass input_ids (the text prompt), and/or pixel_values "
                "or input_features"
            )
        if input_ids is not None and (input_ids.ndim != 2 or input_ids.shape[1] == 0):
            raise ValueError(
                f"input_ids (the text prompt) must have shape (B, L) with L >= 1, got {tuple(input_ids.shape)}"
            )
        return self.opt_tri.cross_modal_states(
            return_outputs, input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            pixel_values=pixel_values, image_mask=image_mask, input_features=input_features,
            audio_attention_mask=audio_attention_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )

    # -- teacher forcing -----------------------------------------------------------------------------------------------

    def _labels_to_targets(
        self, labels: torch.Tensor, labels_mask: torch.Tensor | None
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """Validate `labels` and return (decoder inputs, targets), each `(B, n)` (audio: `n` = codes + 1)."""
        return code_decoder_targets(self.decoder_config, labels, labels_mask)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        labels_mask: torch.LongTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        encoder_hidden_states: torch.FloatTensor | None = None,
        encoder_states_mask: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | list[int] | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> OptTriCodeDecoderOutput:
        r"""
        Args:
            input_ids (`(B, L)`), attention_mask (`(B, L)`), token_type_ids (`(B, L)`): the text prompt.
            pixel_values (`(B, 3, H, W)`), image_mask (`(B,)`), input_features (`(B, n_mels, T)`),
                audio_attention_mask (`(B, T)`): further (or other) conditioning inputs.
            labels (`torch.LongTensor`): target codes from the VQ tokenizer, in `[0, codebook_size)`: images
                `(B, grid_size, grid_size)` or `(B, num_codes)` (raster order; -100 ignores a position); audio
                `(B, T')`, right-padded with -100 (or with `labels_mask` 0), `T' <= num_codes`. The decoder input
                is BOS followed by the labels (teacher forcing), and for audio the target after a clip's last code is
                the end code.
            labels_mask (same shape as `labels`, *optional*): 0 where `labels` are padding (e.g. the `codes_mask` of
                `OptTriAudioVQModel.encode(..., return_mask=True)`).
            decoder_input_ids (`(B, n)`), decoder_attention_mask (`(B, past + n)`): decoder ids (BOS, codes) for
                step-by-step decoding, instead of `labels`.
            encoder_hidden_states (`(B, S, cross_modal_hidden)`), encoder_states_mask (`(B, S)`): precomputed
                cross-modal states (from `encode`), which skip the encoder.
            cache (`Cache`), use_cache: the decoder's self-attention cache (`past_key_values=` is accepted with a
                deprecation warning).
            output_attentions, output_hidden_states (`bool`, or for hidden states a list of indices), return_dict.

        Returns:
            [`OptTriCodeDecoderOutput`] (a tuple when `return_dict=False`).
        """
        dc = self.decoder_config
        cache = _cache_argument(cache, kwargs)
        output_attentions, output_hidden_states = _wants_outputs(self.config, output_attentions, output_hidden_states)
        encoder_outputs = None
        if encoder_hidden_states is None:
            encoder_hidden_states, encoder_states_mask, encoder_outputs = self.encode(
                input_ids, attention_mask, token_type_ids, pixel_values, image_mask, input_features,
                audio_attention_mask, output_attentions, output_hidden_states, return_outputs=True,
            )
        encoder_states_mask = _states_mask(encoder_hidden_states, encoder_states_mask)
        targets = None
        if labels is not None:
            if decoder_input_ids is not None:
                raise ValueError(
                    "Pass either labels (teacher forcing builds the decoder input from them) or decoder_input_ids, "
                    "not both"
                )
            decoder_input_ids, targets = self._labels_to_targets(labels, labels_mask)
        elif decoder_input_ids is None:
            raise ValueError(f"Pass labels (the target {self.modality} codes) or decoder_input_ids")
        _check_decoder_ids(decoder_input_ids, dc.vocab_size, encoder_hidden_states.shape[0], "decoder_input_ids")
        if use_cache is None:
            use_cache = dc.use_cache and not self.training and labels is None
        if use_cache and cache is None:
            cache = DynamicCache(config=dc)
        decoded = self.code_decoder(
            decoder_input_ids, decoder_attention_mask, encoder_hidden_states, encoder_states_mask,
            cache if use_cache else None, None, output_attentions, output_hidden_states, return_dict=True,
        )
        return _decoder_output(
            OptTriCodeDecoderOutput, self.config, self.code_head(decoded.last_hidden_state), targets,
            cache if use_cache else None, decoded, encoder_hidden_states, encoder_states_mask, encoder_outputs,
            return_dict,
        )

    # -- sampling ------------------------------------------------------------------------------------------------------

class OptTriForTextToImage(OptTriCodeGenerationModel):
    """
    Text-to-image generation (and DIR-style image generation from any conditioning): the cross-modal encoder reads
    the prompt, a causal image code decoder writes the `grid_size x grid_size` codes of an [`OptTriImageVQModel`] in
    raster order, and the tokenizer decodes them into pixels.

    Example:

    ```python
    >>> batch = processor(text=["a red circle"], return_tensors="pt")
    >>> images = model.generate_images(**batch, image_tokenizer=vq, seed=0, top_k=64)   # list of PIL images
    >>> loss = model(**batch, labels=vq.encode(pixel_values)).loss                       # teacher forcing
    ```
    """

    modality = "image"

    @torch.no_grad()
    def generate_images(self, image_tokenizer, return_codes: bool = False, **generate_kwargs):
        """
        Generate codes with `generate(**generate_kwargs)` (the prompt and the sampling settings) and decode them with
        `image_tokenizer`, an [`OptTriImageVQModel`] with this decoder's codebook size and code grid.

        Returns:
            A list of `B'` RGB `PIL.Image`s of side `grid_size * image_tokenizer.config.downsample` (the tokenizer's
            `image_size`), or `(images, OptTriCodeGenerationOutput)` with `return_codes=True`.
        """
        self._check_tokenizer(image_tokenizer, "image")
        out = self.generate(**generate_kwargs)
        device = next(image_tokenizer.parameters()).device
        images = image_tokenizer.to_pil(image_tokenizer.decode(out.codes.to(device)))
        return (images, out) if return_codes else images


class OptTriForTextToAudio(OptTriCodeGenerationModel):
    """
    Text-to-audio generation (text-to-speech on speech data; image-to-audio with `pixel_values`): the cross-modal
    encoder reads the conditioning, a causal audio code decoder writes the codes of an [`OptTriAudioVQModel`] (one
    per `frames_per_code` log-mel frames) until it writes the end-of-audio code (`eos_token_id`) or reaches
    `num_codes`, and the tokenizer turns them into log-mel frames and, by Griffin-Lim, a waveform.

    Example:

    ```python
    >>> batch = processor(text=["a red circle"], return_tensors="pt")
    >>> waveforms, rate = model.generate_audio(**batch, audio_tokenizer=vq, seed=0)   # float32 arrays, Hz
    >>> codes, mask = vq.encode(features, frame_mask, return_mask=True)
    >>> loss = model(**batch, labels=codes, labels_mask=mask).loss                    # teacher forcing
    ```
    """

    modality = "audio"

    @torch.no_grad()
    def generate_audio(
        self, audio_tokenizer, griffin_lim_iters: int | None = None, return_codes: bool = False, **generate_kwargs
    ):
        """
        Generate codes with `generate(**generate_kwargs)` and vocode them with `audio_tokenizer`, an
        [`OptTriAudioVQModel`] with this decoder's codebook size (`decode_waveform`: decode to log-mel, Griffin-Lim
        with `griffin_lim_iters` iterations, default the tokenizer's; its phase seed is `generate_kwargs["seed"]` or
        0). `min_new_codes` defaults to the fewest codes whose waveform the tokenizer's STFT can analyse (its
        reflect padding of `n_fft // 2` samples needs a longer signal), 1 code for the default settings.

        Returns:
            `(waveforms, sampling_rate)`: a list of `B'` float32 1-D numpy arrays (each cut to its clip's codes:
            `(codes * frames_per_code - 1) * hop_length` samples) and the tokenizer's sampling rate in Hz; or
            `(waveforms, sampling_rate, OptTriCodeGenerationOutput)` with `return_codes=True`.
        """
        self._check_tokenizer(audio_tokenizer, "audio")
        tc = audio_tokenizer.config
        shortest = -(-((tc.n_fft // 2) // tc.hop_length + 2) // tc.frames_per_code)  # ceil(frames / frames_per_code)
        generate_kwargs.setdefault("min_new_codes", shortest)
        if generate_kwargs["min_new_codes"] < shortest:
            raise ValueError(
                f"min_new_codes={generate_kwargs['min_new_codes']} is too short for Griffin-Lim with this tokenizer "
                f"(n_fft {tc.n_fft}, hop_length {tc.hop_length}, {tc.frames_per_code} frames per code): use at least "
                f"{shortest}"
            )
        out = self.generate(**generate_kwargs)
        device = next(audio_tokenizer.parameters()).device
        seed = generate_kwargs.get("seed")
        waveforms, sampling_rate = audio_tokenizer.decode_waveform(
            out.codes.to(device), out.codes_mask.to(device), num_iters=griffin_lim_iters, seed=seed or 0
        )
        return (waveforms, sampling_rate, out) if return_codes else (waveforms, sampling_rate)


# ----------------------------------------------------------------------------------------------------------------------
# Downstream heads: classification, VQA/AQA, retrieval (dual encoder + ITM re-ranking), NLVR2-style pair reasoning.
# Each holds the tri-modal model as `self.opt_tri` (base_model_prefix), so a pre-training checkpoint loads into it.
# ----------------------------------------------------------------------------------------------------------------------


#: State-dict keys of modules a head no longer builds (its objectives never use them); older checkpoints of the head
#: hold them, and they load quietly.
_MASK_TOKEN_KEYS = [r"vision_model\.embeddings\.mask_token$", r"audio_model\.embeddings\.mask_token$",
                    r"(^|\.)(vision|audio)_mask_embedding$", r"audio_model\.masked_spec_embed$"]
_PROJECTION_KEYS = [r"(text|image|audio)_projection\.weight$", r"(^|\.)logit_scale$"]
_AUDIO_TOWER_KEYS = [r"(^|\.)audio_model\.", r"(^|\.)audio_to_fusion\."]


class OptTriForSequenceClassification(OptTriPreTrainedModel):
    """
    Classification / regression from any non-empty subset of text, image and audio: the cross-modal `[CLS]` state
    goes through dropout and a linear layer to `config.num_labels` scores. `config.problem_type` is
    `"single_label_classification"` (cross-entropy, labels `(B,)` ids), `"multi_label_classification"` (binary
    cross-entropy, labels `(B, num_labels)` in {0, 1}) or `"regression"` (MSE, labels `(B,)` or `(B, num_labels)`);
    when unset it is inferred as in BERT (`num_labels == 1` -> regression, integer labels -> single-label, else
    multi-label). The dropout rate is `config.classifier_dropout` (0.1 when unset).

    Prompt tuning (CoOp): after `enable_prompt_tuning(class_token_ids, context_length, modality)` the model classifies
    an image (or an audio clip) by the scaled cosine similarity between its retrieval embedding and the text
    embeddings of `[CLS] v_1 ... v_M <class name> [SEP]`, where the context vectors `v` are learnt
    ([`OptTriPromptLearner`]). The setting lives in the config, so it survives `save_pretrained`/`from_pretrained`.

    Unused parameters: the retrieval projections and `logit_scale` serve prompt tuning only, which may be switched on
    after loading, so they are built (and loaded from a pre-trained checkpoint) but get no gradient from the linear
    classifier; with prompt tuning on, the classifier gets none. The mask tokens are not built.

    Example:

    ```python
    >>> config = OptTriConfig.from_pretrained(ckpt, num_labels=6, id2label=..., label2id=...)
    >>> model = OptTriForSequenceClassification.from_pretrained(ckpt, config=config)
    >>> out = model(pixel_values=pixels, input_features=feats, audio_attention_mask=mask, labels=labels)
    >>> out.loss, out.logits.shape  # (), (B, 6)
    ```
    """

    _keys_to_ignore_on_load_unexpected = _MASK_TOKEN_KEYS + _PRETRAINING_HEAD_KEYS

    def __init__(self, config: OptTriConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.opt_tri = OptTriModel(config, use_mask_tokens=False)  # projections: CoOp prompt tuning
        dropout = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(0.1 if dropout is None else dropout)
        self.classifier = nn.Linear(config.cross_modal_config.hidden_size, config.num_labels)
        self.prompt_learner = OptTriPromptLearner(config) if getattr(config, "prompt_class_token_ids", None) else None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, OptTriPromptLearner):
            init.normal_(module.context, std=0.02)  # CoOp's initialisation of generic context vectors

    def enable_prompt_tuning(self, class_token_ids: list[list[int]], context_length: int = 4, modality: str = "image"):
        """
        Switch to CoOp prompt classification. `class_token_ids`: one tokenised class name per label, with the
        special tokens (`processor.tokenizer(class_names)["input_ids"]`); `modality`: `"image"` or `"audio"`, the
        input compared with the class prompts. Returns the new [`OptTriPromptLearner`] (its `context` is the only
        parameter that CoOp trains).
        """
        if modality not in ("image", "audio"):
            raise ValueError(f"prompt tuning compares class prompts with 'image' or 'audio', got {modality!r}")
        if len(class_token_ids) != self.num_labels:
            raise ValueError(f"{len(class_token_ids)} class names for num_labels={self.num_labels}")
        self.config.prompt_class_token_ids = [list(map(int, ids)) for ids in class_token_ids]
        self.config.prompt_context_length = int(context_length)
        self.config.prompt_modality = modality
        self.prompt_learner = OptTriPromptLearner(self.config).to(self.classifier.weight.device)
        init.normal_(self.prompt_learner.context, std=0.02)
        return self.prompt_learner

    def prompt_logits(self, pixel_values=None, input_features=None, audio_attention_mask=None) -> torch.Tensor:
        """CoOp logits `(B, num_labels)`: `exp(logit_scale) * cos(input embedding, class prompt embedding)`."""
        base = self.opt_tri
        modality = getattr(self.config, "prompt_modality", "image")
        if modality == "image":
            if pixel_values is None:
                raise ValueError("This prompt-tuned classifier compares images with the class prompts: pass pixel_values")
            features = base.get_image_features(pixel_values).pooler_output
        else:
            if input_features is None:
                raise ValueError("This prompt-tuned classifier compares audio with the class prompts: pass input_features")
            features = base.get_audio_features(input_features, audio_attention_mask).pooler_output
        classes = self.prompt_learner(base.text_model, base.text_projection)
        return clamped_logit_scale(base.logit_scale) * features @ classes.t()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_attention_mask: torch.LongTensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> OptTriClassifierOutput:
        r"""
        Inputs as for [`OptTriModel`] (any non-empty subset of the modalities).

        Args:
            labels: `(B,)` class ids (single-label), `(B, num_labels)` 0/1 targets (multi-label) or `(B,)` /
                `(B, num_labels)` floats (regression).
            output_attentions, output_hidden_states: add the towers' and the cross-modal encoder's outputs (see
                [`OptTriModelOutput`]); a prompt-tuned classifier (no cross-modal pass) returns none.
        """
        base_output = None
        if self.prompt_learner is not None:
            logits = self.prompt_logits(pixel_values, input_features, audio_attention_mask)
        else:
            pooled, base_output = _pooled_cls(
                self.opt_tri, output_attentions, output_hidden_states, input_ids=input_ids,
                attention_mask=attention_mask, token_type_ids=token_type_ids, pixel_values=pixel_values,
                image_mask=image_mask, input_features=input_features, audio_attention_mask=audio_attention_mask,
            )
            logits = self.classifier(self.dropout(pooled))
        loss = _classification_loss(self.config, logits, labels) if labels is not None else None
        output = OptTriClassifierOutput(loss=loss, logits=logits, **_tower_fields(base_output))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


class OptTriForQuestionAnswering(OptTriPreTrainedModel):
    """
    Visual / audio question answering as classification over a closed answer vocabulary (UNITER, VQAv2): the
    question is the text input, the context any subset of image and audio. The cross-modal `[CLS]` state goes
    through UNITER's 2-layer MLP (`Linear(h, 2h) -> GELU -> LayerNorm -> Linear(2h, num_answers)`).
    `config.num_labels` is the number of answers and `config.id2label` maps answer ids to answer strings.

    `labels` are either answer ids `(B,)` (cross-entropy; -100 ignores a row) or VQAv2 soft scores
    `(B, num_answers)` in [0, 1] (binary cross-entropy with logits, averaged and multiplied by `num_answers`, as in
    UNITER and the VQA baselines).

    Example:

    ```python
    >>> out = model(input_ids=question_ids, attention_mask=mask, pixel_values=pixels)
    >>> answers = [model.config.id2label[i] for i in out.logits.argmax(-1).tolist()]
    ```
    """

    _keys_to_ignore_on_load_unexpected = _MASK_TOKEN_KEYS + _PROJECTION_KEYS + _PRETRAINING_HEAD_KEYS

    def __init__(self, config: OptTriConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.opt_tri = OptTriModel(config, use_mask_tokens=False, use_projections=False)
        fc = config.cross_modal_config
        self.classifier = OptTriClassificationMLP(
            fc.hidden_size, 2 * fc.hidden_size, config.num_labels, fc.hidden_act, fc.layer_norm_eps
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_attention_mask: torch.LongTensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> OptTriClassifierOutput:
        r"""
        Inputs as for [`OptTriModel`]; the question is `input_ids`.

        Args:
            labels: answer ids `(B,)` or soft answer scores `(B, num_answers)` in [0, 1].
        """
        pooled, base_output = _pooled_cls(
            self.opt_tri, output_attentions, output_hidden_states, input_ids=input_ids, attention_mask=attention_mask,
            token_type_ids=token_type_ids, pixel_values=pixel_values, image_mask=image_mask,
            input_features=input_features, audio_attention_mask=audio_attention_mask,
        )
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            if labels.ndim == 1:
                loss = F.cross_entropy(logits.float(), labels.long(), ignore_index=-100)
            elif labels.ndim == 2 and labels.shape == logits.shape:
                if labels.is_floating_point() and bool(((labels < 0) | (labels > 1)).any()):
                    raise ValueError("Soft answer scores must lie in [0, 1]")
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float()) * labels.shape[1]
            else:
                raise ValueError(
                    f"labels must be answer ids (B,) or soft scores (B, {self.num_labels}); got {tuple(labels.shape)}"
                )
        output = OptTriClassifierOutput(loss=loss, logits=logits, **_tower_fields(base_output))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


class OptTriForRetrieval(OptTriPreTrainedModel):
    """
    Cross-modal retrieval over any pair of modalities, in two stages:

    - **dual encoder** (fast search): the base model's projected, normalised `get_*_features`; `forward` returns the
      `(B, B)` similarity logits of a paired batch and, with `return_loss=True`, the symmetric contrastive loss
      (plus the ITM loss of the cross-encoder on hard negatives, weighted by `itm_loss_weight`, so that fine-tuning
      also trains the re-ranker).
    - **cross-encoder** (re-ranking): `rerank` scores the dual encoder's top-k candidates of each query with
      `itm_head` (named as in [`OptTriForPreTraining`], so the pre-trained matching head loads) on the fused `[CLS]`
      state of the (query, candidate) pair, and reorders them by that matching probability.

    No `transformers` Auto class fits; the checkpoint still carries the Hub files, so without our package it loads
    with `get_class_from_dynamic_module("modeling_opt_tri.OptTriForRetrieval", folder).from_pretrained(folder)`.
    (`AutoModelForZeroShotImageClassification` maps to it, for the zero-shot pipeline: docs/PIPELINES.md.)

    Unused parameters: a call reads the towers of its (query, gallery) pair only, so fine-tuning one pair leaves the
    third tower without gradients (freeze it, or let DDP find unused parameters). The mask tokens, which only
    masked modelling reads, are not built.
    """

    _keys_to_ignore_on_load_unexpected = _MASK_TOKEN_KEYS + _PRETRAINING_HEAD_KEYS

    def __init__(self, config: OptTriConfig):
        super().__init__(config)
        self.opt_tri = OptTriModel(config, use_mask_tokens=False)
        self.itm_head = nn.Linear(config.cross_modal_config.hidden_size, 2)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        _save_hub_files(self, save_directory)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_text_features(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs):
        """[`OptTriModel.get_text_features`]: `pooler_output` is the dual encoder's text embedding."""
        return self.opt_tri.get_text_features(input_ids, attention_mask, token_type_ids, **kwargs)

    def get_image_features(self, pixel_values, **kwargs):
        """[`OptTriModel.get_image_features`]: `pooler_output` is the dual encoder's image embedding."""
        return self.opt_tri.get_image_features(pixel_values, **kwargs)

    def get_audio_features(self, input_features, audio_attention_mask=None, **kwargs):
        """[`OptTriModel.get_audio_features`]: `pooler_output` is the dual encoder's audio embedding."""
        return self.opt_tri.get_audio_features(input_features, audio_attention_mask, **kwargs)

    def encode(self, modality: str, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """
        One unimodal pass: the normalised retrieval embeddings `(B, projection_dim)` (`get_<modality>_features(...)
        .pooler_output`) and the encoder states with their mask `((B, n, d), (B, n))`, which the cross-encoder fuses.
        """
        features, part = self._encode_tower(modality, inputs, {})
        return features.pooler_output, part

    def _encode_tower(self, modality: str, inputs: dict, tower_kwargs: dict) -> tuple[BaseModelOutputWithPooling, tuple]:
        """`encode`, returning the tower's whole output (hidden states / attentions as `tower_kwargs` ask)."""
        base = self.opt_tri
        if modality == "text":
            input_ids = _required(inputs, "input_ids", modality)
            mask = inputs.get("attention_mask")
            mask = torch.ones_like(input_ids) if mask is None else mask
            out = base.text_tower(input_ids, mask, inputs.get("token_type_ids"), **tower_kwargs)
            return base._features(out, base.text_projection), (out.last_hidden_state, mask.long())
        if modality == "image":
            out = base.image_tower(_required(inputs, "pixel_values", modality), **tower_kwargs)
            mask = torch.ones(out.last_hidden_state.shape[:2], dtype=torch.long, device=out.last_hidden_state.device)
            return base._features(out, base.image_projection), (out.last_hidden_state, mask)
        if modality == "audio":  # `input_values` / `audio_mask`: the wav2vec2 family's names (`_audio_inputs`)
            features, audio_mask = _audio_inputs(self.config, inputs.get("input_features"), inputs.get("input_values"),
                                                 inputs.get("audio_attention_mask"), inputs.get("audio_mask"))
            _required({"input_features": features}, "input_features", modality)
            out, mask = base.audio_tower(features, audio_mask, **tower_kwargs)
            return base._features(out, base.audio_projection), (out.last_hidden_state, mask)
        raise ValueError(f"modality must be 'text', 'image' or 'audio', got {modality!r}")

    def matching_logits(self, modality_a: str, part_a, modality_b: str, part_b) -> torch.Tensor:
        """ITM logits `(n, 2)` (class 1 = match) of aligned rows of two `(states, mask)` parts from `encode`."""
        parts = {modality_a: part_a, modality_b: part_b}
        cls = self.opt_tri.fuse_selected(parts.get("text"), parts.get("image"), parts.get("audio"))[0][:, 0]
        return self.itm_head(cls)

    def matching_score(self, query_modality: str = "text", gallery_modality: str = "image", **inputs) -> torch.Tensor:
        """Cross-encoder matching probability `(B,)` of the aligned pairs (row i of one modality with row i of the other)."""
        _check_pair(query_modality, gallery_modality)
        _, part_q = self.encode(query_modality, inputs)
        _, part_g = self.encode(gallery_modality, inputs)
        return self.matching_logits(query_modality, part_q, gallery_modality, part_g).float().softmax(-1)[:, 1]

    def shortlist_scores(
        self,
        query_modality: str,
        query_part: tuple[torch.Tensor, torch.Tensor],
        candidate_modality: str,
        candidate_part: tuple[torch.Tensor, torch.Tensor],
        shortlist: torch.Tensor,
        similarity: torch.Tensor,
        similarity_weight: float = 1.0,
        batch_size: int = 256,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The second stage's scores of every query's shortlist: `log p(match)` of the cross-encoder (ITM) plus
        `similarity_weight` times the dual encoder's logit of the pair (`logit_scale * cosine`), the evidence of both
        stages in one log-space score, as BLIP adds its ITM score to the similarity. `similarity_weight=0` ranks by
        the cross-encoder alone (ALBEF's re-ranking).

        Args:
            query_part, candidate_part: `(states (Q|N, n, d), mask (Q|N, n))` from [`~OptTriForRetrieval.encode`].
            shortlist (`(Q, k)`): candidate indices of each query. similarity (`(Q, N)`): dual-encoder cosines.
            batch_size: (query, candidate) pairs fused per cross-encoder call.

        Returns: the combined scores `(Q, k)` and the matching probabilities `(Q, k)`.
        """
        if similarity_weight < 0:
            raise ValueError(f"similarity_weight must be >= 0, got {similarity_weight}")
        q_states, q_mask = query_part
        c_states, c_mask = candidate_part
        k = shortlist.shape[1]
        q_index = torch.arange(shortlist.shape[0], device=shortlist.device).repeat_interleave(k)
        c_index = shortlist.flatten()
        log_match = []
        for start in range(0, q_index.numel(), batch_size):
            qi, ci = q_index[start : start + batch_size], c_index[start : start + batch_size]
            logits = self.matching_logits(
                query_modality, (q_states[qi], q_mask[qi]), candidate_modality, (c_states[ci], c_mask[ci])
            )
            log_match.append(logits.float().log_softmax(-1)[:, 1])
        log_match = torch.cat(log_match).view(-1, k)
        dual_logits = clamped_logit_scale(self.opt_tri.logit_scale).float() * similarity.float().gather(1, shortlist)
        return log_match + similarity_weight * dual_logits, log_match.exp()

    @torch.no_grad()
    def rerank(
        self,
        query_inputs: dict[str, torch.Tensor],
        candidate_inputs: dict[str, torch.Tensor],
        query_modality: str = "text",
        candidate_modality: str = "image",
        top_k: int = 10,
        batch_size: int = 256,
        similarity_weight: float = 1.0,
    ) -> OptTriRerankOutput:
        """
        Retrieve the `top_k` candidates of every query with the dual encoder, then reorder them by
        [`~OptTriForRetrieval.shortlist_scores`]: the cross-encoder's log matching probability plus `similarity_weight`
        times the dual encoder's logit (0: the cross-encoder alone).

        Args:
            query_inputs: the `Q` queries' model inputs for `query_modality` (e.g. `input_ids`, `attention_mask`).
            candidate_inputs: the `N` candidates' inputs for `candidate_modality` (e.g. `pixel_values`).
            top_k: shortlist size `k` (at most `N`).
            batch_size: (query, candidate) pairs fused per cross-encoder call.
        """
        _check_pair(query_modality, candidate_modality)
        if top_k < 1:
            raise ValueError(f"top_k must be positive, got {top_k}")
        q_embeds, q_part = self.encode(query_modality, query_inputs)
        c_embeds, c_part = self.encode(candidate_modality, candidate_inputs)
        similarity = q_embeds.float() @ c_embeds.float().t()
        shortlist = similarity.topk(min(top_k, similarity.shape[1]), dim=1).indices  # (Q, k), best first
        scores, matching = self.shortlist_scores(
            query_modality, q_part, candidate_modality, c_part, shortlist, similarity, similarity_weight, batch_size
        )
        order = scores.argsort(dim=1, descending=True, stable=True)
        return OptTriRerankOutput(
            indices=shortlist.gather(1, order), scores=scores.gather(1, order), retrieval_indices=shortlist,
            similarity=similarity, matching_probabilities=matching.gather(1, order),
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_attention_mask: torch.LongTensor | None = None,
        query_modality: str = "text",
        gallery_modality: str | None = None,
        return_loss: bool | None = None,
        itm_loss_weight: float = 1.0,
        output_attentions: bool | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        return_dict: bool | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> OptTriRetrievalOutput:
        r"""
        A paired batch: row `i` of `query_modality` matches row `i` of `gallery_modality` (inputs as for
        [`OptTriModel`]; other modalities are ignored). Without `return_loss` the two sides may have different
        batch sizes (score `Q` queries against `G` items, as CLIP does; the zero-shot pipelines call it so).

        Args:
            query_modality, gallery_modality: two different modalities among `"text"`, `"image"`, `"audio"`; the
                gallery defaults to `"image"` when `pixel_values` are given, else `"audio"`.
            return_loss: compute the symmetric contrastive loss (and the ITM loss when `itm_loss_weight > 0`).
            itm_loss_weight: weight of the cross-encoder's matching loss in `loss` (0 trains the dual encoder only).
            output_attentions, output_hidden_states: return the two towers' own outputs (`text_outputs`,
                `image_outputs`, `audio_outputs`) with their hidden states / attentions, as `CLIPOutput` does.
            generator: the `torch.Generator` of the ITM loss's negative sampling (the only random draw of this
                forward). In `eval()` mode without a generator, a fixed seed is used, so identical calls agree; in
                training mode the default is torch's global RNG.
        """
        if gallery_modality is None:
            gallery_modality = "image" if pixel_values is not None or input_features is None else "audio"
        _check_pair(query_modality, gallery_modality)
        inputs = {
            "input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
            "pixel_values": pixel_values, "image_mask": image_mask, "input_features": input_features,
            "audio_attention_mask": audio_attention_mask,
        }
        _check_retrieval_inputs(self.config, inputs, (query_modality, gallery_modality), paired=bool(return_loss))
        attentions, hidden = _wants_outputs(self.config, output_attentions, output_hidden_states)
        wanted = attentions or _asked(hidden)
        tower_kwargs = {"output_attentions": attentions, "output_hidden_states": hidden} if wanted else {}
        q_features, part_q = self._encode_tower(query_modality, inputs, tower_kwargs)
        g_features, part_g = self._encode_tower(gallery_modality, inputs, tower_kwargs)
        q_embeds, g_embeds = q_features.pooler_output, g_features.pooler_output
        towers = {f"{query_modality}_outputs": q_features, f"{gallery_modality}_outputs": g_features} if wanted else {}
        logit_scale = self.opt_tri.logit_scale
        logits_per_query = clamped_logit_scale(logit_scale) * q_embeds.float() @ g_embeds.float().t()
        loss = contrastive = itm = None
        if return_loss:
            valid = torch.ones(q_embeds.shape[0], dtype=torch.bool, device=q_embeds.device)
            contrastive = contrastive_loss(q_embeds, g_embeds, logit_scale, valid)
            loss = contrastive
            if itm_loss_weight > 0 and q_embeds.shape[0] >= 2:
                generator = _eval_generator(self, generator, logits_per_query.device)
                itm = self._itm_loss((query_modality, part_q), (gallery_modality, part_g), logits_per_query, generator)
                loss = loss + itm_loss_weight * itm
        output = OptTriRetrievalOutput(
            loss=loss, contrastive_loss=contrastive, itm_loss=itm, logits_per_query=logits_per_query,
            logits_per_gallery=logits_per_query.t(), query_embeds=q_embeds, gallery_embeds=g_embeds,
            logit_scale=logit_scale, **towers,
            **{f"logits_per_{query_modality}": logits_per_query, f"logits_per_{gallery_modality}": logits_per_query.t()},
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def _itm_loss(self, query, gallery, logits: torch.Tensor, generator=None) -> torch.Tensor:
        """ITM as in pre-training: negatives from [`sample_itm_negatives`] over the contrastive `logits` `(B, B)`
        (`config.itm_hard_negative_fraction`), rows laid out by [`itm_pairs`] (`config.itm_rows_per_sample`).
        `query` / `gallery`: `(modality, (states, mask))`."""
        (query_modality, part_q), (gallery_modality, part_g) = query, gallery
        rows = torch.arange(logits.shape[0], device=logits.device)
        cfg = self.config
        negative_query, negative_gallery = sample_itm_negatives(logits.detach().float(), cfg.itm_hard_negative_fraction, generator)
        q_index, g_index, labels = itm_pairs(rows, negative_query, negative_gallery, cfg.itm_rows_per_sample, generator)
        itm_logits = self.matching_logits(
            query_modality, _take(part_q, q_index), gallery_modality, _take(part_g, g_index)
        )
        return F.cross_entropy(itm_logits.float(), labels)


class OptTriForPairReasoning(OptTriPreTrainedModel):
    """
    NLVR2-style reasoning over one sentence and two images (UNITER's "paired" setting): the cross-modal encoder fuses
    (text, image 1) and (text, image 2); the two pooled `[CLS]` states are concatenated and an MLP
    (`Linear(2h, 2h) -> GELU -> LayerNorm -> Linear(2h, 2)`) says whether the sentence is true of the pair (class 1)
    or not (class 0). The text is encoded once.

    No `transformers` Auto class fits; see [`OptTriForRetrieval`] for loading the checkpoint as remote code.
    """

    _keys_to_ignore_on_load_unexpected = _MASK_TOKEN_KEYS + _PROJECTION_KEYS + _AUDIO_TOWER_KEYS + _PRETRAINING_HEAD_KEYS

    def __init__(self, config: OptTriConfig):
        super().__init__(config)
        self.opt_tri = OptTriModel(config, use_mask_tokens=False, use_projections=False, use_audio=False)
        fc = config.cross_modal_config
        self.classifier = OptTriClassificationMLP(2 * fc.hidden_size, 2 * fc.hidden_size, 2, fc.hidden_act, fc.layer_norm_eps)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        _save_hub_files(self, save_directory)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> OptTriClassifierOutput:
        r"""
        Args:
            input_ids (`(B, L)`), attention_mask (`(B, L)`), token_type_ids (`(B, L)`): the sentence.
            pixel_values (`(B, 2, 3, H, W)`): the two images of each example.
            labels (`(B,)`): 1 if the sentence is true of the image pair, else 0.
            output_attentions, output_hidden_states: return `text_outputs` (`B` rows), `image_outputs` and
                `cross_modal_outputs` (`2B` rows: every first image, then every second image), and the cross-modal
                `hidden_states` / `attentions` (`2B` rows); the cross-modal encoder then runs in full.
        """
        if input_ids is None or pixel_values is None:
            raise ValueError("Pair reasoning needs input_ids (the sentence) and pixel_values (B, 2, C, H, W)")
        if not torch.is_tensor(pixel_values) or pixel_values.ndim != 5 or pixel_values.shape[1] != 2:
            shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must have shape (batch, 2, channels, height, width); got {shape}")
        for image in (pixel_values[:, 0], pixel_values[:, 1]):
            _check_model_inputs(
                self.config, input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                pixel_values=image,
            )
        base = self.opt_tri
        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attentions, hidden = _wants_outputs(self.config, output_attentions, output_hidden_states)
        wanted = attentions or _asked(hidden)
        tower_kwargs = {"output_attentions": attentions, "output_hidden_states": hidden} if wanted else {}
        text_out = base.text_tower(input_ids, attention_mask, token_type_ids, **tower_kwargs)
        image_out = base.image_tower(torch.cat([pixel_values[:, 0], pixel_values[:, 1]]), **tower_kwargs)  # 2B rows
        text, images = text_out.last_hidden_state, image_out.last_hidden_state
        image_mask = torch.ones(images.shape[:2], dtype=torch.long, device=images.device)
        parts = (text.repeat(2, 1, 1), attention_mask.long().repeat(2, 1)), (images, image_mask)
        towers = {}
        if wanted:
            cross_modal = self._fuse_in_full(parts, attentions, hidden)
            cls = cross_modal.pooler_output
            towers = {"text_outputs": text_out, "image_outputs": image_out, "cross_modal_outputs": cross_modal,
                      "hidden_states": cross_modal.hidden_states, "attentions": cross_modal.attentions}
        else:
            cls = base.fuse_selected(*parts)[0][:, 0]
        pooled = torch.cat([cls[:batch], cls[batch:]], dim=-1)
        logits = self.classifier(pooled)
        loss = F.cross_entropy(logits.float(), labels.long(), ignore_index=-100) if labels is not None else None
        output = OptTriClassifierOutput(loss=loss, logits=logits, **towers)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def _fuse_in_full(self, parts, output_attentions, output_hidden_states) -> BaseModelOutputWithPooling:
        """The cross-modal encoder over every position of the (text, image) `parts`, with its hidden states and
        attentions as asked for."""
        inputs, masks, codes = self.opt_tri._fusion_inputs(parts[0], parts[1], None)
        fused, _, _, all_hidden, all_attentions = self.opt_tri._fuse(
            inputs, masks, codes, output_attentions, output_hidden_states
        )
        return BaseModelOutputWithPooling(
            last_hidden_state=fused, pooler_output=fused[:, 0], hidden_states=all_hidden, attentions=all_attentions
        )


__all__ = [
    "OptTriAudioModel",
    "OptTriClassifierOutput",
    "OptTriForPairReasoning",
    "OptTriForQuestionAnswering",
    "OptTriForRetrieval",
    "OptTriForSequenceClassification",
    "OptTriPromptLearner",
    "OptTriRerankOutput",
    "OptTriRetrievalOutput",
    "OptTriCaptioningOutput",
    "OptTriCodeDecoder",
    "OptTriCodeDecoderOutput",
    "OptTriCodeGenerationModel",
    "OptTriCodeGenerationOutput",
    "OptTriForConditionalGeneration",
    "OptTriForTextToAudio",
    "OptTriForTextToImage",
    "OptTriForPreTraining",
    "OptTriForPreTrainingOutput",
    "OptTriModel",
    "OptTriModelOutput",
    "OptTriPreTrainedModel",
]

OptTriModel.register_for_auto_class("AutoModel")
OptTriForPreTraining.register_for_auto_class("AutoModelForPreTraining")
OptTriForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
OptTriForTextToImage.register_for_auto_class("AutoModelForMultimodalLM")  # where transformers files Janus, Emu3
OptTriForTextToAudio.register_for_auto_class("AutoModelForTextToWaveform")  # where transformers files MusicGen, Bark
OptTriForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
OptTriForQuestionAnswering.register_for_auto_class("AutoModelForVisualQuestionAnswering")
