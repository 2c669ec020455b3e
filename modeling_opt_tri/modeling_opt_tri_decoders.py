"""The decoders of OPT-Tri: the text decoder (DTR, captioning, ASR) and the VQ-code decoders (DIR, DAR, text-to-image,
text-to-audio), with their cache / argument helpers."""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from transformers.generation import utils as _generation_utils
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_opt_tri import OptTriCodeDecoderConfig, OptTriConfig, OptTriTextDecoderConfig
from .modeling_opt_tri_layers import (
    OptTriMaskedCodeHead,
    OptTriMLP,
    _additive_mask,
    _selected_hidden_states,
    eager_attention_forward,
)
from .modeling_opt_tri_outputs import OptTriDecoderModelOutput


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


class OptTriCausalDecoder(nn.Module):
    """The causal decoder that the text and code decoders share: token + position embeddings, `num_hidden_layers`
    [`OptTriDecoderLayer`]s (causal self-attention with a KV cache, cross-attention to the cross-modal states) and a
    final LayerNorm. [`OptTriTextDecoder`] and [`OptTriCodeDecoder`] differ only in their config and length error."""

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
        return f"The decoder sequence ({total} tokens) is longer than max_position_embeddings ({self.config.max_position_embeddings})"


class OptTriTextDecoder(OptTriCausalDecoder):
    """[`OptTriCausalDecoder`] over the text vocabulary (`text_decoder_config`): DTR, captioning and ASR."""

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
        encoder_states_mask=states_mask,
        encoder_outputs=encoder_outputs,
    )
    return_dict = return_dict if return_dict is not None else config.return_dict
    return output if return_dict else output.to_tuple()


def _shift_right(labels: torch.Tensor, bos_token_id: int, pad_token_id: int) -> torch.Tensor:
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1].masked_fill(labels[:, :-1] == -100, pad_token_id)
    shifted[:, 0] = bos_token_id
    return shifted


class OptTriCodeDecoder(OptTriCausalDecoder):
    """
    [`OptTriCausalDecoder`] over VQ codes (image or audio): code + learned position embeddings, `num_hidden_layers`
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


def build_code_decoder(config: OptTriConfig, modality: str) -> tuple[OptTriCodeDecoder, nn.Linear]:
    """The `modality` (`"image"` / `"audio"`) code decoder of `config` and its code head (decoder states -> the
    decoder vocabulary), as the pre-training and code-generation heads hold them."""
    dc = getattr(config, f"{modality}_decoder_config")
    decoder = OptTriCodeDecoder(dc, config.cross_modal_config.hidden_size)
    return decoder, nn.Linear(dc.hidden_size, dc.vocab_size, bias=False)


def build_masked_code_head(config: OptTriConfig) -> OptTriMaskedCodeHead | None:
    """The MRC / MRC-kl head of `config`: a ViT patch covers `r x r` cells of the image tokenizer's code grid; `None`
    when the code grid is not a multiple of the patch grid."""
    fc, vc, idc = config.cross_modal_config, config.vision_config, config.image_decoder_config
    patches_per_side = vc.image_size // vc.patch_size
    if idc.grid_size % patches_per_side != 0:
        return None
    r = idc.grid_size // patches_per_side
    return OptTriMaskedCodeHead(fc.hidden_size, r * r, idc.codebook_size, fc.hidden_act, fc.layer_norm_eps)


class OptTriCodeDecoderSizingMixin:
    """`size_code_decoders` of the heads that hold code decoders ([`OptTriForPreTraining`], the text-to-image /
    text-to-audio heads)."""

    def size_code_decoders(self, image_tokenizer=None, audio_tokenizer=None) -> list[str]:
        """
        Size this model's code decoders to VQ tokenizers (an [`OptTriImageVQModel`] / [`OptTriAudioVQModel`], or its
        config): `config.size_code_decoders`, then every code decoder whose config changed is built anew with its code
        head (and, for images, the MRC head) and initialised, on the model's device and dtype. The rest of the model
        is untouched; the rebuilt modules start from random weights (their vocabulary or length changed). Call it
        before `gradient_checkpointing_enable` and before building the optimizer. Returns the rebuilt modules' names.
        """
        changed = self.config.size_code_decoders(image_tokenizer, audio_tokenizer)
        rebuilt: dict[str, nn.Module | None] = {}
        for modality in (name.removesuffix("_decoder_config") for name in changed):
            if hasattr(self, f"{modality}_decoder"):
                rebuilt[f"{modality}_decoder"], rebuilt[f"{modality}_head"] = build_code_decoder(self.config, modality)
            if modality == "image" and hasattr(self, "mrc_head"):
                rebuilt["mrc_head"] = build_masked_code_head(self.config)
        reference = next(self.parameters())
        for name, module in rebuilt.items():
            if module is not None:
                module.to(device=reference.device, dtype=reference.dtype)
                for submodule in module.modules():
                    self._init_weights(submodule)
            setattr(self, name, module)
        if rebuilt and hasattr(self, "_set_generation_ids"):
            self._set_generation_ids()
        return sorted(rebuilt)


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


def _check_code_generate_arguments(generate_kwargs: dict) -> None:
    """`GenerationMixin.generate` settings the code decoders refuse, with a clear `ValueError` each."""
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


@contextlib.contextmanager
def _private_rng(seed: int | None, device: torch.device):
    """With a `seed`: run the block on the global RNG seeded with it, then restore the global RNG's state (so the
    same seed gives the same samples and the caller's RNG is untouched). Without one: the global RNG as it is."""
    if seed is None:
        yield
        return
    # Seed only the generators this block draws from (the CPU one and `device`'s): `torch.manual_seed` would also
    # reseed every other GPU, whose states `fork_rng` does not restore. Not thread-safe: the global RNG is shared.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            torch.cuda.default_generators[index].manual_seed(seed)
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
