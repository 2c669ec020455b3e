"""PyTorch OPT-Tri: a tri-modal (text, image, audio) pre-trainer in the line of OPT and UNITER.

Architecture (see `OptTriConfig`):

    text  -> BERT-style encoder (any `transformers` text encoder) ----\
    image -> ViT over patches ------------------------------------------> project + modality type -> cross-modal
    audio -> log-mel patch stem + pre-norm transformer ----------------/        encoder over [CLS] text | image | audio

Any non-empty subset of the three modalities is a valid input, per batch and per row (a row without a modality is
masked out of the cross-modal attention).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, GenerationMixin, PreTrainedModel, ViTModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import utils as _generation_utils
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple, logging

from .configuration_opt_tri import (
    PRETRAINING_OBJECTIVES,
    OptTriAudioConfig,
    OptTriCodeDecoderConfig,
    OptTriConfig,
    OptTriFusionConfig,
    OptTriTextDecoderConfig,
)

logger = logging.get_logger(__name__)

#: Modality-type ids used by the cross-modal encoder.
MODALITY_CLS, MODALITY_TEXT, MODALITY_IMAGE, MODALITY_AUDIO = 0, 1, 2, 3
MODALITIES = ("text", "image", "audio")


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------


def _nested_to_tuple(output: ModelOutput) -> tuple:
    """The fields that are set, with nested outputs (per tower) turned into tuples too (as `CLIPOutput` does)."""
    return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in ModelOutput.to_tuple(output))


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


# ----------------------------------------------------------------------------------------------------------------------
# Transformer blocks (used by the audio encoder and the cross-modal encoder)
# ----------------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention. query/key/value: `(B, H, S, D)`; mask: additive `(B, 1, 1|S, S)`; returns `(B, S, H, D)`."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class OptTriAttention(nn.Module):
    """Bidirectional multi-head self-attention dispatched through `config._attn_implementation` (SDPA by default)."""

    def __init__(self, config: OptTriAudioConfig | OptTriFusionConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        query_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        hidden_states `(B, S, d)` give the keys and values, and the queries unless `query_states` `(B, k, d)` is given
        (then only those k positions are computed: the output is `(B, k, d)`).
        """
        batch, length, _ = hidden_states.shape
        queries = hidden_states if query_states is None else query_states
        query = self.q_proj(queries).view(batch, queries.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
        shape = (batch, length, self.num_heads, self.head_dim)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        implementation = self.config._attn_implementation or "sdpa"  # unset means the default, SDPA
        attention: Callable = eager_attention_forward
        if not output_attentions:  # only the eager path computes the weights
            # looked up at every call, so `set_attn_implementation` switches a built model
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
        )
        output = self.out_proj(output.reshape(batch, queries.shape[1], -1))
        return output, (weights if output_attentions else None)


