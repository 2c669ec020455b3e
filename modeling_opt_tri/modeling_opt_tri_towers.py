"""The unimodal towers of OPT-Tri: which `transformers` encoder families can be a tower, and one small adapter per
family that gives [`OptTriModel`] a uniform interface to it.

Every tower is built from its own sub-config (`config.vision_config`, `config.audio_config`; the text tower through
`AutoModel.from_config(config.text_config)`), so its state-dict keys are the family's own (`vision_model.*`,
`audio_model.*`) and a folder of that family loads into it unchanged. An adapter ([`TowerAdapter`]) says, per family:

- how to run the tower: it returns states `(B, 1 + N, D)` whose position 0 is the summary state (see `SUMMARY` of
  each adapter: the family's `[CLS]`, its pooled output, or a masked mean of its token states) and `N` token states;
- the token mask `(B, 1 + N)` (1 for real tokens; position 0 is 1) from the family's own input mask;
- masked modelling: **one mechanism for every family**. A masked token's vector is replaced by a learned mask
  embedding at the output of the tower's *token stem* (the module that maps the raw input to one vector per token,
  before positions are added), so nothing of the masked token's own input reaches the tower above the stem.
  ViT, DINOv2 and our audio encoder do exactly this natively (`embeddings.mask_token` with `bool_masked_pos`);
  the wav2vec2 family natively too (`masked_spec_embed` with `mask_time_indices`, after the feature projection);
  for the others a forward hook on the stem substitutes `OptTriModel.vision_mask_embedding` /
  `audio_mask_embedding` (CLIP / SigLIP vision: `embeddings.patch_embedding`, AST:
  `embeddings.patch_embeddings.projection`, Whisper: `conv2`). The hook is registered for one forward call only;
  [`TowerAdapter.stem`] names the stem module of each family. Where the stem's windows overlap (Whisper's two
  kernel-3 convolutions, the wav2vec2 feature encoder, AST with a stride below its patch size), a neighbouring token
  would still read the masked token's input, so the input its reconstruction target is computed from is also set
  to zero ([`_AudioAdapter.blank_masked_input`]): nothing of a masked token's target reaches any token;
- the reconstruction target of masked modelling `(B, N, target_size)` (MRFR / MAFR / MAC): pixel patches at the
  tower's patch size for every vision family; for audio, ours: the log-mel frames of a token; AST: the fbank
  window each patch covers; Whisper: the mel frames of its stride (2 frames); the wav2vec2 family: the feature
  encoder's frame features of the clean input (as wav2vec 2.0), layer-normalised per frame and without gradient.

A family not in `VISION_TOWERS` / `AUDIO_TOWERS` raises an error listing the supported ones.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel, SiglipTextModel, ViTModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import can_return_tuple, logging

from .configuration_opt_tri import OptTriAudioConfig
from .modeling_opt_tri_inputs import _check_audio_features, _check_token_ids
from .modeling_opt_tri_layers import (
    OptTriAudioEmbeddings, OptTriEncoder, _wants_outputs, cls_follows_tokens, project_cls,
)
from .modeling_opt_tri_losses import patchify_audio, patchify_images

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Our own audio encoder
# ----------------------------------------------------------------------------------------------------------------------


class OptTriAudioPreTrainedModel(PreTrainedModel):
    """Base of [`OptTriAudioModel`]: its config class, initialisation and the `transformers` flags."""

    config_class = OptTriAudioConfig
    base_model_prefix = "audio_model"
    main_input_name = "input_features"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = ["OptTriLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, OptTriAudioEmbeddings):
            init.trunc_normal_(module.cls_token, std=std)
            if module.mask_token is not None:
                init.trunc_normal_(module.mask_token, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing: bool = True):
        """The audio encoder reads no tokens: a clear error (not `transformers`' failure on its patch stem)."""
        raise ValueError(f"{type(self).__name__} has no token embeddings: it reads no text, so there is nothing to resize")


class OptTriAudioModel(OptTriAudioPreTrainedModel):
    """The OPT-Tri audio encoder on its own (a `PreTrainedModel`, so it can be saved and reused): log-mel patches of
    `patch_frames` frames through a `Conv1d` stem, a learned `[CLS]`, learned positions, a pre-norm transformer."""

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

    def cls_token_mask(self, audio_attention_mask: torch.Tensor) -> torch.Tensor:
        """[`token_mask`] whose `[CLS]` is 0 in the rows without audio (what the cross-modal encoder attends to)."""
        return cls_follows_tokens(self.token_mask(audio_attention_mask.long()))

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


# ----------------------------------------------------------------------------------------------------------------------
# Adapters
# ----------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _substitute_at_stem(stem: nn.Module, masked: torch.Tensor | None, embedding: torch.Tensor | None):
    """For the duration of the block, replace the stem's output vectors at the `masked` `(B, N)` tokens by
    `embedding` `(D,)`. The stem's output is `(B, D, *grid)` with `N = prod(grid)` tokens in row-major order (a
    `Conv1d`/`Conv2d` patch embedding). Nothing is hooked when `masked` is `None`."""
    if masked is None:
        yield
        return
    if embedding is None:
        raise ValueError("Masked modelling needs the tower's mask embedding, which this model does not build here")

    def hook(module, args, output):
        flat = output.flatten(2)
        if flat.shape[-1] != masked.shape[-1] or flat.shape[0] != masked.shape[0]:
            raise ValueError(
                f"bool_masked_pos has shape {tuple(masked.shape)}; the tower's stem gives {flat.shape[-1]} tokens "
                "per row"
            )
        flat = torch.where(masked[:, None, :], embedding.to(flat.dtype)[None, :, None], flat)
        return flat.view_as(output)

    handle = stem.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _masked_mean(states: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean `(B, D)` of `states` `(B, N, D)` over the tokens where `token_mask` `(B, N)` is 1 (all, when `None`)."""
    if token_mask is None:
        return states.mean(1)
    weights = token_mask.to(states.dtype)[..., None]
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _with_summary(output, summary: torch.Tensor, tokens: torch.Tensor) -> BaseModelOutputWithPooling:
    """The tower's output as `(B, 1 + N, D)` states: `summary` `(B, D)` first, then the token states `(B, N, D)`."""
    return BaseModelOutputWithPooling(
        last_hidden_state=torch.cat([summary[:, None], tokens], dim=1),
        pooler_output=summary,
        hidden_states=getattr(output, "hidden_states", None),
        attentions=getattr(output, "attentions", None),
    )


class TowerAdapter:
    """A family's uniform interface (see the module docstring). Adapters hold no parameters: what they add (a mask
    embedding) is an `OptTriModel` parameter passed in, so the tower's own keys stay the family's."""

    #: the `config.model_type`s of the family
    model_types: tuple[str, ...] = ()
    #: dotted path of the token stem inside the tower
    stem_path: str = ""
    #: whether the tower has its own mask token (no `OptTriModel` mask embedding is needed)
    native_mask: bool = False
    #: what position 0 of the states is
    SUMMARY: str = ""

    def build(self, config, use_mask_token: bool) -> nn.Module:
        return AutoModel.from_config(config)

    def stem(self, tower: nn.Module) -> nn.Module:
        """The token stem (the module whose output masked modelling substitutes)."""
        return tower.get_submodule(self.stem_path)

    def input_dtype(self, tower: nn.Module) -> torch.dtype:
        return next(self.stem(tower).parameters()).dtype

    def can_mask(self, tower: nn.Module, mask_embedding) -> bool:
        return mask_embedding is not None


class _ViTAdapter(TowerAdapter):
    model_types = ("vit",)
    stem_path = "embeddings.patch_embeddings"
    native_mask = True
    SUMMARY = "the [CLS] state"

    def build(self, config, use_mask_token):
        return ViTModel(config, add_pooling_layer=False, use_mask_token=use_mask_token)

    def can_mask(self, tower, mask_embedding):
        return getattr(tower.embeddings, "mask_token", None) is not None

    def run(self, tower, pixel_values, bool_masked_pos, mask_embedding, **kwargs):
        return tower(pixel_values=pixel_values, bool_masked_pos=bool_masked_pos, **kwargs, return_dict=True)


class _Dinov2Adapter(_ViTAdapter):
    model_types = ("dinov2",)

    def build(self, config, use_mask_token):
        return AutoModel.from_config(config)  # DINOv2 always has its mask token


class _ClipVisionAdapter(TowerAdapter):
    model_types = ("clip_vision_model",)
    stem_path = "embeddings.patch_embedding"
    SUMMARY = "CLIP's pooled output (the [CLS] state after its post-layernorm, what CLIP's projection reads)"

    def run(self, tower, pixel_values, bool_masked_pos, mask_embedding, **kwargs):
        with _substitute_at_stem(self.stem(tower), bool_masked_pos, mask_embedding):
            out = tower(pixel_values=pixel_values, **kwargs, return_dict=True)
        return _with_summary(out, out.pooler_output, out.last_hidden_state[:, 1:])


class _SiglipVisionAdapter(_ClipVisionAdapter):
    model_types = ("siglip_vision_model",)
    SUMMARY = "the attention-pooled output of SigLIP's head (the mean patch state without a head)"

    def run(self, tower, pixel_values, bool_masked_pos, mask_embedding, **kwargs):
        with _substitute_at_stem(self.stem(tower), bool_masked_pos, mask_embedding):
            out = tower(pixel_values=pixel_values, **kwargs, return_dict=True)
        summary = out.pooler_output if out.pooler_output is not None else out.last_hidden_state.mean(1)
        return _with_summary(out, summary, out.last_hidden_state)


class _AudioAdapter(TowerAdapter):
    """Audio families also say how their input mask (frames or samples) becomes the token mask, and what masked
    audio modelling regresses. `mask_axis`: the axis of the input that `audio_attention_mask` runs along."""

    mask_axis: int = -1

    def target_region(self, tower, input_features: torch.Tensor, masked: torch.Tensor) -> torch.Tensor | None:
        """Bool over the input (its shape without the feature axis, or the input's shape): the input the `masked`
        `(B, N)` tokens' reconstruction targets are computed from, where other tokens' windows overlap it; `None` for a
        stem without overlap (the stem substitution alone keeps the input out)."""
        return None

    def blank_masked_input(self, tower, input_features: torch.Tensor, masked: torch.Tensor | None) -> torch.Tensor:
        """`input_features` with the masked tokens' target region ([`target_region`]) set to zero."""
        region = None if masked is None else self.target_region(tower, input_features, masked)
        if region is None:
            return input_features
        return input_features.masked_fill(region, 0.0)


def _window_coverage(masked: torch.Tensor, window: int, stride: int, length: int) -> torch.Tensor:
    """`(B, N)` masked tokens of a 1-d stem whose token t reads the input `[t * stride, t * stride + window)` ->
    `(B, length)` bool: the input any masked token reads (a transposed convolution of ones, no host sync)."""
    ones = masked.new_ones((1, 1, window), dtype=torch.float)
    covered = F.conv_transpose1d(masked.float()[:, None], ones, stride=stride)[:, 0] > 0
    covered = covered[:, :length]
    return F.pad(covered, (0, length - covered.shape[1]))


class _OursAudioAdapter(_AudioAdapter):
    model_types = (OptTriAudioConfig.model_type,)
    stem_path = "embeddings.patch_embedding"
    native_mask = True
    SUMMARY = "the [CLS] state"

    def build(self, config, use_mask_token):
        return OptTriAudioModel(config, use_mask_token=use_mask_token)

    def can_mask(self, tower, mask_embedding):
        return tower.embeddings.mask_token is not None

    def token_mask(self, tower, input_features, mask):
        return tower.token_mask(mask.long())

    def run(self, tower, input_features, mask, bool_masked_pos, mask_embedding, **kwargs):
        return tower(input_features, mask, bool_masked_pos=bool_masked_pos, return_dict=True, **kwargs)

    def target_size(self, config):
        return config.num_mel_bins * config.patch_frames

    def reconstruction_target(self, tower, input_features):
        return patchify_audio(input_features.float(), tower.config.patch_frames)


class _ASTAdapter(_AudioAdapter):
    model_types = ("audio-spectrogram-transformer",)
    stem_path = "embeddings.patch_embeddings.projection"
    mask_axis = 1  # AST reads (B, max_length, num_mel_bins)
    SUMMARY = "AST's pooled output (the mean of its [CLS] and distillation states); the distillation state is dropped"

    def _windows(self, config, frames: torch.Tensor) -> torch.Tensor:
        """`(B, T)` per-frame values -> `(B, t_out)` the max over each patch's time window."""
        return frames.unfold(1, config.patch_size, config.time_stride).amax(-1)

    def token_mask(self, tower, input_features, mask):
        config = tower.config
        frequencies = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
        time = self._windows(config, mask.long())  # (B, t_out): a patch is real if any of its frames is
        tokens = time[:, None, :].expand(-1, frequencies, -1).flatten(1)  # the stem's (frequency, time) order
        return torch.cat([tokens.new_ones(tokens.shape[0], 1), tokens], dim=1)

    def target_region(self, tower, input_features, masked):
        config = tower.config
        if config.frequency_stride >= config.patch_size and config.time_stride >= config.patch_size:
            return None
        shape = (input_features.shape[2], input_features.shape[1])  # (F, T), as the stem reads it
        windows = masked.float()[:, None, :].expand(-1, config.patch_size**2, -1)
        strides = (config.frequency_stride, config.time_stride)
        covered = F.fold(windows, shape, config.patch_size, stride=strides)[:, 0] > 0  # (B, F, T)
        return covered.transpose(1, 2)

    def run(self, tower, input_features, mask, bool_masked_pos, mask_embedding, **kwargs):
        input_features = self.blank_masked_input(tower, input_features, bool_masked_pos)
        with _substitute_at_stem(self.stem(tower), bool_masked_pos, mask_embedding):
            out = tower(input_values=input_features, **kwargs, return_dict=True)
        return _with_summary(out, out.pooler_output, out.last_hidden_state[:, 2:])

    def target_size(self, config):
        return config.patch_size**2

    def reconstruction_target(self, tower, input_features):
        config = tower.config
        spectrogram = input_features.float().transpose(1, 2)[:, None]  # (B, 1, F, T), as AST's stem reads it
        strides = (config.frequency_stride, config.time_stride)
        return F.unfold(spectrogram, config.patch_size, stride=strides).transpose(1, 2)  # (B, N, patch * patch)


class _WhisperAdapter(_AudioAdapter):
    model_types = ("whisper",)
    stem_path = "conv2"
    SUMMARY = "the mean of the token states over the real frames (Whisper's encoder has no [CLS])"

    def build(self, config, use_mask_token):
        return WhisperEncoder(config)

    def token_mask(self, tower, input_features, mask):
        stride = tower.conv1.stride[0] * tower.conv2.stride[0]
        mask = mask.long()
        tokens = F.pad(mask, (0, (-mask.shape[1]) % stride)).view(mask.shape[0], -1, stride).amax(-1)
        return torch.cat([tokens.new_ones(tokens.shape[0], 1), tokens], dim=1)

    def target_region(self, tower, input_features, masked):
        stride = tower.conv1.stride[0] * tower.conv2.stride[0]  # the target: the `stride` frames of the token
        return _window_coverage(masked, stride, stride, input_features.shape[-1])[:, None, :]

    def run(self, tower, input_features, mask, bool_masked_pos, mask_embedding, **kwargs):
        input_features = self.blank_masked_input(tower, input_features, bool_masked_pos)
        with _substitute_at_stem(self.stem(tower), bool_masked_pos, mask_embedding):
            out = tower(input_features, **kwargs, return_dict=True)
        tokens = self.token_mask(tower, input_features, mask)[:, 1:]
        return _with_summary(out, _masked_mean(out.last_hidden_state, tokens), out.last_hidden_state)

    def target_size(self, config):
        return config.num_mel_bins * 2

    def reconstruction_target(self, tower, input_features):
        return patchify_audio(input_features.float(), tower.conv1.stride[0] * tower.conv2.stride[0])


class _Wav2Vec2Adapter(_AudioAdapter):
    model_types = ("wav2vec2", "hubert", "wavlm")
    stem_path = "feature_projection"
    native_mask = True
    SUMMARY = "the mean of the token states over the real frames (the wav2vec2 family has no [CLS])"

    def build(self, config, use_mask_token):
        if getattr(config, "add_adapter", False):  # its adapter after the encoder changes the frame rate
            raise ValueError(f"A {config.model_type} tower with add_adapter=True is not supported (its frames no longer "
                             "follow the feature encoder); use the checkpoint without the adapter")
        tower = AutoModel.from_config(config)
        if use_mask_token and not hasattr(tower, "masked_spec_embed"):  # built only when mask_time_prob > 0
            tower.masked_spec_embed = nn.Parameter(torch.empty(config.hidden_size).uniform_())
        if use_mask_token and not getattr(config, "apply_spec_augment", True):
            logger.warning(f"{config.model_type}: apply_spec_augment set to True, which its mask_time_indices need")
            config.apply_spec_augment = True
        if getattr(config, "mask_feature_prob", 0.0) > 0:  # its own channel masking would draw outside `generator`
            logger.warning(f"{config.model_type}: mask_feature_prob {config.mask_feature_prob} set to 0 (OPT-Tri's "
                           "masking draws from the model's generator; the tower's SpecAugment channel masking would not)")
            config.mask_feature_prob = 0.0
        return tower

    def can_mask(self, tower, mask_embedding):
        return hasattr(tower, "masked_spec_embed")

    def token_mask(self, tower, input_features, mask):
        """Exactly the frame mask of the family's own `_get_feature_vector_attention_mask`."""
        lengths = tower._get_feat_extract_output_lengths(mask.long().sum(-1))
        frames = int(tower._get_feat_extract_output_lengths(torch.tensor(mask.shape[1])))
        tokens = (torch.arange(frames, device=mask.device)[None, :] < lengths[:, None]).long()
        return torch.cat([tokens.new_ones(tokens.shape[0], 1), tokens], dim=1)

    def target_region(self, tower, input_features, masked):
        """The samples each masked frame's feature-encoder window reads (its target: that frame's conv features)."""
        window, stride = 1, 1
        for kernel, step in zip(tower.config.conv_kernel, tower.config.conv_stride):
            window, stride = window + (kernel - 1) * stride, stride * step
        return _window_coverage(masked, window, stride, input_features.shape[-1])

    def run(self, tower, input_features, mask, bool_masked_pos, mask_embedding, **kwargs):
        tokens = self.token_mask(tower, input_features, mask)[:, 1:]
        input_features = self.blank_masked_input(tower, input_features, bool_masked_pos)
        tower_mask = mask.long()
        tower_mask = torch.where(tower_mask.any(1, keepdim=True), tower_mask, 1)  # a row without audio still runs
        if bool_masked_pos is None and hasattr(tower, "masked_spec_embed"):  # no random SpecAugment on clean views
            bool_masked_pos = torch.zeros_like(tokens, dtype=torch.bool)
        out = tower(
            input_features, attention_mask=tower_mask, mask_time_indices=bool_masked_pos, **kwargs, return_dict=True
        )
        return _with_summary(out, _masked_mean(out.last_hidden_state, tokens), out.last_hidden_state)

    def target_size(self, config):
        return config.conv_dim[-1]

    def reconstruction_target(self, tower, input_features):
        with torch.no_grad():
            features = tower.feature_extractor(input_features.to(self.input_dtype(tower))).transpose(1, 2)
        return F.layer_norm(features.float(), features.shape[-1:])

    def input_dtype(self, tower):
        return tower.feature_extractor.conv_layers[0].conv.weight.dtype


#: The supported vision and audio tower families, by `config.model_type`.
VISION_TOWERS: dict[str, TowerAdapter] = {
    model_type: adapter()
    for adapter in (_ViTAdapter, _Dinov2Adapter, _ClipVisionAdapter, _SiglipVisionAdapter)
    for model_type in adapter.model_types
}
AUDIO_TOWERS: dict[str, TowerAdapter] = {
    model_type: adapter()
    for adapter in (_OursAudioAdapter, _ASTAdapter, _WhisperAdapter, _Wav2Vec2Adapter)
    for model_type in adapter.model_types
}
#: Text towers whose position 0 is not a summary: it is replaced by their pooled (end-of-text) output.
POOLED_TEXT_TOWERS = ("clip_text_model", "siglip_text_model")


def tower_adapter(config, modality: str) -> TowerAdapter:
    """The adapter of `config`'s family for the `"vision"` or `"audio"` tower; an unsupported family raises."""
    towers = VISION_TOWERS if modality == "vision" else AUDIO_TOWERS
    model_type = getattr(config, "model_type", None)
    if model_type not in towers:
        raise ValueError(
            f"{modality}_config is a {model_type!r} config; OPT-Tri's {modality} tower supports the families "
            f"{sorted(towers)}"
        )
    return towers[model_type]


def audio_target_size(config) -> int:
    """The size of one audio token's reconstruction target (MAFR / MAC) for the audio family of `config`."""
    return tower_adapter(config, "audio").target_size(config)


def build_text_tower(config) -> nn.Module:
    """The text tower: `AutoModel.from_config` (without a pooler where the family has one); `SiglipTextModel`,
    which `AutoModel` does not map, directly."""
    if getattr(config, "model_type", None) == "siglip_text_model":
        return SiglipTextModel(config)
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:  # text encoders without a pooler take no `add_pooling_layer`
        return AutoModel.from_config(config)


# ----------------------------------------------------------------------------------------------------------------------
# The towers' side of OptTriModel
# ----------------------------------------------------------------------------------------------------------------------


class OptTriTowersMixin:
    """The unimodal-tower methods of [`OptTriModel`] (they read `text_model`, `vision_model`, `audio_model`, their
    adapters and the adapter-owned mask embeddings)."""

    def _build_towers(self, config, use_mask_tokens: bool, use_audio: bool) -> None:
        self.text_model = build_text_tower(config.text_config)
        self.vision_adapter = tower_adapter(config.vision_config, "vision")
        self.vision_model = self.vision_adapter.build(config.vision_config, use_mask_tokens)
        self.audio_adapter = tower_adapter(config.audio_config, "audio")
        self.audio_model = self.audio_adapter.build(config.audio_config, use_mask_tokens) if use_audio else None
        # Keep one config object per component so that changes (e.g. the attention implementation) stay in sync.
        self.text_model.config = config.text_config
        self.vision_model.config = config.vision_config
        if use_audio:
            self.audio_model.config = config.audio_config
        for name, adapter, sub in (("vision", self.vision_adapter, config.vision_config),
                                   ("audio", self.audio_adapter if use_audio else None, config.audio_config)):
            wanted = use_mask_tokens and adapter is not None and not adapter.native_mask
            embedding = nn.Parameter(torch.zeros(sub.hidden_size)) if wanted else None
            setattr(self, f"{name}_mask_embedding", embedding)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids=None, **kwargs
    ) -> torch.Tensor:
        """Text encoder states `(B, L, text_hidden)`. A row whose mask is all 0 (no text) still runs, on `[CLS]`."""
        return self.text_tower(input_ids, attention_mask, token_type_ids, **kwargs).last_hidden_state

    def text_tower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids=None, **kwargs):
        """The text encoder's own output (`last_hidden_state (B, L, text_hidden)`, and `hidden_states` / `attentions`
        when asked for through `kwargs`). For CLIP / SigLIP text towers, position 0 is their pooled output."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, length); got {tuple(input_ids.shape)}")
        _check_token_ids(input_ids, self.config.text_config.vocab_size, "input_ids")
        if attention_mask is not None:
            attention_mask = attention_mask.clone()
            attention_mask[:, 0] = 1
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, **extra, **kwargs, return_dict=True)
        if getattr(self.config.text_config, "model_type", None) in POOLED_TEXT_TOWERS:
            out = _with_summary(out, out.pooler_output, out.last_hidden_state[:, 1:])
        return out

    def encode_image(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None, **kwargs):
        """Vision states `(B, 1 + N, vision_hidden)` (the summary state first). `bool_masked_pos (B, N)` masks patches."""
        return self.image_tower(pixel_values, bool_masked_pos, **kwargs).last_hidden_state

    def image_tower(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None, **kwargs):
        """The vision tower's output through its adapter (`last_hidden_state (B, 1 + N, vision_hidden)`, and
        `hidden_states` / `attentions` when asked for through `kwargs`)."""
        vc = self.config.vision_config
        if not torch.is_tensor(pixel_values) or not pixel_values.is_floating_point():
            raise TypeError("pixel_values must be a floating-point tensor (B, C, H, W); use OptTriImageProcessor")
        expected = (vc.num_channels, vc.image_size, vc.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}); got "
                f"{tuple(pixel_values.shape)}. Use OptTriImageProcessor with image_size={vc.image_size}."
            )
        adapter, tower = self.vision_adapter, self.vision_model
        if bool_masked_pos is not None and not adapter.can_mask(tower, self.vision_mask_embedding):
            raise ValueError(f"bool_masked_pos needs the vision mask token, which {type(self).__name__} does not build here")
        pixel_values = pixel_values.to(adapter.input_dtype(tower))
        return adapter.run(tower, pixel_values, bool_masked_pos, self.vision_mask_embedding, **kwargs)

    def encode_audio(
        self, input_features: torch.Tensor, audio_attention_mask: torch.Tensor | None = None, bool_masked_pos=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio states `(B, 1 + A, audio_hidden)` and the token mask `(B, 1 + A)`."""
        out, token_mask = self.audio_tower(input_features, audio_attention_mask, bool_masked_pos)
        return out.last_hidden_state, token_mask

    def audio_input_mask(self, input_features: torch.Tensor, audio_attention_mask: torch.Tensor | None) -> torch.Tensor:
        """`audio_attention_mask`, or all ones along the family's mask axis (frames or samples) when it is `None`."""
        if audio_attention_mask is not None:
            return audio_attention_mask
        length = input_features.shape[self.audio_adapter.mask_axis]
        return torch.ones(input_features.shape[0], length, dtype=torch.long, device=input_features.device)

    def audio_token_mask(self, input_features: torch.Tensor, audio_attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The audio token mask `(B, 1 + A)` (position 0 is 1) from the family's input mask (frames or samples)."""
        mask = self.audio_input_mask(input_features, audio_attention_mask)
        return self.audio_adapter.token_mask(self.audio_model, input_features, mask)

    def audio_reconstruction_target(self, input_features: torch.Tensor) -> torch.Tensor:
        """What masked audio modelling regresses, per token: `(B, A, audio_target_size)` (module docstring)."""
        return self.audio_adapter.reconstruction_target(self.audio_model, input_features)

    def image_reconstruction_target(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What masked image modelling regresses, per patch: the pixels `(B, N, C * patch * patch)`."""
        return patchify_images(pixel_values.float(), self.config.vision_config.patch_size)

    def audio_tower(
        self, input_features: torch.Tensor, audio_attention_mask: torch.Tensor | None = None, bool_masked_pos=None, **kwargs
    ) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
        """The audio tower's output through its adapter (hidden states / attentions when asked for through
        `kwargs`) and the token mask `(B, 1 + A)`."""
        if self.audio_model is None:
            raise ValueError("This model was built without the audio tower (use_audio=False): input_features cannot be read")
        adapter, tower = self.audio_adapter, self.audio_model
        if bool_masked_pos is not None and not adapter.can_mask(tower, self.audio_mask_embedding):
            raise ValueError(f"bool_masked_pos needs the audio mask token, which {type(self).__name__} does not build here")
        mask = self.audio_input_mask(input_features, audio_attention_mask)
        features = input_features.to(adapter.input_dtype(tower))
        out = adapter.run(tower, features, mask, bool_masked_pos, self.audio_mask_embedding, **kwargs)
        return out, adapter.token_mask(tower, input_features, mask)

    def project_cls(self, modality: str, hidden_states: torch.Tensor) -> torch.Tensor:
        """The normalised retrieval embedding `(B, projection_dim)` of `modality`'s tower states `(B, n, d)`."""
        return project_cls(getattr(self, f"{modality}_projection"), hidden_states)

    def _features(self, tower_output, projection: nn.Module | None) -> BaseModelOutputWithPooling:
        """A tower's output with `pooler_output` replaced by its projected, L2-normalised `[CLS]` state."""
        if projection is None:
            raise ValueError("This model was built without the retrieval projections (use_projections=False)")
        return BaseModelOutputWithPooling(
            last_hidden_state=tower_output.last_hidden_state,
            pooler_output=project_cls(projection, tower_output.last_hidden_state),
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