class OptTriMLP(nn.Module):
    def __init__(self, config: OptTriAudioConfig | OptTriFusionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class OptTriLayer(GradientCheckpointingLayer):
    """Pre-norm transformer layer: `x + Attn(LN(x))`, then `x + MLP(LN(x))`."""

    def __init__(self, config: OptTriAudioConfig | OptTriFusionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = OptTriAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = OptTriMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        query_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`query_index` `(B, k)`: compute the output at these positions only (`(B, k, d)`); every position is still attended."""
        normed = self.layer_norm1(hidden_states)
        query_states = None
        if query_index is not None:
            gather = query_index[:, :, None].expand(-1, -1, hidden_states.shape[-1])
            hidden_states, query_states = hidden_states.gather(1, gather), normed.gather(1, gather)
        attn_output, weights = self.self_attn(normed, attention_mask, output_attentions, query_states)
        hidden_states = hidden_states + self.dropout(attn_output)
        hidden_states = hidden_states + self.dropout(self.mlp(self.layer_norm2(hidden_states)))
        return hidden_states, weights


class OptTriEncoder(nn.Module):
    """A stack of [`OptTriLayer`]s. Takes embeddings `(B, S, D)` and a 0/1 mask `(B, S)`; builds the additive mask once."""

    def __init__(self, config: OptTriAudioConfig | OptTriFusionConfig):
        super().__init__()
        self.layers = nn.ModuleList([OptTriLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool | int | list[int] = False,
    ) -> tuple[torch.Tensor, tuple | None, tuple | None]:
        """
        `output_hidden_states` is a flag or, as in `transformers` >= 5, the index or indices (negative ones count from
        the end) of the states to keep among the `1 + num_layers` (embeddings, then after each layer); the tuple keeps
        its full length, with `None` at the states not selected.
        """
        additive_mask = _additive_mask(attention_mask, hidden_states.dtype)
        keep = _selected_hidden_states(output_hidden_states, len(self.layers) + 1)
        all_hidden = (hidden_states if 0 in keep else None,) if keep else None
        all_attentions = () if output_attentions else None
        for index, layer in enumerate(self.layers, start=1):
            hidden_states, weights = layer(hidden_states, additive_mask, output_attentions)
            if keep:
                all_hidden += (hidden_states if index in keep else None,)
            if output_attentions:
                all_attentions += (weights,)
        return hidden_states, all_hidden, all_attentions

    def forward_selected(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor, query_index: torch.Tensor, full_rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        The same stack, computing the last layer's output only where it is needed: at the positions `query_index`
        `(B, k)` of every row, and at every position of the rows `full_rows` `(R,)`. Every position still feeds the
        keys and values, so the selected outputs equal those of `forward` (an objective that reads the `[CLS]` or a
        few masked tokens skips most of the last layer's queries and MLP).

        With dropout in the cross-modal encoder (the presets have none), the last layer's two computations for the
        `full_rows` draw independent dropout masks.

        Returns `(selected (B, k, d), full (R, S, d) or None)`.
        """
        additive_mask = _additive_mask(attention_mask, hidden_states.dtype)
        for layer in self.layers[:-1]:
            hidden_states, _ = layer(hidden_states, additive_mask)
        last = self.layers[-1]
        selected, _ = last(hidden_states, additive_mask, query_index=query_index)
        full = None
        if full_rows is not None:
            full, _ = last(hidden_states[full_rows], additive_mask[full_rows])
        return selected, full


def _selected_hidden_states(output_hidden_states: bool | int | list[int] | None, count: int) -> set[int]:
    """The indices in `range(count)` that `output_hidden_states` (a flag, an index or a list of indices) selects."""
    if output_hidden_states is None or isinstance(output_hidden_states, bool):
        return set(range(count)) if output_hidden_states else set()
    indices = [output_hidden_states] if isinstance(output_hidden_states, int) else list(output_hidden_states)
    for index in indices:
        if not isinstance(index, int) or isinstance(index, bool) or not -count <= index < count:
            raise ValueError(
                f"output_hidden_states must be a bool or indices in [-{count}, {count}) of the {count} hidden states "
                f"(embeddings and each layer); got {output_hidden_states!r}"
            )
    return {index % count for index in indices}


def _wants_outputs(config, output_attentions, output_hidden_states) -> tuple[bool, bool | int | list[int]]:
    """The call's `output_attentions` / `output_hidden_states`, defaulting to the config's."""
    attentions = output_attentions if output_attentions is not None else bool(getattr(config, "output_attentions", False))
    hidden = output_hidden_states if output_hidden_states is not None else bool(getattr(config, "output_hidden_states", False))
    return attentions, hidden


def _asked(output_hidden_states: bool | int | list[int] | None) -> bool:
    """Whether `output_hidden_states` asks for any hidden state (a flag, an index or a non-empty list)."""
    if output_hidden_states is None or isinstance(output_hidden_states, bool):
        return bool(output_hidden_states)
    return isinstance(output_hidden_states, int) or len(output_hidden_states) > 0


def _additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`(B, S)` 0/1 mask -> additive `(B, 1, 1, S)` mask with 0 where attended and the dtype's minimum elsewhere."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


# ----------------------------------------------------------------------------------------------------------------------
# Pre-trained model base
# ----------------------------------------------------------------------------------------------------------------------


class OptTriPreTrainedModel(PreTrainedModel):
    config_class = OptTriConfig
    base_model_prefix = "opt_tri"
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
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus `auto_map` entries for every OPT-Tri head in `config.json`, so
        that `AutoModel`/`AutoModelForPreTraining` load any OPT-Tri checkpoint through `trust_remote_code=True`."""
        if getattr(self.config, "model_type", None) == OptTriConfig.model_type:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map.setdefault("AutoConfig", "configuration_opt_tri.OptTriConfig")
            auto_map.setdefault("AutoModel", "modeling_opt_tri.OptTriModel")
            auto_map.setdefault("AutoModelForPreTraining", "modeling_opt_tri.OptTriForPreTraining")
            auto_map.setdefault("AutoModelForMultimodalLM", "modeling_opt_tri.OptTriForTextToImage")
            auto_map.setdefault("AutoModelForTextToWaveform", "modeling_opt_tri.OptTriForTextToAudio")
            # the dual encoder serves pipeline("zero-shot-image-classification", ...) of any OPT-Tri checkpoint
            auto_map.setdefault("AutoModelForZeroShotImageClassification", "modeling_opt_tri.OptTriForRetrieval")
            self.config.auto_map = auto_map
        result = super().save_pretrained(save_directory, *args, **kwargs)
        card = os.path.join(save_directory, "README.md")
        if not os.path.exists(card):  # never replace a card written for this folder (e.g. by examples/pretrain.py)
            with open(card, "w", encoding="utf-8") as handle:
                handle.write(default_model_card(self))
        return result

    def push_to_hub(
        self, repo_id: str, *, commit_message: str | None = None, commit_description: str | None = None,
        private: bool | None = None, token: bool | str | None = None, revision: str | None = None,
        create_pr: bool = False, max_shard_size: int | str | None = "50GB", tags: list[str] | None = None,
    ) -> str:
        """
        `PushToHubMixin.push_to_hub` (same arguments), uploading the model card too: the card of the folder the
        model was loaded from when it is an OPT-Tri card (so a pre-trained model pushed from `final/` keeps the card
        of its run), else [`default_model_card`]; `tags` are added to it. (`PreTrainedModel.push_to_hub` would
        replace it by the Hub's generic card.)
        """
        try:
            from huggingface_hub import HfApi, ModelCard
        except ImportError as error:  # a transformers dependency, so only a broken install lacks it
            raise ImportError("push_to_hub needs the huggingface_hub package") from error

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            source = os.path.join(str(getattr(self, "name_or_path", "") or ""), "README.md")
            if os.path.isfile(source) and MODEL_CARD_MARKER in open(source, encoding="utf-8").read():
                shutil.copyfile(source, os.path.join(folder, "README.md"))
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            if tags:
                card = ModelCard.load(os.path.join(folder, "README.md"))
                card.data.tags = list(card.data.tags or []) + [tag for tag in tags if tag not in (card.data.tags or [])]
                card.save(os.path.join(folder, "README.md"))
            return api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=commit_message or "Upload model",
                commit_description=commit_description, revision=revision, create_pr=create_pr,
            )

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
        BERT and wav2vec 2.0. The cross-modal encoder and heads are newly initialised.

        Args:
            text: folder of a BERT-like text encoder (`BertModel`, `RobertaModel`, ... checkpoints, with or without
                a pre-training head).
            vision: folder of a `ViTModel` (or `ViTFor*`) checkpoint.
            audio: folder of an [`OptTriAudioModel`] checkpoint, or of an Audio Spectrogram Transformer (`ASTModel`)
                or ViT checkpoint, whose transformer layers are loaded into the audio encoder (its patch stem and
                positions are new, since AST uses 2-D spectrogram patches).
            config: an `OptTriConfig` giving the other settings; its matching sub-configs are replaced by those of the
                checkpoints.
            config_kwargs: further `OptTriConfig` arguments when `config` is not given.
        """
        config = OptTriConfig(**config_kwargs) if config is None else config
        loaded: dict[str, PreTrainedModel] = {}
        if text is not None:
            loaded["text"] = AutoModel.from_pretrained(text)
            config.text_config = loaded["text"].config
        if vision is not None:
            loaded["vision"] = AutoModel.from_pretrained(vision)
            if loaded["vision"].config.model_type != "vit":
                raise ValueError(f"vision={vision!r} is a {loaded['vision'].config.model_type!r} model; expected 'vit'")
            config.vision_config = loaded["vision"].config
        audio_state: dict[str, torch.Tensor] | None = None
        if audio is not None:
            audio_config, audio_state = _load_audio_encoder_checkpoint(audio, config.audio_config)
            config.audio_config = audio_config
        config._validate()
        model = cls(config)
        base: OptTriModel = model.base_model
        for name, module in (("text", base.text_model), ("vision", base.vision_model)):
            if name in loaded:
                source = loaded[name].base_model.state_dict()
                missing, unexpected = module.load_state_dict(source, strict=False)
                missing = [k for k in missing if "pooler" not in k and "mask_token" not in k]
                if missing:
                    raise ValueError(f"The {name} checkpoint lacks weights the OPT-Tri {name} encoder needs: {missing}")
                if unexpected:
                    logger.info(f"Ignored {name} checkpoint weights not used by OPT-Tri: {unexpected}")
        if audio_state is not None:
            missing, _ = base.audio_model.load_state_dict(audio_state, strict=False)
            if missing:
                logger.warning(f"Audio encoder weights newly initialised (not in the checkpoint): {missing}")
        return model

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing: bool = True):
        """`PreTrainedModel.resize_token_embeddings` for the one text vocabulary of OPT-Tri: every module over it
        (text encoder embeddings, text decoder embeddings, LM and MLM heads) is resized, and both the encoder's and
        the decoder's `vocab_size` follow, so the resized model saves and reloads. Returns the input embeddings."""
        return _resize_text_vocabulary(self, new_num_tokens, pad_to_multiple_of, mean_resizing)


#: Marks a README.md as an OPT-Tri model card (written by `save_pretrained` or the training scripts).
MODEL_CARD_MARKER = "<!-- opt-tri model card -->"

#: The Hub's pipeline tag of each head (the task a `transformers` pipeline would run); heads not listed have none.
PIPELINE_TAGS = {
    "OptTriModel": "feature-extraction",
    "OptTriAudioModel": "feature-extraction",
    "OptTriForPreTraining": "feature-extraction",
    "OptTriForRetrieval": "feature-extraction",
    "OptTriForConditionalGeneration": "image-to-text",
    "OptTriForTextToImage": "text-to-image",
    "OptTriForTextToAudio": "text-to-audio",
    "OptTriForQuestionAnswering": "visual-question-answering",
}

#: Runs on any OPT-Tri folder saved with its processor (the model id is filled in).
USAGE_SNIPPET = """import numpy as np
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

model_id = {model_id!r}
model = AutoModel.from_pretrained(model_id, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)
image = Image.fromarray(np.full((64, 64, 3), (220, 30, 30), dtype=np.uint8))  # a red square
audio = np.zeros(16000, dtype=np.float32)  # one second of silence
batch = processor(text=["a red square"], images=[image], audio=[audio], sampling_rate=16000, return_tensors="pt")
with torch.no_grad():
    out = model(**batch)
print("cross-modal [CLS]:", tuple(out.pooler_output.shape))
print("text-image similarity:", float(out.text_embeds @ out.image_embeds.T))
"""


def model_card_metadata(model: PreTrainedModel, **extra) -> str:
    """The Hub metadata block (YAML front matter) of a model card: `library_name`, `pipeline_tag` (from the head),
    `tags`, and any `extra` field (`license`, `datasets`, `base_model`, ...; lists become YAML lists)."""
    fields = {"library_name": "transformers", "pipeline_tag": PIPELINE_TAGS.get(type(model).__name__)}
    fields["tags"] = ["opt-tri", "multimodal", "text", "image", "audio", "custom_code", type(model).__name__]
    fields.update(extra)
    lines = ["---"]
    for key, value in fields.items():
        if value is None or value == []:
            continue
        if isinstance(value, (list, tuple)):
            lines.append(f"{key}:")
            lines.extend(f"- {item}" for item in value)
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines + ["---", ""])


def default_model_card(model: PreTrainedModel, model_id: str | None = None) -> str:
    """The card `save_pretrained` writes when the folder has none: metadata, the architecture, and a usage snippet.
    What the model was trained on is not known here; `examples/pretrain.py` writes the full card of a run."""
    config = model.config
    sizes = ""
    if getattr(config, "model_type", None) == OptTriConfig.model_type:
        parts = {name: getattr(config, f"{name}_config") for name in ("text", "vision", "audio", "cross_modal")}
        sizes = ", ".join(f"{name} {c.num_hidden_layers} x {c.hidden_size}" for name, c in parts.items())
        sizes = f" Encoders (layers x width): {sizes}."
    name = type(model).__name__
    model_id = model_id or "path/to/this/folder"
    snippet = USAGE_SNIPPET.format(model_id=model_id)
    if not sizes:  # a sub-model (the audio encoder): no processor, no cross-modal output
        snippet = (
            f"from transformers import AutoModel\n\nmodel = AutoModel.from_pretrained({model_id!r}, "
            "trust_remote_code=True)\n"
        )
    return (
        model_card_metadata(model) + f"\n# OPT-Tri: {name}\n\n{MODEL_CARD_MARKER}\n\n"
        f"A tri-modal (text, image, audio) OPT-Tri model, saved as `{name}`.{sizes} Its code travels with the "
        "weights: load it with `trust_remote_code=True`.\n\n"
        "This card was written by `save_pretrained`; it does not record the training data or run. The card of a "
        "pre-training run (data, objectives, steps, evaluation, loss curves) is written by `examples/pretrain.py`.\n\n"
        "## Usage\n\n```python\n" + snippet + "```\n"
    )


def _load_audio_encoder_checkpoint(path: str, default: OptTriAudioConfig) -> tuple[OptTriAudioConfig, dict]:
    """Read an OptTriAudioModel, ASTModel or ViTModel folder; return an audio config and a state dict in our names."""
    source_config = AutoConfig.from_pretrained(path)
    if source_config.model_type == OptTriAudioConfig.model_type:
        model = OptTriAudioModel.from_pretrained(path)
        return model.config, model.state_dict()
    if source_config.model_type not in ("audio-spectrogram-transformer", "vit"):
        raise ValueError(
            f"audio={path!r} is a {source_config.model_type!r} checkpoint; OPT-Tri's audio encoder loads "
            "'opt_tri_audio', 'audio-spectrogram-transformer' or 'vit' checkpoints"
        )
    source = AutoModel.from_pretrained(path)
    config = OptTriAudioConfig(
        num_mel_bins=getattr(source_config, "num_mel_bins", default.num_mel_bins),
        patch_frames=default.patch_frames,
        hidden_size=source_config.hidden_size,
        num_hidden_layers=source_config.num_hidden_layers,
        num_attention_heads=source_config.num_attention_heads,
        intermediate_size=source_config.intermediate_size,
        hidden_act=source_config.hidden_act,
        layer_norm_eps=source_config.layer_norm_eps,
        max_position_embeddings=default.max_position_embeddings,
    )
    renames = [
        (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"encoder.layers.\1.self_attn.q_proj."),
        (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"encoder.layers.\1.self_attn.k_proj."),
        (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"encoder.layers.\1.self_attn.v_proj."),
        (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"encoder.layers.\1.self_attn.out_proj."),
        (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.layers.\1.mlp.fc1."),
        (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"encoder.layers.\1.mlp.fc2."),
        (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"encoder.layers.\1.layer_norm1."),
        (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"encoder.layers.\1.layer_norm2."),
        # transformers >= 5.24 names the ViT/AST layers `layers.N.attention.q_proj`, `layers.N.mlp.fc1`, ...
        (r"^layers\.(\d+)\.attention\.(q_proj|k_proj|v_proj)\.", r"encoder.layers.\1.self_attn.\2."),
        (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layers.\1.self_attn.out_proj."),
        (r"^layers\.(\d+)\.mlp\.(fc1|fc2)\.", r"encoder.layers.\1.mlp.\2."),
        (r"^layers\.(\d+)\.layernorm_before\.", r"encoder.layers.\1.layer_norm1."),
        (r"^layers\.(\d+)\.layernorm_after\.", r"encoder.layers.\1.layer_norm2."),
        (r"^layernorm\.", r"layernorm."),
    ]
    state = {}
    for key, value in source.base_model.state_dict().items():
        for pattern, replacement in renames:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                state[new_key] = value
                break
    with torch.device("meta"):  # only the parameter names are needed
        expected = {k for k in OptTriAudioModel(config).state_dict() if k.startswith(("encoder.", "layernorm."))}
    if set(state) != expected:  # never hand back a silently random audio transformer
        raise ValueError(
            f"Could not map the transformer weights of audio={path!r} onto OPT-Tri's audio encoder; missing "
            f"{sorted(expected - set(state))[:8]}, unexpected {sorted(set(state) - expected)[:8]}"
        )
    return config, state


# ----------------------------------------------------------------------------------------------------------------------
# Audio encoder
# ----------------------------------------------------------------------------------------------------------------------


class OptTriAudioEmbeddings(nn.Module):
    """Log-mel `(B, M, T)` -> patches of `patch_frames` frames -> `[CLS]` + tokens + positions `(B, 1 + A, D)`."""

    def __init__(self, config: OptTriAudioConfig, use_mask_token: bool = True):
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Conv1d(
            config.num_mel_bins, config.hidden_size, kernel_size=config.patch_frames, stride=config.patch_frames
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        # masked audio modelling only (ViT's `use_mask_token`)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if use_mask_token else None
        self.position_embedding = nn.Embedding(config.max_position_embeddings + 1, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_features: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.patch_embedding(input_features).transpose(1, 2)  # (B, A, D)
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError("bool_masked_pos needs the audio mask token: this encoder was built with use_mask_token=False")
            tokens = torch.where(bool_masked_pos[..., None], self.mask_token.to(tokens.dtype), tokens)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        embeddings = torch.cat([cls, tokens], dim=1)
        positions = torch.arange(embeddings.shape[1], device=embeddings.device)
        return self.dropout(embeddings + self.position_embedding(positions))


class OptTriAudioModel(OptTriPreTrainedModel):
    """The OPT-Tri audio encoder on its own (a `PreTrainedModel`, so it can be saved and reused)."""

    config_class = OptTriAudioConfig
    base_model_prefix = "audio_model"
    main_input_name = "input_features"

    def __init__(self, config: OptTriAudioConfig, use_mask_token: bool = True):
        super().__init__(config)
        self.embeddings = OptTriAudioEmbeddings(config, use_mask_token)
        self.encoder = OptTriEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The patch stem (a `Conv1d` over log-mel frames), as `ASTModel`/`ViTModel` return their patch embedding."""
        return self.embeddings.patch_embedding

    def token_mask(self, audio_attention_mask: torch.Tensor) -> torch.Tensor:
        """Frame mask `(B, T)` -> token mask `(B, 1 + A)` (a token is real if any of its frames is; `[CLS]` is 1)."""
        batch, frames = audio_attention_mask.shape
        pad = (-frames) % self.config.patch_frames
        mask = F.pad(audio_attention_mask, (0, pad)).view(batch, -1, self.config.patch_frames).amax(-1)
        return torch.cat([mask.new_ones(batch, 1), mask], dim=1)

    def forward(
        self,
        input_features: torch.Tensor,
        audio_attention_mask: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        Args:
            input_features (`(B, num_mel_bins, T)`): normalised log-mel frames from [`OptTriFeatureExtractor`].
            audio_attention_mask (`(B, T)`): 1 for real frames, 0 for padding. Defaults to all ones.
            bool_masked_pos (`(B, A)` bool): audio tokens to replace by the learned mask token (masked audio
                modelling), where `A = ceil(T / patch_frames)`.

            output_attentions, output_hidden_states, return_dict: as in `transformers` (defaults from the config);
                `output_hidden_states` may also be the index or indices of the states to return (the others are
                `None`). Attention weights are computed by the eager path, whatever the attention implementation.

        Returns: `last_hidden_state (B, 1 + A, D)`, `pooler_output (B, D)` (the `[CLS]` state), plus `hidden_states`
        (`1 + num_hidden_layers` of `(B, 1 + A, D)`, before the final LayerNorm) and `attentions`
        (`(B, heads, 1 + A, 1 + A)` per layer) on request.
        """
        output_attentions, output_hidden_states = _wants_outputs(self.config, output_attentions, output_hidden_states)
        _check_audio_features(input_features, self.config)
        frames = input_features.shape[-1]
        pad = (-frames) % self.config.patch_frames
        if audio_attention_mask is None:
            audio_attention_mask = torch.ones(input_features.shape[0], frames, device=input_features.device)
        if pad:
            input_features = F.pad(input_features, (0, pad))
        token_mask = self.token_mask(audio_attention_mask.long())
        embeddings = self.embeddings(input_features, bool_masked_pos)
        hidden, all_hidden, all_attentions = self.encoder(
            embeddings, token_mask, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )
        hidden = self.layernorm(hidden)
        output = BaseModelOutputWithPooling(
            last_hidden_state=hidden, pooler_output=hidden[:, 0], hidden_states=all_hidden, attentions=all_attentions
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


def _check_audio_features(input_features: torch.Tensor, config: OptTriAudioConfig) -> None:
    if not torch.is_tensor(input_features) or not input_features.is_floating_point():
        raise TypeError("input_features must be a floating-point tensor of log-mel features (B, num_mel_bins, T)")
    if input_features.ndim != 3 or input_features.shape[1] != config.num_mel_bins:
        raise ValueError(
            f"input_features must have shape (batch, {config.num_mel_bins} mel bins, frames); got "
            f"{tuple(input_features.shape)}. Use OptTriFeatureExtractor with feature_size={config.num_mel_bins}."
        )
    tokens = math.ceil(input_features.shape[-1] / config.patch_frames)
    if tokens > config.max_position_embeddings:
        raise ValueError(
            f"The audio is too long: {input_features.shape[-1]} frames give {tokens} audio tokens, more than "
            f"audio_config.max_position_embeddings={config.max_position_embeddings}. Shorten the clips (the feature "
            "extractor's max_length_seconds) or use a config with more positions."
        )


_MODEL_INPUT_NAMES = (
    "input_ids", "attention_mask", "token_type_ids", "pixel_values", "image_mask", "input_features", "audio_attention_mask"
)


def _check_model_inputs(config: OptTriConfig, **inputs: torch.Tensor | None) -> int:
    """
    Validate the inputs of `OptTriModel.forward` / `OptTriForPreTraining.forward` before torch touches them, so a bad
    input raises a `TypeError`/`ValueError` that names it (not an error deep inside torch, nor NaN outputs). Checks
    types and dtypes, shapes (masks against their inputs, batch sizes across modalities), the text length against the
    text encoder's positions, token type ids, and NaN/inf in `pixel_values` / `input_features`. Returns the batch size.
    """
    given = {name: inputs.get(name) for name in _MODEL_INPUT_NAMES if inputs.get(name) is not None}
    for name, tensor in given.items():
        if not torch.is_tensor(tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__} (use return_tensors='pt')")
    input_ids, pixel_values, input_features = (given.get(n) for n in ("input_ids", "pixel_values", "input_features"))
    if input_ids is not None:
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be an integer tensor of token ids, got dtype {input_ids.dtype}")
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, length); got {tuple(input_ids.shape)}")
    for name, tensor, ndim, layout in (
        ("pixel_values", pixel_values, 4, "(batch, channels, height, width)"),
        ("input_features", input_features, 3, "(batch, num_mel_bins, frames)"),
    ):
        if tensor is None:
            continue
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor {layout}, got dtype {tensor.dtype}")
        if tensor.ndim != ndim:
            raise ValueError(f"{name} must have shape {layout}; got {tuple(tensor.shape)}")
    sizes = {n: t.shape[0] for n, t in (("input_ids", input_ids), ("pixel_values", pixel_values),
                                        ("input_features", input_features)) if t is not None}
    if not sizes:
        raise ValueError("No modality given: pass at least one of input_ids, pixel_values or input_features.")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"The batch sizes of the modalities do not match: {sizes}")
    batch = next(iter(sizes.values()))
    if batch == 0:
        raise ValueError(f"The batch is empty: {next(iter(sizes))} has batch size 0")
    expected_shapes = {
        "attention_mask": tuple(input_ids.shape) if input_ids is not None else None,
        "token_type_ids": tuple(input_ids.shape) if input_ids is not None else None,
        "image_mask": (batch,) if pixel_values is not None else None,
        "audio_attention_mask": (batch, input_features.shape[-1]) if input_features is not None else None,
    }
    for name, shape in expected_shapes.items():
        if name in given and shape is not None and tuple(given[name].shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match the inputs; got {tuple(given[name].shape)}")
    text_config = config.text_config
    if input_ids is not None:
        max_positions = getattr(text_config, "max_position_embeddings", None)
        if isinstance(max_positions, int) and input_ids.shape[1] > max_positions:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens per row, more than text_config.max_position_embeddings="
                f"{max_positions}. Truncate the text (the processor's max_length) or use a config with more positions."
            )
        token_type_ids, type_vocab = given.get("token_type_ids"), getattr(text_config, "type_vocab_size", None)
        if token_type_ids is not None and isinstance(type_vocab, int) and token_type_ids.numel():
            low, high = int(token_type_ids.min()), int(token_type_ids.max())
            if low < 0 or high >= type_vocab:
                raise ValueError(f"token_type_ids must be in [0, {type_vocab}); got values in [{low}, {high}]")
    for name, tensor in (("pixel_values", pixel_values), ("input_features", input_features)):
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} contains NaN or inf values; check the images/audio and their preprocessing")
    return batch


# ----------------------------------------------------------------------------------------------------------------------
# The tri-modal model
# ----------------------------------------------------------------------------------------------------------------------


class OptTriModel(OptTriPreTrainedModel):
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
        try:
            self.text_model = AutoModel.from_config(config.text_config, add_pooling_layer=False)
        except TypeError:  # text encoders without a pooler take no `add_pooling_layer`
            self.text_model = AutoModel.from_config(config.text_config)
        self.vision_model = ViTModel(config.vision_config, add_pooling_layer=False, use_mask_token=use_mask_tokens)
        self.audio_model = OptTriAudioModel(config.audio_config, use_mask_token=use_mask_tokens) if use_audio else None
        # Keep one config object per component so that changes (e.g. the attention implementation) stay in sync.
        self.text_model.config = config.text_config
        self.vision_model.config = config.vision_config
        if use_audio:
            self.audio_model.config = config.audio_config

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

    # -- unimodal encoders -------------------------------------------------------------------------------------------

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids=None, **kwargs
    ) -> torch.Tensor:
        """Text encoder states `(B, L, text_hidden)`. A row whose mask is all 0 (no text) still runs, on `[CLS]`."""
        return self.text_tower(input_ids, attention_mask, token_type_ids, **kwargs).last_hidden_state

    def text_tower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids=None, **kwargs):
        """The text encoder's own output (`last_hidden_state (B, L, text_hidden)`, and `hidden_states` / `attentions`
        when asked for through `kwargs`)."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, length); got {tuple(input_ids.shape)}")
        vocab = self.config.text_config.vocab_size
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
            raise ValueError(f"input_ids must be in [0, {vocab}); got values in [{int(input_ids.min())}, {int(input_ids.max())}]")
        if attention_mask is not None:
            attention_mask = attention_mask.clone()
            attention_mask[:, 0] = 1
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask, **extra, **kwargs, return_dict=True)

    def encode_image(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None, **kwargs):
        """ViT states `(B, 1 + N, vision_hidden)` (`[CLS]` first). `bool_masked_pos (B, N)` masks patches."""
        return self.image_tower(pixel_values, bool_masked_pos, **kwargs).last_hidden_state

    def image_tower(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None, **kwargs):
        """The vision encoder's own output (`last_hidden_state (B, 1 + N, vision_hidden)`, and `hidden_states` /
        `attentions` when asked for through `kwargs`)."""
        vc = self.config.vision_config
        if not torch.is_tensor(pixel_values) or not pixel_values.is_floating_point():
            raise TypeError("pixel_values must be a floating-point tensor (B, C, H, W); use OptTriImageProcessor")
        expected = (vc.num_channels, vc.image_size, vc.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}); got "
                f"{tuple(pixel_values.shape)}. Use OptTriImageProcessor with image_size={vc.image_size}."
            )
        if bool_masked_pos is not None and getattr(self.vision_model.embeddings, "mask_token", None) is None:
            raise ValueError(f"bool_masked_pos needs the vision mask token, which {type(self).__name__} does not build here")
        pixel_values = pixel_values.to(self.vision_model.embeddings.patch_embeddings.projection.weight.dtype)
        return self.vision_model(pixel_values=pixel_values, bool_masked_pos=bool_masked_pos, **kwargs, return_dict=True)

    def encode_audio(
        self, input_features: torch.Tensor, audio_attention_mask: torch.Tensor | None = None, bool_masked_pos=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio states `(B, 1 + A, audio_hidden)` and the token mask `(B, 1 + A)`."""
        out, token_mask = self.audio_tower(input_features, audio_attention_mask, bool_masked_pos)
        return out.last_hidden_state, token_mask

    def audio_tower(
        self, input_features: torch.Tensor, audio_attention_mask: torch.Tensor | None = None, bool_masked_pos=None, **kwargs
    ) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
        """The audio encoder's own output (hidden states / attentions when asked for through `kwargs`) and the token
        mask `(B, 1 + A)`."""
        if self.audio_model is None:
            raise ValueError("This model was built without the audio tower (use_audio=False): input_features cannot be read")
        if audio_attention_mask is None:
            audio_attention_mask = torch.ones(
                input_features.shape[0], input_features.shape[-1], dtype=torch.long, device=input_features.device
            )
        out = self.audio_model(
            input_features.to(self.audio_model.embeddings.patch_embedding.weight.dtype),
            audio_attention_mask,
            bool_masked_pos=bool_masked_pos,
            return_dict=True,
            **kwargs,
        )
        return out, self.audio_model.token_mask(audio_attention_mask.long())

    def _features(self, tower_output, projection: nn.Module | None) -> BaseModelOutputWithPooling:
        """A tower's output with `pooler_output` replaced by its projected, L2-normalised `[CLS]` state."""
        if projection is None:
            raise ValueError("This model was built without the retrieval projections (use_projections=False)")
        return BaseModelOutputWithPooling(
            last_hidden_state=tower_output.last_hidden_state,
            pooler_output=F.normalize(projection(tower_output.last_hidden_state[:, 0]), dim=-1),
            hidden_states=tower_output.hidden_states,
            attentions=tower_output.attentions,
        )

    def _tower_kwargs(self, output_attentions, output_hidden_states) -> dict:
        attentions, hidden = _wants_outputs(self.config, output_attentions, output_hidden_states)
        return {"output_attentions": attentions, "output_hidden_states": hidden}

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        The text encoder's output, as `CLIPModel.get_text_features` in `transformers` 5: `last_hidden_state
        (B, L, text_hidden)`, `pooler_output (B, projection_dim)` the projected **and L2-normalised** `[CLS]` state
        (the retrieval embedding; CLIP's is not normalised), and `hidden_states` / `attentions` on request.
        `return_dict=False` gives the tuple. Other keyword arguments raise a `TypeError` (a misspelt mask name
        would otherwise be ignored silently).
        """
        out = self.text_tower(
            input_ids, attention_mask, token_type_ids, **self._tower_kwargs(output_attentions, output_hidden_states)
        )
        return self._features(out, self.text_projection)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""The vision encoder's output; `pooler_output (B, projection_dim)` is the projected, L2-normalised `[CLS]`
        state. See [`~OptTriModel.get_text_features`]."""
        out = self.image_tower(pixel_values, **self._tower_kwargs(output_attentions, output_hidden_states))
        return self._features(out, self.image_projection)

    @can_return_tuple
    def get_audio_features(
        self,
        input_features: torch.FloatTensor,
        audio_attention_mask: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""The audio encoder's output; `pooler_output (B, projection_dim)` is the projected, L2-normalised `[CLS]`
        state. See [`~OptTriModel.get_text_features`]."""
        out, _ = self.audio_tower(
            input_features, audio_attention_mask, **self._tower_kwargs(output_attentions, output_hidden_states)
        )
        return self._features(out, self.audio_projection)

    # -- cross-modal -------------------------------------------------------------------------------------------------

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
                fields["text_embeds"] = F.normalize(self.text_projection(text_hidden[:, 0]), dim=-1)
            fusion_inputs.append(self.text_to_fusion(text_hidden))
            fusion_masks.append(attention_mask.long())
            modality_ids.append(MODALITY_TEXT)
        if pixel_values is not None:
            image_out = self.image_tower(pixel_values, image_bool_masked_pos, **(tower_kwargs or {}))
            image_hidden = image_out.last_hidden_state
            fields["image_last_hidden_state"] = image_hidden
            fields["image_outputs"] = image_out if tower_kwargs else None
            if self.image_projection is not None:
                fields["image_embeds"] = F.normalize(self.image_projection(image_hidden[:, 0]), dim=-1)
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
            token_mask = token_mask * token_mask[:, 1:].amax(-1, keepdim=True)  # a row without audio drops [CLS] too
            fields["audio_last_hidden_state"] = audio_hidden
            fields["audio_outputs"] = audio_out if tower_kwargs else None
            fields["audio_token_mask"] = token_mask
            if self.audio_projection is not None:
                fields["audio_embeds"] = F.normalize(self.audio_projection(audio_hidden[:, 0]), dim=-1)
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
                [`OptTriFeatureExtractor`]. A row whose mask is all 0 has no audio.
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
# Pre-training losses (each a plain function, unit-tested on its own)
# ----------------------------------------------------------------------------------------------------------------------


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over masked tokens. logits `(..., V)`, labels `(...)` with -100 where not masked; 0 (not NaN)
    when nothing is labelled."""
    labels = labels.reshape(-1)
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels, ignore_index=-100, reduction="sum")
    return total / (labels != -100).sum().clamp(min=1)


def masked_regression_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """
    Mean squared error over masked positions only: prediction/target `(B, n, d)` with mask `(B, n)` bool, or the
    masked positions already selected, `(M, d)` without a mask. 0 (not NaN) when no position is masked.
    """
    error = (prediction.float() - target.float()).pow(2).mean(-1)
    mask = torch.ones_like(error) if mask is None else mask.float()
    return (error * mask).sum() / mask.sum().clamp(min=1.0)


def masked_frame_contrastive_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    masked: torch.Tensor,
    real: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """
    MAC: InfoNCE for each masked audio token between its prediction and the true frame patch (the positive), with
    every other *real* (unpadded) frame patch of the same clip as a negative. Logits are cosine similarities divided
    by the temperature (higher = more similar; OPT's code used `1 - cos` and so had the sign inverted, and took
    negatives across samples and from padding).

    Args:
        prediction: `(B, A, d)`, or `(M, d)`: the predictions at the masked positions only, in row-major order.
        target: `(B, A, d)`; masked: `(B, A)` bool, positions to predict; real: `(B, A)` bool, unpadded positions
            (candidates).
    """
    queries = F.normalize((prediction[masked] if prediction.dim() == 3 else prediction).float(), dim=-1)  # (M, d)
    candidates = F.normalize(target[real].float(), dim=-1)  # (R, d)
    if queries.shape[0] == 0:
        return prediction.sum() * 0.0
    # index of each masked position among the real ones
    real_index = torch.cumsum(real.flatten().long(), 0) - 1
    positives = real_index[masked.flatten()]
    logits = queries @ candidates.t() / temperature
    sample = torch.arange(real.shape[0], device=real.device)[:, None].expand(real.shape)
    same_clip = sample[masked][:, None] == sample[real][None, :]  # (M, R): negatives from the query's own clip only
    return F.cross_entropy(logits.masked_fill(~same_clip, float("-inf")), positives)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every process the gradient of its own slice (summed over processes)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world = torch.distributed.get_world_size()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.size = torch.distributed.get_rank(), tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def _gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` `(B, ...)` from every process (equal B everywhere), keeping gradients."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        return _GatherWithGrad.apply(tensor)
    return tensor


def contrastive_loss(
    a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, valid: torch.Tensor, local_loss: bool = False
) -> torch.Tensor:
    """
    Symmetric InfoNCE between normalised embeddings `a` and `b` `(B, d)` over the rows where `valid` `(B,)` is True,
    gathered across processes (with gradients) so that every process sees all negatives.

    With `local_loss` (open_clip's `--local-loss --gather-with-grad`) and several processes, each process scores only
    its own rows against the gathered gallery (`(B, world * B)` logits instead of `(world * B)^2`) and returns its
    share of the global loss, scaled by `world`: the mean over processes is the global loss, and the gradients (summed
    by the gather's backward, averaged by DDP/FSDP) are the global loss's.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = torch.distributed.get_world_size() if distributed else 1
    if local_loss and world > 1:
        return _local_contrastive_loss(a, b, logit_scale, valid, world)
    a, b, valid = _gather_with_grad(a), _gather_with_grad(b), _gather_with_grad(valid.float()).bool()
    a, b = a[valid], b[valid]
    if a.shape[0] < 2:
        return logit_scale.sum() * 0.0  # a scalar also for a 1-element scale (FSDP2 shards no 0-d parameter)
    logits = logit_scale.exp().clamp(max=100.0) * a.float() @ b.float().t()
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def _local_contrastive_loss(a, b, logit_scale, valid, world: int) -> torch.Tensor:
    """`contrastive_loss(..., local_loss=True)` on `world` processes: this process's rows against every row."""
    all_a, all_b, all_valid = _gather_with_grad(a), _gather_with_grad(b), _gather_with_grad(valid.float()).bool()
    total = all_valid.sum()
    if total < 2:
        return logit_scale.sum() * 0.0
    own = torch.arange(a.shape[0], device=a.device) + torch.distributed.get_rank() * a.shape[0]
    labels = (torch.cumsum(all_valid.long(), 0) - 1)[own[valid]]  # each own row's index among the valid rows
    scale = logit_scale.exp().clamp(max=100.0)
    a_to_b = scale * a[valid].float() @ all_b[all_valid].float().t()
    b_to_a = scale * b[valid].float() @ all_a[all_valid].float().t()
    summed = F.cross_entropy(a_to_b, labels, reduction="sum") + F.cross_entropy(b_to_a, labels, reduction="sum")
    return world * summed / (2 * total)


@torch.no_grad()
def ipot_transport(cost: torch.Tensor, x_mask: torch.Tensor, y_mask: torch.Tensor, beta: float = 0.5, iterations: int = 50):
    """
    Inexact proximal-point optimal transport (IPOT, Xie et al. 2019), batched, as UNITER uses for WRA.

    Args: cost `(B, n, m)`; x_mask `(B, n)`, y_mask `(B, m)` bool, real positions. Returns the plan `(B, n, m)`.
    """
    x_mask, y_mask = x_mask.float(), y_mask.float()
    joint = x_mask[:, :, None] * y_mask[:, None, :]
    x_len = x_mask.sum(1, keepdim=True).clamp(min=1.0)
    y_len = y_mask.sum(1, keepdim=True).clamp(min=1.0)
    sigma = y_mask / y_len  # (B, m)
    plan = joint.clone()
    kernel = torch.exp(-cost / beta) * joint
    for _ in range(iterations):
        q = kernel * plan
        delta = 1.0 / (x_len * (q @ sigma[:, :, None]).squeeze(-1)).masked_fill(x_mask == 0, 1.0)
        sigma = 1.0 / (y_len * (q.transpose(1, 2) @ delta[:, :, None]).squeeze(-1)).masked_fill(y_mask == 0, 1.0)
        sigma = sigma * y_mask
        plan = delta[:, :, None] * q * sigma[:, None, :]
    return plan * joint


def wra_loss(x: torch.Tensor, x_mask: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor, positive: torch.Tensor):
    """
    Word-region alignment: the optimal-transport distance between the token states `x (B, n, d)` and `y (B, m, d)`
    (cost `1 - cos`), minimised for matched pairs (`positive` True) and maximised for mismatched ones.
    """
    cost = 1.0 - F.normalize(x.float(), dim=-1) @ F.normalize(y.float(), dim=-1).transpose(1, 2)
    plan = ipot_transport(cost.detach(), x_mask.bool(), y_mask.bool())
    distance = (plan * cost).sum(dim=(1, 2))
    sign = positive.float() * 2 - 1
    return (distance * sign).mean()


# ----------------------------------------------------------------------------------------------------------------------
# Pre-training model
# ----------------------------------------------------------------------------------------------------------------------

#: The 5 classes of tri-modal matching.
TRI_MATCHING_CLASSES = ("all_match", "image_audio_match", "text_image_match", "text_audio_match", "none_match")
_PAIRS = (("text", "image"), ("text", "audio"), ("image", "audio"))


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


def patchify_images(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`(B, C, H, W)` -> `(B, N, C * p * p)` in the ViT patch order (row-major)."""
    b, c, h, w = pixel_values.shape
    x = pixel_values.reshape(b, c, h // patch_size, patch_size, w // patch_size, patch_size)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch_size) * (w // patch_size), c * patch_size * patch_size)


def patchify_audio(input_features: torch.Tensor, patch_frames: int) -> torch.Tensor:
    """`(B, M, T)` -> `(B, ceil(T / p), M * p)`, zero-padded, in the order of the audio patch stem."""
    pad = (-input_features.shape[-1]) % patch_frames
    x = F.pad(input_features, (0, pad))
    b, m, t = x.shape
    return x.reshape(b, m, t // patch_frames, patch_frames).permute(0, 2, 1, 3).reshape(b, t // patch_frames, m * patch_frames)


class OptTriPredictionHead(nn.Module):
    """Dense + activation + LayerNorm + linear output (BERT's prediction-head shape)."""

    def __init__(self, hidden_size: int, output_size: int, hidden_act: str, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = ACT2FN[hidden_act]
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = nn.Linear(hidden_size, output_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(self.act(self.dense(hidden_states))))


class OptTriMaskedCodeHead(nn.Module):
    """
    MRC head: the VQ codes under each ViT patch. A patch covers `r x r` cells of the image tokenizer's code grid
    (`r = code grid side / patch grid side`), so each patch state is expanded into `r * r` states that share one
    classifier over the `codebook_size` codes: `(B, N, hidden) -> (B, N, r * r, codebook_size)`.
    """

    def __init__(self, hidden_size: int, codes_per_patch: int, codebook_size: int, hidden_act: str, eps: float):
        super().__init__()
        self.codes_per_patch = codes_per_patch
        self.dense = nn.Linear(hidden_size, codes_per_patch * hidden_size)
        self.act = ACT2FN[hidden_act]
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = nn.Linear(hidden_size, codebook_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        expanded = self.act(self.dense(hidden_states)).unflatten(-1, (self.codes_per_patch, -1))
        return self.decoder(self.layer_norm(expanded))


def codes_by_patch(codes: torch.Tensor, patches_per_side: int) -> torch.Tensor:
    """
    Regroup a code grid `(B, g, g, *rest)` by ViT patch: `(B, P * P, r * r, *rest)` with `P = patches_per_side` and
    `r = g / P`; patches and the cells inside a patch are both in raster order (ViT's patch order).
    """
    batch, grid = codes.shape[0], codes.shape[1]
    r = grid // patches_per_side
    rest = codes.shape[3:]
    grouped = codes.reshape(batch, patches_per_side, r, patches_per_side, r, *rest).transpose(2, 3)
    return grouped.reshape(batch, patches_per_side**2, r * r, *rest)


class OptTriForPreTraining(OptTriPreTrainedModel):
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
        frame_dim = ac.num_mel_bins * ac.patch_frames
        self.mafr_head = OptTriPredictionHead(fc.hidden_size, frame_dim, fc.hidden_act, fc.layer_norm_eps)
        self.mac_head = OptTriPredictionHead(fc.hidden_size, frame_dim, fc.hidden_act, fc.layer_norm_eps)
        self.itm_head = nn.Linear(fc.hidden_size, 2)
        self.tri_matching_head = nn.Linear(fc.hidden_size, len(TRI_MATCHING_CLASSES))
        # MRC / MRC-kl: a patch covers r x r cells of the image tokenizer's code grid (None when the grids disagree)
        idc = config.image_decoder_config
        patches_per_side = vc.image_size // vc.patch_size
        self.mrc_head = None
        if idc.grid_size % patches_per_side == 0:
            r = idc.grid_size // patches_per_side
            self.mrc_head = OptTriMaskedCodeHead(fc.hidden_size, r * r, idc.codebook_size, fc.hidden_act, fc.layer_norm_eps)
        # the text decoder (shared with OptTriForConditionalGeneration) for DTR
        self.text_decoder = OptTriTextDecoder(config.text_decoder_config, fc.hidden_size)
        self.lm_head = nn.Linear(config.text_decoder_config.hidden_size, config.text_decoder_config.vocab_size, bias=False)
        # the code decoders (shared with OptTriForTextToImage / OptTriForTextToAudio: same names) for DIR and DAR
        idc, adc = config.image_decoder_config, config.audio_decoder_config
        self.image_decoder = OptTriCodeDecoder(idc, fc.hidden_size)
        self.image_head = nn.Linear(idc.hidden_size, idc.vocab_size, bias=False)
        self.audio_decoder = OptTriCodeDecoder(adc, fc.hidden_size)
        self.audio_head = nn.Linear(adc.hidden_size, adc.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        """The MLM head's output layer (as BERT's pre-training head); `resize_token_embeddings` also resizes the
        text decoder's `lm_head`."""
        return self.mlm_head.decoder

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.mlm_head.decoder = value

    # -- masking -----------------------------------------------------------------------------------------------------

    def mask_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, generator=None):
        """BERT masking of the `rows` `(B,)` bool: returns (masked ids, labels with -100 where not masked)."""
        cfg = self.config
        candidates = attention_mask.bool() & rows[:, None]
        for special in cfg.special_token_ids:
            candidates &= input_ids != special
        chosen = (torch.rand(input_ids.shape, device=input_ids.device, generator=generator) < cfg.mlm_probability) & candidates
        # at least one masked token in every chosen row that has a candidate
        first = torch.rand(input_ids.shape, device=input_ids.device, generator=generator).masked_fill(~candidates, -1.0).argmax(-1)
        force = candidates.any(-1) & ~chosen.any(-1)
        chosen[force, first[force]] = True
        labels = input_ids.masked_fill(~chosen, -100)
        roll = torch.rand(input_ids.shape, device=input_ids.device, generator=generator)
        masked_ids = input_ids.clone()
        masked_ids[chosen & (roll < 0.8)] = cfg.mask_token_id
        random_tokens = torch.randint(cfg.text_config.vocab_size, input_ids.shape, device=input_ids.device, generator=generator)
        swap = chosen & (roll >= 0.8) & (roll < 0.9)
        masked_ids[swap] = random_tokens[swap]
        return masked_ids, labels

    @staticmethod
    def _mask_positions(real: torch.Tensor, rows: torch.Tensor, probability: float, generator=None) -> torch.Tensor:
        """Choose ~`probability` of the `real` `(B, n)` positions of the `rows`, at least one per row."""
        candidates = real.bool() & rows[:, None]
        chosen = (torch.rand(real.shape, device=real.device, generator=generator) < probability) & candidates
        first = torch.rand(real.shape, device=real.device, generator=generator).masked_fill(~candidates, -1.0).argmax(-1)
        force = candidates.any(-1) & ~chosen.any(-1)
        chosen[force, first[force]] = True
        return chosen

    def _choose_masked_modalities(self, present: dict[str, torch.Tensor], wanted: dict[str, bool], generator=None) -> dict[str, torch.Tensor]:
        """Per sample, which modalities get token-level masking: one (conditional) or all present (joint)."""
        eligible = {m: present[m] & wanted[m] for m in MODALITIES}
        if self.config.masking_policy == "joint":
            return eligible
        stacked = torch.stack([eligible[m].float() for m in MODALITIES], dim=1)  # (B, 3)
        scores = torch.rand(stacked.shape, device=stacked.device, generator=generator).masked_fill(stacked == 0, -1.0)
        pick = scores.argmax(1)
        has_any = stacked.sum(1) > 0
        return {m: (pick == i) & has_any for i, m in enumerate(MODALITIES)}

    def _drop_modalities(self, present: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], generator=None) -> dict[str, torch.Tensor]:
        """Modality-level masking: drop each present modality not in `keep` with p=modality_mask_probability."""
        p = self.config.modality_mask_probability
        kept = {}
        for m in MODALITIES:
            dropped = torch.rand(present[m].shape, device=present[m].device, generator=generator) < p
            kept[m] = present[m] & (keep[m] | ~dropped)
        any_kept = torch.stack([kept[m] for m in MODALITIES], 1).any(1)
        for m in MODALITIES:  # never drop everything: restore the modalities of rows that lost all of them
            kept[m] = kept[m] | (present[m] & ~any_kept)
        return kept

    # -- forward -----------------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_attention_mask: torch.LongTensor | None = None,
        image_codes: torch.LongTensor | None = None,
        image_code_probs: torch.FloatTensor | None = None,
        audio_codes: torch.LongTensor | None = None,
        audio_codes_mask: torch.LongTensor | None = None,
        tasks: list[str] | tuple[str, ...] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        return_dict: bool | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> OptTriForPreTrainingOutput:
        r"""
        Inputs as for [`OptTriModel`] (clean, unmasked: masking happens here).

        Args:
            image_codes (`(B, g, g)` int): the image tokenizer's code grid of each image (MRC targets, DIR targets).
            image_code_probs (`(B, g, g, codebook_size)`): the tokenizer's soft code assignments (MRC-kl targets).
            audio_codes (`(B, n)` int), audio_codes_mask (`(B, n)`): the audio tokenizer's codes (DAR targets).
            tasks: objectives to compute in this call (names from `config.objectives`); default: all with weight > 0.
            output_attentions, output_hidden_states: also run the base model once on the clean inputs and return its
                per-tower outputs (`text_outputs`, `image_outputs`, `audio_outputs`, `cross_modal_outputs`), as
                FLAVA's pre-training output holds the unmasked `text_output` / `image_output` / `multimodal_output`.
            generator: the `torch.Generator` (on the model's device) of every random draw of this call.

        What is random: which modalities of a sample are token-masked (conditional policy), which tokens / patches /
        audio tokens are masked and how (80/10/10 for text), which modalities are dropped (modality-level masking),
        the ITM negatives (hard or uniform) and the `rows_per_sample=1` pairing, and the tri-modal matching classes
        and partners. In training mode these draws come from `generator`, or torch's global RNG when it is `None`,
        and dropout (in the towers; the presets' cross-modal encoder has none) from the global RNG. In `eval()` mode
        without a `generator`, a generator with a fixed seed is used, so identical calls give identical outputs and
        the global RNG is left alone.
        """
        cfg = self.config
        generator = _eval_generator(self, generator, self.opt_tri.logit_scale.device)
        weights = cfg.objectives
        if tasks is None:
            tasks = [name for name, weight in weights.items() if weight > 0]
        unknown = set(tasks) - set(PRETRAINING_OBJECTIVES)
        if unknown:
            raise ValueError(f"Unknown pre-training tasks {sorted(unknown)}; known: {sorted(PRETRAINING_OBJECTIVES)}")
        tasks = set(tasks)
        self._check_code_inputs(tasks, pixel_values, image_codes, image_code_probs, input_features, audio_codes, audio_codes_mask)
        base = self.opt_tri
        batch = _check_model_inputs(
            cfg, input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            pixel_values=pixel_values, image_mask=image_mask, input_features=input_features,
            audio_attention_mask=audio_attention_mask,
        )
        device = base.logit_scale.device
        if input_ids is not None and input_ids.numel():  # before masking: a [MASK] could hide a bad id
            low, high = (int(v) for v in torch.aminmax(input_ids))
            if low < 0 or high >= cfg.text_config.vocab_size:
                raise ValueError(f"input_ids must be in [0, {cfg.text_config.vocab_size}); got values in [{low}, {high}]")
        no = torch.zeros(batch, dtype=torch.bool, device=device)
        if input_ids is not None and attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if pixel_values is not None and image_mask is None:
            image_mask = torch.ones(batch, dtype=torch.long, device=device)
        if input_features is not None and audio_attention_mask is None:
            audio_attention_mask = torch.ones(batch, input_features.shape[-1], dtype=torch.long, device=device)
        present = {
            "text": attention_mask.bool().any(1) if input_ids is not None else no,
            "image": image_mask.bool() if pixel_values is not None else no,
            "audio": audio_attention_mask.bool().any(1) if input_features is not None else no,
        }

        # 1. token-level masking
        masked_tasks = tasks & {"mlm", "mrfr", "mrc", "mrc_kl", "mafr", "mac"}
        wanted = {"text": "mlm" in tasks, "image": bool(tasks & {"mrfr", "mrc", "mrc_kl"}), "audio": bool(tasks & {"mafr", "mac"})}
        masked_rows = self._choose_masked_modalities(present, wanted, generator) if masked_tasks else {m: no for m in MODALITIES}
        text_ids, mlm_labels = input_ids, None
        image_masked = audio_masked = None
        if input_ids is not None and masked_rows["text"].any():
            text_ids, mlm_labels = self.mask_text(input_ids, attention_mask, masked_rows["text"], generator=generator)
        if pixel_values is not None and masked_rows["image"].any():
            n = cfg.num_image_patches
            real = torch.ones(batch, n, dtype=torch.bool, device=device)
            image_masked = self._mask_positions(real, masked_rows["image"], cfg.mvm_probability, generator=generator)
        audio_real = None
        if input_features is not None:
            audio_real = base.audio_model.token_mask(audio_attention_mask.long())[:, 1:].bool()
            if masked_rows["audio"].any():
                audio_masked = self._mask_positions(audio_real, masked_rows["audio"], cfg.mam_probability, generator=generator)

        # 2. unimodal encoders. The sample-level objectives (contrastive, ITM, WRA, tri-matching) read the clean inputs
        # (`states`): a masked colour word or patch would make a true pair look mismatched. The masked-modelling pass
        # reads the token-masked inputs (`masked_states`), which differ from the clean ones only in the rows whose
        # modality is token-masked: only those rows are encoded a second time (under conditional masking, a third of
        # the rows per modality).
        sample_tasks = bool(tasks & {"contrastive", "itm", "wra", "tri_matching"})
        token_masked = {"text": mlm_labels is not None, "image": image_masked is not None, "audio": audio_masked is not None}
        text_types = (lambda rows: None) if token_type_ids is None else (lambda rows: token_type_ids[rows])
        encoders = {
            "text": lambda rows, masked: base.encode_text(
                text_ids[rows] if masked else input_ids[rows], attention_mask[rows], text_types(rows)
            ),
            "image": lambda rows, masked: base.encode_image(pixel_values[rows], image_masked[rows] if masked else None),
            "audio": lambda rows, masked: base.encode_audio(
                input_features[rows], audio_attention_mask[rows], audio_masked[rows] if masked else None
            )[0],
        }
        given = {"text": input_ids is not None, "image": pixel_values is not None, "audio": input_features is not None}
        every_row = torch.arange(batch, device=device)
        hidden_states: dict[str, torch.Tensor] = {}
        masked_hidden: dict[str, torch.Tensor] = {}
        for m in MODALITIES:
            if not given[m]:
                continue
            if sample_tasks or not token_masked[m]:
                hidden_states[m] = encoders[m](every_row, False)
            if not token_masked[m]:
                masked_hidden[m] = hidden_states[m]
            elif m in hidden_states:  # re-encode only the token-masked rows
                rows = masked_rows[m].nonzero().flatten()
                masked_hidden[m] = hidden_states[m].clone()
                masked_hidden[m][rows] = encoders[m](rows, True)
            else:
                masked_hidden[m] = encoders[m](every_row, True)
        token_masks: dict[str, torch.Tensor] = {}
        if given["text"]:
            token_masks["text"] = attention_mask
        if given["image"]:
            token_masks["image"] = image_mask[:, None].expand(-1, masked_hidden["image"].shape[1])
        if given["audio"]:
            token_mask = base.audio_model.token_mask(audio_attention_mask.long())
            token_masks["audio"] = token_mask * token_mask[:, 1:].amax(-1, keepdim=True)  # no audio: no [CLS] either
        states = {m: (hidden_states[m], token_masks[m]) for m in hidden_states}
        masked_states = {m: (masked_hidden[m], token_masks[m]) for m in masked_hidden}
        projections = {"text": base.text_projection, "image": base.image_projection, "audio": base.audio_projection}
        embeds = {
            m: F.normalize(projections[m](hidden_states.get(m, masked_hidden[m])[:, 0]), dim=-1) for m in masked_hidden
        }

        losses: dict[str, torch.Tensor] = {}
        mlm_logits = None

        # 3. masked modelling through the cross-modal encoder, with modality-level masking. The heads read only the
        # masked tokens, and the decoders the rows whose modality was dropped: the last cross-modal layer runs there only.
        if (masked_tasks and any(masked_rows[m].any() for m in MODALITIES)) or tasks & {"dtr", "dir", "dar"}:
            kept = self._drop_modalities(present, masked_rows, generator)
            parts = {
                m: (masked_states[m][0], masked_states[m][1] * kept[m][:, None].long()) for m in masked_states
            }
            wanted_here = {  # per part: the positions whose cross-modal state a head reads
                "text": mlm_labels != -100 if "mlm" in tasks and mlm_labels is not None else None,
                "image": image_masked if tasks & {"mrfr", "mrc", "mrc_kl"} else None,
                "audio": audio_masked if tasks & {"mafr", "mac"} else None,
            }
            columns, segment_start, offset = [torch.zeros(batch, 1, dtype=torch.bool, device=device)], {}, 1
            for m in MODALITIES:
                if m not in parts:
                    continue
                segment_start[m] = offset
                length = parts[m][0].shape[1]
                want = wanted_here[m]
                if want is None:
                    want = torch.zeros(batch, length, dtype=torch.bool, device=device)
                elif m != "text":  # image / audio masks index the tokens after the part's own [CLS]
                    want = torch.cat([torch.zeros_like(want[:, :1]), want], dim=1)
                columns.append(want)
                offset += length
            needed = torch.cat(columns, dim=1)  # (B, S)
            counts = needed.sum(1)
            slots = max(int(counts.max()), 1)
            query_index = torch.argsort((~needed).to(torch.uint8), dim=1, stable=True)[:, :slots]  # needed ones first
            slot_valid = torch.arange(slots, device=device)[None, :] < counts[:, None]

            dropped = {m: present[m] & ~kept[m] for m in MODALITIES}
            decoding = {
                m: dropped[m] if task in tasks and given_codes and bool(dropped[m].any()) else no
                for m, task, given_codes in (
                    ("text", "dtr", input_ids is not None),
                    ("image", "dir", image_codes is not None),
                    ("audio", "dar", audio_codes is not None),
                )
            }
            decoded_rows = decoding["text"] | decoding["image"] | decoding["audio"]
            full_rows = decoded_rows.nonzero().flatten() if bool(decoded_rows.any()) else None
            selected, full, fusion_mask, _ = base.fuse_selected(
                parts.get("text"), parts.get("image"), parts.get("audio"), query_index=query_index, full_rows=full_rows
            )
            row_in_full = torch.cumsum(decoded_rows.long(), 0) - 1

            def decoder_inputs(m):  # (rows, their cross-modal states, their mask)
                rows = decoding[m].nonzero().flatten()
                return rows, full[row_in_full[rows]], fusion_mask[rows]

            def at_masked(m):  # the selected states of part m's masked tokens, (M, hidden), row-major
                length = parts[m][0].shape[1]
                inside = (query_index >= segment_start[m]) & (query_index < segment_start[m] + length)
                return selected[slot_valid & inside]

            if bool(decoding["text"].any()):
                # DTR: write the dropped text from the cross-modal states of the modalities that remain
                rows, states_rows, mask_rows = decoder_inputs("text")
                target = input_ids[rows, 1:].masked_fill(attention_mask[rows, 1:] == 0, -100)
                hidden = self.text_decoder(input_ids[rows, :-1], attention_mask[rows, :-1], states_rows, mask_rows)
                losses["dtr"] = mlm_loss(self.lm_head(hidden), target)
            if bool(decoding["image"].any()):
                # DIR: the image code decoder writes the dropped image's VQ codes from the remaining modalities
                rows, states_rows, mask_rows = decoder_inputs("image")
                inputs, target = code_decoder_targets(cfg.image_decoder_config, image_codes[rows])
                hidden = self.image_decoder(inputs, None, states_rows, mask_rows)
                losses["dir"] = mlm_loss(self.image_head(hidden), target)
            if bool(decoding["audio"].any()):
                # DAR: the audio code decoder writes the dropped clip's VQ codes (then its end code)
                rows, states_rows, mask_rows = decoder_inputs("audio")
                mask = audio_codes_mask[rows] if audio_codes_mask is not None else None
                inputs, target = code_decoder_targets(cfg.audio_decoder_config, audio_codes[rows], mask)
                hidden = self.audio_decoder(inputs, (inputs != cfg.audio_decoder_config.pad_token_id).long(), states_rows, mask_rows)
                losses["dar"] = mlm_loss(self.audio_head(hidden), target)
            if wanted_here["text"] is not None:
                mlm_logits = self.mlm_head(at_masked("text"))  # (M, vocab)
                losses["mlm"] = mlm_loss(mlm_logits, mlm_labels[wanted_here["text"]])
            if image_masked is not None and wanted_here["image"] is not None:
                patches = at_masked("image")  # (M, hidden), in the order of image_masked
                if "mrfr" in tasks:
                    target = patchify_images(pixel_values.float(), cfg.vision_config.patch_size)
                    losses["mrfr"] = masked_regression_loss(self.mrfr_head(patches), target[image_masked])
                if tasks & {"mrc", "mrc_kl"}:
                    log_probs = F.log_softmax(self.mrc_head(patches).float(), dim=-1)  # (M, r*r, K)
                    per_side = cfg.vision_config.image_size // cfg.vision_config.patch_size
                    if "mrc" in tasks:
                        target = codes_by_patch(image_codes, per_side)[image_masked]  # (M, r*r)
                        losses["mrc"] = F.nll_loss(log_probs.flatten(0, 1), target.flatten().long())
                    if "mrc_kl" in tasks:
                        soft = codes_by_patch(image_code_probs, per_side)[image_masked].float()  # (M, r*r, K)
                        losses["mrc_kl"] = F.kl_div(log_probs, soft, reduction="none").sum(-1).mean()
            if audio_masked is not None and wanted_here["audio"] is not None:
                tokens = at_masked("audio")
                target = patchify_audio(input_features.float(), cfg.audio_config.patch_frames)
                if "mafr" in tasks:
                    losses["mafr"] = masked_regression_loss(self.mafr_head(tokens), target[audio_masked])
                if "mac" in tasks:
                    losses["mac"] = masked_frame_contrastive_loss(
                        self.mac_head(tokens), target, audio_masked, audio_real, cfg.mac_temperature
                    )

        # 4. sample level
        logit_scale = base.logit_scale
        if "contrastive" in tasks:
            pair_losses = [
                contrastive_loss(embeds[a], embeds[b], logit_scale, present[a] & present[b], cfg.contrastive_local_loss)
                for a, b in _PAIRS
                if a in embeds and b in embeds and bool((present[a] & present[b]).sum() >= 2)
            ]
            if pair_losses:
                losses["contrastive"] = torch.stack(pair_losses).mean()
        if tasks & {"itm", "wra"}:
            itm_losses, wra_losses = [], []
            for a, b in _PAIRS:
                valid = present[a] & present[b] if a in states and b in states else no
                if int(valid.sum()) < 2:
                    continue
                itm, wra = self._pair_matching(
                    a, b, states, embeds, valid, want_wra="wra" in tasks and a == "text", generator=generator
                )
                itm_losses.append(itm)
                if wra is not None:
                    wra_losses.append(wra)
            if "itm" in tasks and itm_losses:
                losses["itm"] = torch.stack(itm_losses).mean()
            if wra_losses:
                losses["wra"] = torch.stack(wra_losses).mean()
        if "tri_matching" in tasks and len(states) == 3:
            valid = present["text"] & present["image"] & present["audio"]
            if int(valid.sum()) >= 3:
                losses["tri_matching"] = self._tri_matching(states, valid, generator)

        total = None
        for name, value in losses.items():
            term = weights.get(name, 1.0) * value  # a task asked for by name but absent from the config: weight 1
            total = term if total is None else total + term
        output = OptTriForPreTrainingOutput(
            loss=total,
            **{f"{name}_loss": value for name, value in losses.items()},
            mlm_logits=mlm_logits,
            mlm_labels=mlm_labels,
            text_embeds=embeds.get("text"),
            image_embeds=embeds.get("image"),
            audio_embeds=embeds.get("audio"),
            logit_scale=logit_scale,
            **self._clean_outputs(output_attentions, output_hidden_states, input_ids, attention_mask, token_type_ids,
                                  pixel_values, image_mask, input_features, audio_attention_mask),
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def _clean_outputs(self, output_attentions, output_hidden_states, *inputs) -> dict:
        """The base model's per-tower outputs on the clean inputs, when hidden states or attentions are asked for."""
        attentions, hidden = _wants_outputs(self.config, output_attentions, output_hidden_states)
        if not (attentions or _asked(hidden)):
            return {}
        names = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "image_mask", "input_features",
                 "audio_attention_mask")
        base_output = self.opt_tri(
            **dict(zip(names, inputs)), output_attentions=attentions, output_hidden_states=hidden, return_dict=True
        )
        return {name: base_output.get(name) for name in _TOWER_FIELDS}

    def _check_code_inputs(self, tasks, pixel_values, image_codes, image_code_probs, input_features, audio_codes, audio_codes_mask):
        """Clear errors for the VQ-code objectives: codes present, with the shapes and range the heads expect."""
        cfg = self.config
        idc, adc = cfg.image_decoder_config, cfg.audio_decoder_config
        hint = "compute them with the VQ tokenizer (examples/pretrain.py does this with --image_tokenizer/--audio_tokenizer)"
        if tasks & {"mrc", "mrc_kl", "dir"} and pixel_values is not None:
            if tasks & {"mrc", "mrc_kl"} and self.mrc_head is None:
                per_side = cfg.vision_config.image_size // cfg.vision_config.patch_size
                raise ValueError(
                    f"MRC needs the image tokenizer's code grid ({idc.grid_size} x {idc.grid_size}) to be a multiple of "
                    f"the ViT patch grid ({per_side} x {per_side}): use a tokenizer whose downsampling divides the patch size"
                )
            if image_codes is None:
                raise ValueError(f"The objectives {sorted(tasks & {'mrc', 'mrc_kl', 'dir'})} need image_codes; {hint}")
            expected = (pixel_values.shape[0], idc.grid_size, idc.grid_size)
            if tuple(image_codes.shape) != expected or image_codes.is_floating_point():
                raise ValueError(f"image_codes must be an integer tensor of shape {expected}; got {image_codes.dtype} {tuple(image_codes.shape)}")
            if int(image_codes.min()) < 0 or int(image_codes.max()) >= idc.codebook_size:
                raise ValueError(f"image_codes must be in [0, {idc.codebook_size}) (image_decoder_config.codebook_size)")
            if "mrc_kl" in tasks:
                expected_soft = expected + (idc.codebook_size,)
                if image_code_probs is None or tuple(image_code_probs.shape) != expected_soft:
                    got = None if image_code_probs is None else tuple(image_code_probs.shape)
                    raise ValueError(f"mrc_kl needs image_code_probs of shape {expected_soft} (soft code assignments); got {got}")
        if "dar" in tasks and input_features is not None:
            if audio_codes is None:
                raise ValueError(f"The objective 'dar' needs audio_codes; {hint}")
            if audio_codes.ndim != 2 or audio_codes.shape[0] != input_features.shape[0] or audio_codes.is_floating_point():
                raise ValueError(f"audio_codes must be an integer tensor (B, n) with B = {input_features.shape[0]}; got {tuple(audio_codes.shape)}")
            if audio_codes_mask is not None and tuple(audio_codes_mask.shape) != tuple(audio_codes.shape):
                raise ValueError(f"audio_codes_mask must have the shape of audio_codes {tuple(audio_codes.shape)}")

    def _pair_matching(self, a, b, states, embeds, valid, want_wra, generator=None):
        """
        ITM for the pair (a, b) on the rows given by `itm_pairs` (`config.itm_rows_per_sample`). A negative partner
        is drawn from the contrastive similarities (hard) with probability `config.itm_hard_negative_fraction`,
        else uniformly from the other rows.
        """
        base = self.opt_tri
        rows = valid.nonzero().flatten()
        with torch.no_grad():
            n = len(rows)
            off_diagonal = 1.0 - torch.eye(n, device=rows.device)
            sim = embeds[a][rows].float() @ embeds[b][rows].float().t()
            hard = F.softmax(sim * base.logit_scale.exp().clamp(max=100.0), dim=1) * off_diagonal
            hard = hard / hard.sum(1, keepdim=True).clamp_min(1e-12)
            hard_t = F.softmax(sim.t() * base.logit_scale.exp().clamp(max=100.0), dim=1) * off_diagonal
            hard_t = hard_t / hard_t.sum(1, keepdim=True).clamp_min(1e-12)
            fraction = self.config.itm_hard_negative_fraction
            uniform = off_diagonal / (n - 1)
            neg_b = rows[torch.multinomial(fraction * hard + (1 - fraction) * uniform + 1e-9 * off_diagonal, 1, generator=generator).flatten()]
            neg_a = rows[torch.multinomial(fraction * hard_t + (1 - fraction) * uniform + 1e-9 * off_diagonal, 1, generator=generator).flatten()]
        a_index, b_index, labels = itm_pairs(rows, neg_a, neg_b, self.config.itm_rows_per_sample, generator)
        parts = {a: _take(states[a], a_index), b: _take(states[b], b_index)}
        if not want_wra:  # ITM reads the [CLS] only
            cls = base.fuse_selected(parts.get("text"), parts.get("image"), parts.get("audio"))[0][:, 0]
            return F.cross_entropy(self.itm_head(cls).float(), labels), None
        fused, fusion_mask, modality_ids = base.fuse(parts.get("text"), parts.get("image"), parts.get("audio"))
        itm = F.cross_entropy(self.itm_head(fused[:, 0]).float(), labels)
        code_a = {"text": MODALITY_TEXT, "image": MODALITY_IMAGE, "audio": MODALITY_AUDIO}
        # token states only (the unimodal [CLS] of image/audio is excluded; text [CLS] too)
        xa_idx = (modality_ids == code_a[a]).nonzero().flatten()[1:]
        xb_idx = (modality_ids == code_a[b]).nonzero().flatten()[1:]
        wra = wra_loss(fused[:, xa_idx], fusion_mask[:, xa_idx], fused[:, xb_idx], fusion_mask[:, xb_idx], labels.bool())
        return itm, wra

    def _tri_matching(self, states, valid, generator=None):
        """5-way matching: which modalities of a (text, image, audio) triple belong to the same sample."""
        rows = valid.nonzero().flatten()
        n = len(rows)
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
        cls = self.opt_tri.fuse_selected(
            _take(states["text"], text_idx), _take(states["image"], image_idx), _take(states["audio"], audio_idx)
        )[0][:, 0]
        return F.cross_entropy(self.tri_matching_head(cls).float(), classes)


def itm_pairs(
    rows: torch.Tensor, neg_a: torch.Tensor, neg_b: torch.Tensor, rows_per_sample: int, generator=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The rows pairwise matching scores, as indices into the batch: `(a_index, b_index, labels)`, label 1 for a
    matched pair. `rows (n,)` are the samples, `neg_a (n,)` / `neg_b (n,)` a negative partner of each on side a / b.

    - `rows_per_sample=3` (ALBEF): `3n` rows, the positives, then each `a` with its negative `b`, then each `b`
      with its negative `a`.
    - `rows_per_sample=1` (UNITER, FLAVA): `n` rows, sample `i` as its positive pair with probability 1/2, else
      with one side (a or b, at random) replaced by its negative; draws from `generator` (default: torch's
      global RNG).
    """
    if rows_per_sample == 3:
        labels = torch.cat([torch.ones_like(rows), torch.zeros_like(rows), torch.zeros_like(rows)])
        return torch.cat([rows, rows, neg_a]), torch.cat([rows, neg_b, rows]), labels
    if rows_per_sample != 1:
        raise ValueError(f"rows_per_sample must be 1 or 3, got {rows_per_sample!r}")
    draws = torch.rand(2, rows.shape[0], device=rows.device, generator=generator)
    negative, replace_b = draws[0] < 0.5, draws[1] < 0.5
    a_index = torch.where(negative & ~replace_b, neg_a, rows)
    b_index = torch.where(negative & replace_b, neg_b, rows)
    return a_index, b_index, (~negative).long()


#: Seed of the generator that `eval()`-mode forwards use for their random draws when none is passed.
EVAL_SEED = 0


def _eval_generator(model: nn.Module, generator: torch.Generator | None, device) -> torch.Generator | None:
    """The generator of a forward's random draws: the one passed; in `eval()` mode a new one seeded with
    `EVAL_SEED` (identical calls agree); in training mode `None` (torch's global RNG)."""
    if generator is not None or model.training:
        return generator
    return torch.Generator(device=device).manual_seed(EVAL_SEED)


def _take(part: tuple[torch.Tensor, torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return part[0][index], part[1][index]



# ----------------------------------------------------------------------------------------------------------------------
# Text decoder and generation (captioning, ASR)
# ----------------------------------------------------------------------------------------------------------------------


class OptTriDecoderAttention(nn.Module):
    """Multi-head attention of the text decoder: causal self-attention with a KV cache, or cross-attention."""

    def __init__(self, config: OptTriTextDecoderConfig, layer_idx: int, is_cross_attention: bool):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False  # causality comes from the explicit mask (which also covers the cache)
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states, attention_mask, key_value_states=None, cache=None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states `(B, n, d)`, additive attention_mask `(B, 1, n, keys)`. Returns the output `(B, n, d)` and,
        with `output_attentions` (computed eagerly then), the weights `(B, heads, n, keys)`."""
        batch, length, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        source = key_value_states if self.is_cross_attention else hidden_states
        shape = (batch, source.shape[1], self.num_heads, self.head_dim)
        key = self.k_proj(source).view(shape).transpose(1, 2)
        value = self.v_proj(source).view(shape).transpose(1, 2)
        if cache is not None and not self.is_cross_attention:
            key, value = cache.update(key, value, self.layer_idx)
        implementation = "eager" if output_attentions else (self.config._attn_implementation or "sdpa")
        # looked up at every call, so `set_attn_implementation` switches a built model
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention(
            self, query, key, value, attention_mask, scaling=self.scaling,
            dropout=self.config.attention_probs_dropout_prob if self.training else 0.0,
        )
        return self.out_proj(output.reshape(batch, length, -1)), (weights if output_attentions else None)


class OptTriDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm decoder layer: causal self-attention, cross-attention to the encoder, MLP."""

    def __init__(self, config: OptTriTextDecoderConfig, layer_idx: int):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = OptTriDecoderAttention(config, layer_idx, is_cross_attention=False)
        self.cross_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.cross_attn = OptTriDecoderAttention(config, layer_idx, is_cross_attention=True)
        self.mlp_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = OptTriMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, self_mask, encoder_states, cross_mask, cache=None, output_attentions: bool = False):
        """Returns `(hidden_states, self-attention weights or None, cross-attention weights or None)`."""
        attn_output, self_weights = self.self_attn(
            self.self_attn_layer_norm(hidden_states), self_mask, cache=cache, output_attentions=output_attentions
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        attn_output, cross_weights = self.cross_attn(
            self.cross_attn_layer_norm(hidden_states), cross_mask, key_value_states=encoder_states,
            output_attentions=output_attentions,
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        return hidden_states + self.dropout(self.mlp(self.mlp_layer_norm(hidden_states))), self_weights, cross_weights


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


def _decoder_positions(attention_mask: torch.Tensor | None, past: int, length: int, device) -> torch.Tensor:
    """Position ids `(B or 1, n)` of the `n` new tokens: counted over the real tokens of the mask `(B, past + n)`
    (left padding does not shift them), or `past .. past + n - 1` without a mask."""
    if attention_mask is None:
        return torch.arange(past, past + length, device=device)[None]
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)[:, -length:]


def _select_hidden_states(states: tuple, which) -> tuple | None:
    """`output_hidden_states` applied to all the `states`: `True` keeps all; an index or indices (negative ones count
    from the end) keep those, with `None` elsewhere (as the encoders and `transformers` do); nothing asked: `None`."""
    keep = _selected_hidden_states(which, len(states))
    return tuple(state if index in keep else None for index, state in enumerate(states)) if keep else None


class OptTriTextDecoder(nn.Module):
    """Token + position embeddings, `num_hidden_layers` decoder layers and a final LayerNorm."""

    def __init__(self, config: OptTriTextDecoderConfig, encoder_hidden_size: int):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.encoder_projection = nn.Linear(encoder_hidden_size, config.hidden_size)
        self.layers = nn.ModuleList([OptTriDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, input_ids, attention_mask, encoder_states, encoder_mask, cache=None, position_ids=None,
        output_attentions: bool = False, output_hidden_states=False, return_dict: bool = False,
    ) -> torch.Tensor | OptTriDecoderModelOutput:
        """
        input_ids `(B, n)` (the new tokens when a cache holds the earlier ones), attention_mask `(B, past + n)` (0 for
        padding, left or right), encoder_states `(B, S, encoder_hidden)`, encoder_mask `(B, S)`, position_ids `(B, n)`
        (default: counted over the mask's real tokens). Returns the states `(B, n, hidden)`, or with `return_dict` an
        [`OptTriDecoderModelOutput`] (with the per-layer states / attention weights when asked for).
        """
        batch, length = input_ids.shape
        if getattr(cache, "is_compileable", False):
            raise ValueError(
                f"The OPT-Tri decoders keep a DynamicCache; a static (compileable) cache ({type(cache).__name__}, e.g. "
                "from cache_implementation='static') is not supported"
            )
        past = cache.get_seq_length() if cache is not None else 0
        if past + length > self.config.max_position_embeddings:
            raise ValueError(self._length_error(past + length))
        if attention_mask is not None and tuple(attention_mask.shape) != (batch, past + length):
            raise ValueError(
                f"The decoder attention mask has shape {tuple(attention_mask.shape)}; it must cover the cached and the "
                f"new tokens: ({batch}, {past + length})"
            )
        if position_ids is None:
            position_ids = _decoder_positions(attention_mask, past, length, input_ids.device)
        hidden = self.embed_tokens(input_ids) + self.embed_positions(position_ids)
        dtype = hidden.dtype
        keys = torch.arange(past + length, device=input_ids.device)
        allowed = (keys[None, :] <= keys[past:, None])[None]  # (1, n, past + n): causal in the order of the cache
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, :]
        self_mask = (~allowed[:, None]).to(dtype) * torch.finfo(dtype).min
        cross_mask = _additive_mask(encoder_mask, dtype)
        encoder_states = self.encoder_projection(encoder_states)
        all_hidden, self_weights, cross_weights = (hidden,), (), ()
        for layer in self.layers:
            hidden, self_w, cross_w = layer(hidden, self_mask, encoder_states, cross_mask, cache, output_attentions)
            all_hidden, self_weights, cross_weights = all_hidden + (hidden,), self_weights + (self_w,), cross_weights + (cross_w,)
        hidden = self.layer_norm(hidden)
        if not return_dict:
            return hidden
        return OptTriDecoderModelOutput(
            last_hidden_state=hidden,
            hidden_states=_select_hidden_states(all_hidden, output_hidden_states),
            attentions=self_weights if output_attentions else None,
            cross_attentions=cross_weights if output_attentions else None,
        )

    def _length_error(self, total: int) -> str:
        return (
            f"The decoder sequence ({total} tokens) is longer than text_decoder_config.max_position_embeddings "
            f"({self.config.max_position_embeddings}); lower max_new_tokens/max_length"
        )


def _states_mask(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mask `(B, S)` of precomputed cross-modal states: `mask`, or all ones."""
    return mask if mask is not None else torch.ones(states.shape[:2], dtype=torch.long, device=states.device)


#: Whether the installed transformers names the cache `cache` (5.25 and later), so that `past_key_values` is deprecated.
_PAST_KEY_VALUES_DEPRECATED = "cache" in getattr(_generation_utils, "ALL_CACHE_NAMES", ())


def _cache_argument(cache, kwargs: dict):
    """The decoder's self-attention cache, passed as `cache` (its name since transformers 5.25) or under the
    deprecated name `past_key_values` (popped from `kwargs`; a `FutureWarning` says so)."""
    old = kwargs.pop("past_key_values", None)
    if old is None:
        return cache
    if cache is not None and cache is not old:
        raise ValueError("Pass the decoder cache as `cache` or under its deprecated name `past_key_values`, not both")
    if _PAST_KEY_VALUES_DEPRECATED:  # transformers < 5.25 itself still passes `past_key_values`
        warnings.warn(
            "`past_key_values` is deprecated and will be removed in a future release: pass the decoder cache as `cache`",
            FutureWarning,
            stacklevel=3,
        )
    return old


def _check_decoder_ids(ids: torch.Tensor, vocab_size: int, batch: int, name: str) -> None:
    """Raise a `ValueError` naming `name` unless `ids` is `(batch, n >= 1)` with ids in `[0, vocab_size)`."""
    if not torch.is_tensor(ids) or ids.ndim != 2 or ids.is_floating_point():
        raise ValueError(f"{name} must be an integer tensor of shape (B, n), got {getattr(ids, 'shape', type(ids))}")
    if ids.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(ids.shape)}): a decoder prompt needs at least the BOS token")
    if ids.shape[0] != batch:
        raise ValueError(
            f"{name} has batch size {ids.shape[0]} but the conditioning inputs have {batch}: pass one decoder prompt "
            "per conditioning row"
        )
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{name} holds ids outside the decoder vocabulary [0, {vocab_size}): min {low}, max {high}")


def _check_generate_arguments(generate_kwargs: dict) -> None:
    """Clear errors for the `GenerationMixin.generate` settings that otherwise fail deep inside it."""
    for name in ("num_beams", "num_return_sequences"):
        value = generate_kwargs.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _decoder_output(output_cls, config, logits, targets, cache, decoded, states, states_mask, encoder_outputs, return_dict):
    """The typed output of a decoder head: next-token cross-entropy over the labelled positions (when `targets`)."""
    loss = None
    if targets is not None:
        if tuple(targets.shape) != tuple(logits.shape[:2]):
            raise ValueError(f"The targets have shape {tuple(targets.shape)}; the logits {tuple(logits.shape[:2])}")
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    output = output_cls(
        loss=loss,
        logits=logits,
        cache=cache,
        hidden_states=decoded.hidden_states,
        attentions=decoded.attentions,
        cross_attentions=decoded.cross_attentions,
        encoder_hidden_states=states,
        encoder_attention_mask=states_mask,
        encoder_outputs=encoder_outputs,
    )
    return_dict = return_dict if return_dict is not None else config.return_dict
    return output if return_dict else output.to_tuple()


def _resize_text_vocabulary(model: PreTrainedModel, new_num_tokens, pad_to_multiple_of, mean_resizing) -> nn.Module:
    """
    `resize_token_embeddings` for every OPT-Tri head: the text vocabulary is one vocabulary, so the text encoder's
    word embeddings, the text decoder's token embeddings, its LM head and the MLM head (those the head has) are all
    resized, and both `text_config.vocab_size` and `text_decoder_config.vocab_size` follow. The code decoders'
    vocabularies (a VQ tokenizer's codebook) are not token vocabularies and stay as they are.
    """
    if getattr(model.config, "text_config", None) is None:
        raise ValueError(f"{type(model).__name__} has no token embeddings: it reads no text, so there is nothing to resize")
    encoder_embeddings = model.base_model.get_input_embeddings()
    if new_num_tokens is None and pad_to_multiple_of is None:
        return model.get_input_embeddings()
    size = encoder_embeddings.weight.shape[0] if new_num_tokens is None else new_num_tokens
    if pad_to_multiple_of is not None:
        if isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")
        size = -(-size // pad_to_multiple_of) * pad_to_multiple_of
    config = model.config
    dc = config.text_decoder_config
    used = {"mask_token_id": config.mask_token_id, "text_decoder_config.bos_token_id": dc.bos_token_id,
            "text_decoder_config.eos_token_id": dc.eos_token_id, "text_decoder_config.pad_token_id": dc.pad_token_id}
    used.update({f"special_token_ids[{i}]": token for i, token in enumerate(config.special_token_ids)})
    if isinstance(size, bool) or not isinstance(size, int) or size <= max(used.values()):
        raise ValueError(
            f"Cannot resize the text vocabulary to {size!r} tokens: the config uses ids up to {max(used.values())} "
            f"({', '.join(f'{k}={v}' for k, v in used.items())})"
        )
    model._get_resized_embeddings(encoder_embeddings, size, mean_resizing=mean_resizing)  # resized in place
    decoder = getattr(model, "text_decoder", None)
    if decoder is not None:
        model._get_resized_embeddings(decoder.embed_tokens, size, mean_resizing=mean_resizing)
    for owner, name in ((model, "lm_head"), (getattr(model, "mlm_head", None), "decoder")):
        head = getattr(owner, name, None) if owner is not None else None
        if head is not None:
            setattr(owner, name, model._get_resized_lm_head(head, size, mean_resizing=mean_resizing))
    config.text_config.vocab_size = size
    dc.vocab_size = size
    return model.get_input_embeddings()


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
        encoder_hidden_states (`(B, S, cross_modal_hidden)`), encoder_attention_mask (`(B, S)`): the cross-modal
            states the decoder attends to (reused across generation steps).
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
    encoder_attention_mask: torch.LongTensor | None = None
    encoder_outputs: OptTriModelOutput | None = None


class OptTriForConditionalGeneration(OptTriPreTrainedModel, GenerationMixin):
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
        out = self.opt_tri(
            input_ids=encoder_input_ids,
            attention_mask=encoder_attention_mask,
            pixel_values=pixel_values,
            image_mask=image_mask,
            input_features=input_features,
            audio_attention_mask=audio_attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        if return_outputs:
            return out.last_hidden_state, out.fusion_attention_mask, out
        return out.last_hidden_state, out.fusion_attention_mask

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

    @torch.no_grad()
    def generate(
        self,
        pixel_values=None,
        image_mask=None,
        input_features=None,
        audio_attention_mask=None,
        encoder_input_ids=None,
        encoder_attention_mask=None,
        input_ids=None,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_states_mask=None,
        **generate_kwargs,
    ):
        """
        `GenerationMixin.generate` (greedy, sampling, beam search, beam sampling, assisted and prompt-lookup decoding;
        KV cache) after encoding the conditioning inputs once (or with precomputed `encoder_hidden_states`).
        `input_ids` / `attention_mask` are optional decoder prompts, left-padded in a batch (default: the BOS token);
        continuing from a returned cache, pass the whole sequence so far with `cache=`. Returns token ids
        `(B, length)` (or a `GenerateOutput` with `return_dict_in_generate=True`).
        """
        _check_generate_arguments(generate_kwargs)
        cache = _cache_argument(generate_kwargs.pop("cache", None), generate_kwargs)
        if cache is not None:
            generate_kwargs["cache"] = cache
        if encoder_hidden_states is None:
            encoder_hidden_states, encoder_states_mask = self.encode(
                pixel_values, image_mask, input_features, audio_attention_mask, encoder_input_ids, encoder_attention_mask
            )
        encoder_states_mask = _states_mask(encoder_hidden_states, encoder_states_mask)
        dc = self.config.text_decoder_config
        batch = encoder_hidden_states.shape[0]
        if input_ids is None:
            input_ids = torch.full((batch, 1), dc.bos_token_id, dtype=torch.long, device=encoder_hidden_states.device)
        _check_decoder_ids(input_ids, dc.vocab_size, batch, "input_ids (the decoder prompt)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.ndim != 2 or attention_mask.shape[0] != batch:
            raise ValueError(f"attention_mask must have shape ({batch}, length), got {tuple(attention_mask.shape)}")
        generate_kwargs.setdefault("bos_token_id", dc.bos_token_id)
        generate_kwargs.setdefault("eos_token_id", dc.eos_token_id)
        generate_kwargs.setdefault("pad_token_id", dc.pad_token_id)
        return super().generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_states_mask=encoder_states_mask,
            **generate_kwargs,
        )


def _shift_right(labels: torch.Tensor, bos_token_id: int, pad_token_id: int) -> torch.Tensor:
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad_token_id)
    shifted[:, 0] = bos_token_id
    return shifted


# ----------------------------------------------------------------------------------------------------------------------
# Code decoders: images and audio as discrete VQ codes (text-to-image, text-to-audio)
#
# A causal decoder with cross-attention to the cross-modal encoder's states writes the codes of a VQ tokenizer
# (`OptTriImageVQModel` / `OptTriAudioVQModel`, separate checkpoints), which then turns them into pixels or a waveform.
# Code ids are the codebook indices themselves; BOS, the end-of-audio code and PAD follow them (see
# `OptTriCodeDecoderConfig`), so there is no +1 shift to get wrong, and sampling is restricted to real codes.
# ----------------------------------------------------------------------------------------------------------------------


class OptTriCodeDecoder(OptTriTextDecoder):
    """
    The causal decoder over VQ codes (image or audio): code + learned position embeddings, `num_hidden_layers`
    [`OptTriDecoderLayer`]s with cross-attention to the cross-modal states, and a final LayerNorm. `input_ids` are
    decoder ids (BOS, codes, end code, PAD). Images are read in raster order (position `1 + r * grid_size + c` holds
    the input that predicts code `(r, c)`'s successor); position 0 is the BOS token.
    """

    def _length_error(self, total: int) -> str:
        modality = self.config.modality
        return (
            f"The {modality} code sequence ({total} positions with BOS) is longer than "
            f"{modality}_decoder_config.max_position_embeddings ({self.config.max_position_embeddings})"
        )


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
        encoder_hidden_states (`(B, S, cross_modal_hidden)`), encoder_attention_mask (`(B, S)`): the cross-modal
            states the decoder attends to.
        encoder_outputs ([`OptTriModelOutput`]): the tri-modal model's full output, when this call ran the encoder.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_hidden_states: torch.FloatTensor | None = None
    encoder_attention_mask: torch.LongTensor | None = None
    encoder_outputs: OptTriModelOutput | None = None


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


def _check_sampling_arguments(temperature, top_k, top_p, seed, num_return_sequences) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be a non-negative int (0 switches top-k filtering off), got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1.0 switches nucleus filtering off), got {top_p!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    if isinstance(num_return_sequences, bool) or not isinstance(num_return_sequences, int) or num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be a positive int, got {num_return_sequences!r}")


#: `GenerationMixin.generate` settings that a code decoder's `generate` sets itself.
_CODE_GENERATION_FIXED_SETTINGS = frozenset(
    ("max_new_tokens", "max_length", "min_new_tokens", "min_length", "bos_token_id", "eos_token_id", "pad_token_id",
     "suppress_tokens", "begin_suppress_tokens", "generation_config")
)


@contextlib.contextmanager
def _private_rng(seed: int | None, device: torch.device):
    """With a `seed`: run the block on the global RNG seeded with it, then restore the global RNG's state (so the
    same seed gives the same samples and the caller's RNG is untouched). Without one: the global RNG as it is."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def code_decoder_targets(
    dc: OptTriCodeDecoderConfig, labels: torch.Tensor, labels_mask: torch.Tensor | None = None
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """
    Teacher forcing of a code decoder: validate the VQ `labels` (images `(B, g, g)` or `(B, g * g)`; audio `(B, n)`
    right-padded with -100 or `labels_mask` 0) and return (decoder inputs, targets), each `(B, n)` (audio: `n` = codes
    + 1, the end code). Used by the text-to-image/audio heads and by DIR/DAR in pre-training.
    """
    if not torch.is_tensor(labels) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of {dc.modality} codes")
    if dc.modality == "image" and labels.ndim == 3:
        if tuple(labels.shape[1:]) != (dc.grid_size, dc.grid_size):
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not match the decoder's code grid "
                f"({dc.grid_size}, {dc.grid_size}); encode the images with the tokenizer the decoder was built for"
            )
        labels = labels.flatten(1)
    if labels.ndim != 2:
        raise ValueError(f"labels must have shape (B, n) codes, got {tuple(labels.shape)}")
    labels = labels.long()
    if labels_mask is not None:
        if tuple(labels_mask.shape) != tuple(labels.shape):
            raise ValueError(f"labels_mask must have shape {tuple(labels.shape)}, got {tuple(labels_mask.shape)}")
        labels = labels.masked_fill(labels_mask == 0, -100)
    real = labels != -100
    bad = real & ((labels < 0) | (labels >= dc.codebook_size))
    if bool(bad.any()):
        raise ValueError(
            f"labels must be {dc.modality} codes in [0, {dc.codebook_size}) (or -100 to ignore a position); got "
            f"{labels[bad][:5].tolist()}. Is the tokenizer's codebook_size {dc.codebook_size}?"
        )
    batch, length = labels.shape
    if dc.modality == "image":
        if length != dc.num_codes:
            raise ValueError(
                f"An image has {dc.num_codes} codes ({dc.grid_size} x {dc.grid_size}); labels have {length} per row"
            )
        inputs = labels.new_full(labels.shape, dc.bos_token_id)
        inputs[:, 1:] = labels[:, :-1].masked_fill(~real[:, :-1], dc.pad_token_id)
        return inputs, labels
    if length > dc.num_codes:
        raise ValueError(f"labels have {length} codes per row, more than audio_decoder_config.num_codes={dc.num_codes}")
    lengths = real.sum(-1)
    positions = torch.arange(length, device=labels.device)
    if bool((real != (positions[None, :] < lengths[:, None])).any()):
        raise ValueError("audio labels must be right-padded: the real codes first, then -100 (or labels_mask 0)")
    targets = labels.new_full((batch, length + 1), -100)
    targets[:, :length] = labels
    targets[torch.arange(batch, device=labels.device), lengths] = dc.eos_token_id  # the end-of-audio code
    inputs = labels.new_full((batch, length + 1), dc.pad_token_id)
    inputs[:, 0] = dc.bos_token_id
    inputs[:, 1:] = labels.masked_fill(~real, dc.pad_token_id)
    return inputs, targets


class OptTriCodeGenerationModel(OptTriPreTrainedModel, GenerationMixin):
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
        dc = self.decoder_config
        self.opt_tri = OptTriModel(config)
        setattr(self, f"{self.modality}_decoder", OptTriCodeDecoder(dc, config.cross_modal_config.hidden_size))
        setattr(self, f"{self.modality}_head", nn.Linear(dc.hidden_size, dc.vocab_size, bias=False))
        self.post_init()
        if getattr(self, "generation_config", None) is not None:  # GenerationMixin's defaults come from the text decoder
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
        out = self.opt_tri(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            image_mask=image_mask,
            input_features=input_features,
            audio_attention_mask=audio_attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        if return_outputs:
            return out.last_hidden_state, out.fusion_attention_mask, out
        return out.last_hidden_state, out.fusion_attention_mask

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

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        """`GenerationMixin`'s inputs of one step (every keyword argument is passed on), with the decoder ids and
        mask under this head's names (`input_ids` of `forward` are the text prompt)."""
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        for name in ("input_ids", "attention_mask", "position_ids"):
            if name in inputs:
                inputs[f"decoder_{name}"] = inputs.pop(name)
        inputs.pop("decoder_position_ids", None)  # the code decoder counts positions itself
        return inputs

    # -- sampling ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        audio_attention_mask: torch.LongTensor | None = None,
        encoder_hidden_states: torch.FloatTensor | None = None,
        encoder_states_mask: torch.LongTensor | None = None,
        do_sample: bool = True,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        num_return_sequences: int = 1,
        max_new_codes: int | None = None,
        min_new_codes: int = 1,
        use_cache: bool = True,
        **generate_kwargs,
    ) -> OptTriCodeGenerationOutput:
        r"""
        Generate codes conditioned on the inputs (encoded once) with `GenerationMixin.generate`: sampling or greedy
        decoding, beam search (`num_beams`), beam sampling, prompt-lookup decoding, with a KV cache.

        Args:
            input_ids (`(B, L)`), attention_mask, token_type_ids: the text prompt (tokenised by the processor).
            pixel_values, image_mask, input_features, audio_attention_mask: other conditioning inputs.
            encoder_hidden_states (`(B, S, hidden)`), encoder_states_mask (`(B, S)`): precomputed states instead.
            do_sample (`bool`, defaults to `True`): sample (with `temperature`, `top_k`, `top_p`); `False` is greedy
                (or beam search with `num_beams > 1`).
            temperature (`float`, defaults to 1.0): divides the logits before sampling.
            top_k (`int`, defaults to 0): sample among the `top_k` most likely codes only (0: all).
            top_p (`float`, defaults to 1.0): nucleus sampling: among the fewest codes whose probability reaches
                `top_p` (1.0: all).
            seed (`int`, *optional*): the same seed gives the same codes, and the global RNG's state is restored
                afterwards. `None` samples from the global RNG. (The model must be in eval mode, or active dropout
                also draws from the global RNG.)
            num_return_sequences (`int`, defaults to 1): samples per input (consecutive in the output).
            max_new_codes (`int`, *optional*): audio only: the most codes per clip (default and upper bound:
                `audio_decoder_config.num_codes`). An image always gets `grid_size ** 2` codes.
            min_new_codes (`int`, defaults to 1): audio only: the end code is not allowed before this many codes.
            use_cache (`bool`, defaults to `True`): reuse the self-attention keys/values of earlier steps (the same
                result as recomputing everything, faster).
            generate_kwargs: further `GenerationMixin.generate` settings (`num_beams`, `prompt_lookup_num_tokens`,
                `return_dict_in_generate`, `output_scores`, `output_attentions`, ...).

        Only real codes (ids `< codebook_size`, and for audio the end code) are ever chosen: BOS and PAD are
        suppressed, so the codes always index the tokenizer's codebook.

        Returns:
            [`OptTriCodeGenerationOutput`] with `codes`, `codes_mask` and the raw `sequences`.
        """
        _check_sampling_arguments(temperature, top_k, top_p, seed, num_return_sequences)
        _check_generate_arguments(generate_kwargs)
        if generate_kwargs.get("assistant_model") is not None:
            raise ValueError(
                "assistant_model is not supported by the code decoders (their generate takes the text prompt as "
                "input_ids); use prompt_lookup_num_tokens for speculative decoding"
            )
        fixed = sorted(set(generate_kwargs) & _CODE_GENERATION_FIXED_SETTINGS)
        if fixed:
            raise ValueError(
                f"{fixed} cannot be set for code generation: the length comes from max_new_codes / min_new_codes and "
                "the decoder config, and the special ids from the codebook"
            )
        steps, min_new_codes = self._code_budget(max_new_codes, min_new_codes)
        if encoder_hidden_states is None:
            encoder_hidden_states, encoder_states_mask = self.encode(
                input_ids, attention_mask, token_type_ids, pixel_values, image_mask, input_features, audio_attention_mask
            )
        encoder_states_mask = _states_mask(encoder_hidden_states, encoder_states_mask)
        settings = self._generation_settings(do_sample, temperature, top_k, top_p, steps, min_new_codes, use_cache)
        settings.update(generate_kwargs)
        # greedy/beam search give one answer per input: `num_return_sequences` copies of it
        copies = num_return_sequences if not do_sample and settings.get("num_beams", 1) == 1 else 1
        settings["num_return_sequences"] = num_return_sequences // copies
        device = encoder_hidden_states.device
        start = torch.full((encoder_hidden_states.shape[0], 1), self.decoder_config.bos_token_id, device=device)
        with _private_rng(seed, device):
            out = super().generate(
                input_ids=start,
                attention_mask=torch.ones_like(start),
                encoder_hidden_states=encoder_hidden_states,
                encoder_states_mask=encoder_states_mask,
                **settings,
            )
        sequences = out if torch.is_tensor(out) else out.sequences
        return self._codes_output(sequences.repeat_interleave(copies, dim=0), None if torch.is_tensor(out) else out)

    def _codes_output(self, sequences: torch.Tensor, generate_output) -> OptTriCodeGenerationOutput:
        """Codes and code mask of the generated decoder ids `sequences` `(B', 1 + steps)`."""
        dc = self.decoder_config
        generated = sequences[:, 1:]
        codes_mask = (generated < dc.codebook_size).long()
        codes = generated.masked_fill(codes_mask == 0, 0)
        if self.modality == "image":
            codes = codes.view(-1, dc.grid_size, dc.grid_size)
            codes_mask = codes_mask.view(-1, dc.grid_size, dc.grid_size)
        else:  # as wide as the longest clip (the end code is not a code)
            width = int(codes_mask.sum(-1).max())
            codes, codes_mask = codes[:, :width], codes_mask[:, :width]
        return OptTriCodeGenerationOutput(
            codes=codes, codes_mask=codes_mask, sequences=sequences, generate_output=generate_output
        )

    def _code_budget(self, max_new_codes, min_new_codes) -> tuple[int, int]:
        """`(steps, min_new_codes)` of one `generate` call: every code of an image; for audio at most `max_new_codes`
        (default `num_codes`) codes, the end code allowed after `min_new_codes`."""
        dc = self.decoder_config
        if self.modality == "image":
            if max_new_codes not in (None, dc.num_codes):
                raise ValueError(f"An image always has {dc.num_codes} codes; max_new_codes={max_new_codes} is not allowed")
            return dc.num_codes, dc.num_codes
        steps = dc.num_codes if max_new_codes is None else max_new_codes
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= dc.max_position_embeddings - 1:
            raise ValueError(
                f"max_new_codes must be an int in [1, {dc.max_position_embeddings - 1}] (audio_decoder_config."
                f"max_position_embeddings - 1), got {max_new_codes!r}"
            )
        if isinstance(min_new_codes, bool) or not isinstance(min_new_codes, int) or not 0 <= min_new_codes <= steps:
            raise ValueError(f"min_new_codes must be an int in [0, {steps}], got {min_new_codes!r}")
        return steps, min_new_codes

    def _generation_settings(self, do_sample, temperature, top_k, top_p, steps, min_new_codes, use_cache) -> dict:
        """The `GenerationMixin.generate` settings of a code decoder: BOS and PAD (and for images the end code) are
        never generated, so every code indexes the tokenizer's codebook."""
        dc = self.decoder_config
        is_audio = self.modality == "audio"
        settings = dict(
            bos_token_id=dc.bos_token_id,
            eos_token_id=dc.eos_token_id if is_audio else None,
            pad_token_id=dc.pad_token_id,
            suppress_tokens=[dc.bos_token_id, dc.pad_token_id] + ([] if is_audio else [dc.eos_token_id]),
            max_new_tokens=steps,
            min_new_tokens=min_new_codes if is_audio else None,
            do_sample=do_sample,
            use_cache=use_cache,
        )
        if do_sample:
            settings.update(temperature=float(temperature), top_k=top_k, top_p=float(top_p))
        if use_cache:  # GenerationMixin would size its cache from the text decoder's config
            settings["cache"] = DynamicCache(config=dc)
        return settings

    def _check_tokenizer(self, tokenizer, kind: str) -> None:
        """Raise unless `tokenizer` is a VQ tokenizer of `kind` ("image"/"audio") with this decoder's codebook."""
        dc = self.decoder_config
        needed = ("decode", "to_pil") if kind == "image" else ("decode_waveform",)
        tokenizer_config = getattr(tokenizer, "config", None)
        if tokenizer_config is None or not all(hasattr(tokenizer, name) for name in needed):
            raise TypeError(
                f"Expected an OptTri{kind.capitalize()}VQModel as the {kind} tokenizer, got {type(tokenizer).__name__}"
            )
        size = getattr(tokenizer_config, "codebook_size", None)
        if size != dc.codebook_size:
            raise ValueError(
                f"The {kind} tokenizer has {size} codes but the {kind} decoder writes {dc.codebook_size} "
                f"({kind}_decoder_config.codebook_size): use the tokenizer whose codes the decoder was trained on"
            )
        if kind == "image":
            grid = tokenizer_config.image_size // tokenizer_config.downsample
            if grid != dc.grid_size:
                raise ValueError(
                    f"The image tokenizer makes a {grid} x {grid} code grid (image_size {tokenizer_config.image_size} / "
                    f"downsample {tokenizer_config.downsample}) but the decoder writes {dc.grid_size} x {dc.grid_size}"
                )


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
        indices (`torch.LongTensor` of shape `(Q, k)`): candidate indices, best first by the cross-encoder (ITM)
            matching score.
        scores (`torch.FloatTensor` of shape `(Q, k)`): the ITM matching probability of each of `indices`.
        retrieval_indices (`torch.LongTensor` of shape `(Q, k)`): the first-stage shortlist, best first by the
            dual-encoder similarity.
        similarity (`torch.FloatTensor` of shape `(Q, N)`): dual-encoder cosine similarities.
    """

    indices: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None
    retrieval_indices: torch.LongTensor | None = None
    similarity: torch.FloatTensor | None = None


class OptTriClassificationMLP(nn.Module):
    """UNITER's answer / NLVR2 head: `Linear(in, hidden) -> act -> LayerNorm -> Linear(hidden, out)`."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int, hidden_act: str = "gelu", eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(input_size, hidden_size)
        self.act = ACT2FN[hidden_act]
        self.layer_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.output = nn.Linear(hidden_size, output_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.output(self.layer_norm(self.act(self.dense(hidden_states))))


class OptTriPromptLearner(nn.Module):
    """
    CoOp prompt learning (Zhou et al., 2022): `M` learnable context vectors, shared by all classes, are inserted in the
    text encoder's word-embedding space between `[CLS]` and the tokens of each class name, so the text encoder reads
    `[CLS] v_1 ... v_M <class name> [SEP]`. Its projected `[CLS]` state is that class's embedding.

    Settings from the config: `prompt_class_token_ids` (one tokenised class name per class, with the tokenizer's
    special tokens, e.g. `tokenizer(names)["input_ids"]`), `prompt_context_length` (`M`).
    """

    def __init__(self, config: OptTriConfig):
        super().__init__()
        self.class_token_ids = [list(map(int, ids)) for ids in config.prompt_class_token_ids]
        self.context_length = int(config.prompt_context_length)
        self.pad_token_id = int(getattr(config.text_config, "pad_token_id", None) or 0)
        if not self.class_token_ids or any(len(ids) < 2 for ids in self.class_token_ids) or self.context_length < 1:
            raise ValueError("prompt tuning needs prompt_context_length >= 1 and per class [CLS] name... [SEP] token ids")
        longest = max(len(ids) for ids in self.class_token_ids) + self.context_length
        max_positions = getattr(config.text_config, "max_position_embeddings", longest)
        if longest > max_positions:
            raise ValueError(f"A prompt has {longest} tokens, more than text_config.max_position_embeddings={max_positions}")
        self.context = nn.Parameter(torch.zeros(self.context_length, config.text_config.hidden_size))

    def forward(self, text_model: nn.Module, text_projection: nn.Module) -> torch.Tensor:
        """Normalised class embeddings `(num_classes, projection_dim)`."""
        device = self.context.device
        length = max(len(ids) for ids in self.class_token_ids)
        ids = torch.full((len(self.class_token_ids), length), self.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, tokens in enumerate(self.class_token_ids):
            ids[row, : len(tokens)] = torch.tensor(tokens, device=device)
            mask[row, : len(tokens)] = 1
        words = text_model.get_input_embeddings()(ids)
        context = self.context[None].expand(ids.shape[0], -1, -1).to(words.dtype)
        embeds = torch.cat([words[:, :1], context, words[:, 1:]], dim=1)
        mask = torch.cat([mask[:, :1], mask.new_ones(ids.shape[0], self.context_length), mask[:, 1:]], dim=1)
        hidden = text_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return F.normalize(text_projection(hidden[:, 0]), dim=-1)


def _classification_loss(config: OptTriConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BERT's loss choice: `config.problem_type`, inferred from `num_labels` and the label dtype when unset."""
    num_labels = logits.shape[-1]
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int, torch.int16, torch.int8, torch.uint8):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    logits = logits.float()
    if config.problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), labels.float().reshape(-1))
        return F.mse_loss(logits, labels.float())
    if config.problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.long().view(-1), ignore_index=-100)
    if config.problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    raise ValueError(
        f"problem_type must be regression, single_label_classification or multi_label_classification, "
        f"got {config.problem_type!r}"
    )


def _pooled_cls(
    model: "OptTriModel", output_attentions, output_hidden_states, **inputs
) -> tuple[torch.Tensor, OptTriModelOutput | None]:
    """The cross-modal `[CLS]` state `(B, d)` for a head, plus the base model's output when hidden states or
    attentions are asked for (then through the full `forward`); otherwise through `pooled_output`, which runs the
    last cross-modal layer at the `[CLS]` only."""
    attentions, hidden = _wants_outputs(model.config, output_attentions, output_hidden_states)
    if attentions or _asked(hidden):
        out = model(**inputs, output_attentions=attentions, output_hidden_states=hidden, return_dict=True)
        return out.pooler_output, out
    return model.pooled_output(**inputs), None


def _save_hub_files(model: PreTrainedModel, save_directory) -> None:
    """Copy the Hub files (this module and its relative imports) next to the weights of a head with no Auto class,
    so that `get_class_from_dynamic_module("modeling_opt_tri.<Head>", folder)` loads it without our package."""
    import os

    from transformers.dynamic_module_utils import custom_object_save

    os.makedirs(save_directory, exist_ok=True)
    custom_object_save(model, save_directory)


#: State-dict keys of modules a head no longer builds (its objectives never use them); older checkpoints of the head
#: hold them, and they load quietly.
_MASK_TOKEN_KEYS = [r"vision_model\.embeddings\.mask_token$", r"audio_model\.embeddings\.mask_token$"]
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

    _keys_to_ignore_on_load_unexpected = _MASK_TOKEN_KEYS

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
        return base.logit_scale.exp().clamp(max=100.0) * features @ classes.t()

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

    _keys_to_ignore_on_load_unexpected = _MASK_TOKEN_KEYS + _PROJECTION_KEYS

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

    _keys_to_ignore_on_load_unexpected = _MASK_TOKEN_KEYS

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
        if modality == "audio":
            features = _required(inputs, "input_features", modality)
            out, mask = base.audio_tower(features, inputs.get("audio_attention_mask"), **tower_kwargs)
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

    @torch.no_grad()
    def rerank(
        self,
        query_inputs: dict[str, torch.Tensor],
        candidate_inputs: dict[str, torch.Tensor],
        query_modality: str = "text",
        candidate_modality: str = "image",
        top_k: int = 10,
        batch_size: int = 256,
    ) -> OptTriRerankOutput:
        """
        Retrieve the `top_k` candidates of every query with the dual encoder, then reorder them by the cross-encoder
        (ITM) matching probability.

        Args:
            query_inputs: the `Q` queries' model inputs for `query_modality` (e.g. `input_ids`, `attention_mask`).
            candidate_inputs: the `N` candidates' inputs for `candidate_modality` (e.g. `pixel_values`).
            top_k: shortlist size `k` (at most `N`).
            batch_size: (query, candidate) pairs fused per cross-encoder call.
        """
        _check_pair(query_modality, candidate_modality)
        if top_k < 1:
            raise ValueError(f"top_k must be positive, got {top_k}")
        q_embeds, (q_states, q_mask) = self.encode(query_modality, query_inputs)
        c_embeds, (c_states, c_mask) = self.encode(candidate_modality, candidate_inputs)
        similarity = q_embeds.float() @ c_embeds.float().t()
        k = min(top_k, similarity.shape[1])
        shortlist = similarity.topk(k, dim=1).indices  # (Q, k), best first
        q_index = torch.arange(similarity.shape[0], device=similarity.device).repeat_interleave(k)
        c_index = shortlist.flatten()
        scores = []
        for start in range(0, q_index.numel(), batch_size):
            qi, ci = q_index[start : start + batch_size], c_index[start : start + batch_size]
            logits = self.matching_logits(
                query_modality, (q_states[qi], q_mask[qi]), candidate_modality, (c_states[ci], c_mask[ci])
            )
            scores.append(logits.float().softmax(-1)[:, 1])
        scores = torch.cat(scores).view(-1, k)
        order = scores.argsort(dim=1, descending=True, stable=True)
        return OptTriRerankOutput(
            indices=shortlist.gather(1, order), scores=scores.gather(1, order), retrieval_indices=shortlist,
            similarity=similarity,
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
        logits_per_query = logit_scale.exp().clamp(max=100.0) * q_embeds.float() @ g_embeds.float().t()
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
        """ITM over the B positives plus one hard negative per query and per gallery item (sampled ~ softmax(sim)).
        `query` / `gallery`: `(modality, (states, mask))`."""
        (query_modality, part_q), (gallery_modality, part_g) = query, gallery
        logits = logits.detach()
        batch = logits.shape[0]
        rows = torch.arange(batch, device=logits.device)
        with torch.no_grad():
            weights = F.softmax(logits.float(), dim=1)
            weights.fill_diagonal_(0.0)
            weights = weights + 1e-6 * (1 - torch.eye(batch, device=logits.device))
            negative_gallery = torch.multinomial(weights, 1, generator=generator).flatten()
            negative_query = torch.multinomial(weights.t(), 1, generator=generator).flatten()
        q_index = torch.cat([rows, rows, negative_query])
        g_index = torch.cat([rows, negative_gallery, rows])
        itm_logits = self.matching_logits(
            query_modality, _take(part_q, q_index), gallery_modality, _take(part_g, g_index)
        )
        labels = torch.cat([torch.ones_like(rows), torch.zeros_like(rows), torch.zeros_like(rows)])
        return F.cross_entropy(itm_logits.float(), labels)


def _check_retrieval_inputs(config, inputs: dict, modalities: tuple[str, str], paired: bool) -> None:
    """The checks of `OptTriModel` on the two sides of a retrieval call: together (same batch size) for a paired
    batch, else each side on its own (a `Q x G` scoring call)."""
    side_inputs = {m: {k: inputs.get(k) for k in _SIDE_INPUTS[m]} for m in modalities}
    for m, given in side_inputs.items():
        _required(given, _SIDE_INPUTS[m][0], m)
    if paired:
        _check_model_inputs(config, **side_inputs[modalities[0]], **side_inputs[modalities[1]])
    else:
        for given in side_inputs.values():
            _check_model_inputs(config, **given)


_SIDE_INPUTS = {
    "text": ("input_ids", "attention_mask", "token_type_ids"),
    "image": ("pixel_values", "image_mask"),
    "audio": ("input_features", "audio_attention_mask"),
}


def _required(inputs: dict[str, torch.Tensor | None], name: str, modality: str) -> torch.Tensor:
    value = inputs.get(name)
    if value is None:
        raise ValueError(f"The {modality} side needs `{name}`, which was not given")
    return value


def _check_pair(query_modality: str, gallery_modality: str) -> None:
    for modality in (query_modality, gallery_modality):
        if modality not in MODALITIES:
            raise ValueError(f"Unknown modality {modality!r}; expected one of {MODALITIES}")
    if query_modality == gallery_modality:
        raise ValueError(f"Query and gallery must be two different modalities, got {query_modality!r} twice")


class OptTriForPairReasoning(OptTriPreTrainedModel):
    """
    NLVR2-style reasoning over one sentence and two images (UNITER's "paired" setting): the cross-modal encoder fuses
    (text, image 1) and (text, image 2); the two pooled `[CLS]` states are concatenated and an MLP
    (`Linear(2h, 2h) -> GELU -> LayerNorm -> Linear(2h, 2)`) says whether the sentence is true of the pair (class 1)
    or not (class 0). The text is encoded once.

    No `transformers` Auto class fits; see [`OptTriForRetrieval`] for loading the checkpoint as remote code.
    """

    _keys_to_ignore_on_load_unexpected = _MASK_TOKEN_KEYS + _PROJECTION_KEYS + _AUDIO_TOWER_KEYS

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
