"""Building blocks of OPT-Tri: attention (through the attention-interface registry), MLP, pre-norm layer and encoder, the
audio patch stem, prediction heads and the additive-mask helpers."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_opt_tri import OptTriAudioConfig, OptTriConfig, OptTriFusionConfig

#: Modality-type ids used by the cross-modal encoder.
MODALITY_CLS, MODALITY_TEXT, MODALITY_IMAGE, MODALITY_AUDIO = 0, 1, 2, 3
MODALITIES = ("text", "image", "audio")


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
        queries = hidden_states if query_states is None else query_states
        return self.attend(self.q_proj(queries), self.k_proj(hidden_states), self.v_proj(hidden_states), attention_mask,
                           output_attentions)

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attention of `forward` from projected queries `(B, k, d)`, keys and values `(B, S, d)` (`q_proj`,
        `k_proj`, `v_proj` already applied, e.g. once per distinct input row and then gathered)."""
        batch, length, _ = key.shape
        queries = query
        query = query.view(batch, queries.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
        shape = (batch, length, self.num_heads, self.head_dim)
        key = key.view(shape).transpose(1, 2)
        value = value.view(shape).transpose(1, 2)
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
        return self._after_attention(hidden_states, attn_output), weights

    def forward_projected(
        self, hidden_states: torch.Tensor, projected: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None, query_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward` with the per-position work before the attention already done: `projected` holds the queries,
        keys and values `(B, S, d)` of `layer_norm1(hidden_states)` (`self_attn.q_proj` / `k_proj` / `v_proj`).
        `query_index` `(B, k)`: the output at these positions only."""
        query, key, value = projected
        if query_index is not None:
            gather = query_index[:, :, None].expand(-1, -1, hidden_states.shape[-1])
            hidden_states, query = hidden_states.gather(1, gather), query.gather(1, gather)
        attn_output, _ = self.self_attn.attend(query, key, value, attention_mask)
        return self._after_attention(hidden_states, attn_output)

    def project_for_attention(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The queries, keys and values `(B, S, d)` that `forward` computes from `hidden_states` (`projected` of
        `forward_projected`); each position's depend on that position alone."""
        normed = self.layer_norm1(hidden_states)
        attention = self.self_attn
        return attention.q_proj(normed), attention.k_proj(normed), attention.v_proj(normed)

    def _after_attention(self, hidden_states: torch.Tensor, attn_output: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.dropout(attn_output)
        return hidden_states + self.dropout(self.mlp(self.layer_norm2(hidden_states)))


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

    def forward_projected(
        self, hidden_states: torch.Tensor, projected: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor, query_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The stack on embeddings `(B, S, d)` whose first layer's queries, keys and values `projected` are given
        (`OptTriLayer.forward_projected`); the last layer's output at `query_index` `(B, k)` only, or everywhere
        when it is `None`. Equals `forward` / `forward_selected`."""
        additive_mask = _additive_mask(attention_mask, hidden_states.dtype)
        first, rest = self.layers[0], self.layers[1:]
        if not rest:
            return first.forward_projected(hidden_states, projected, additive_mask, query_index)
        hidden_states = first.forward_projected(hidden_states, projected, additive_mask)
        for layer in rest[:-1]:
            hidden_states, _ = layer(hidden_states, additive_mask)
        return rest[-1](hidden_states, additive_mask, query_index=query_index)[0]


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


def project_cls(projection: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """The retrieval embedding of a tower's output: its `[CLS]` state `hidden_states[:, 0]` through `projection`,
    L2-normalised, `(B, projection_dim)`."""
    return F.normalize(projection(hidden_states[:, 0]), dim=-1)


def cls_follows_tokens(token_mask: torch.Tensor) -> torch.Tensor:
    """A `(B, 1 + n)` token mask whose `[CLS]` is masked out in the rows without any real token (a clip without
    audio contributes nothing to the cross-modal input, not even its `[CLS]`)."""
    return token_mask * token_mask[:, 1:].amax(-1, keepdim=True)


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
        return project_cls(text_projection, hidden)


def _pooled_cls(
    model: nn.Module, output_attentions, output_hidden_states, **inputs
) -> tuple[torch.Tensor, ModelOutput | None]:
    """The cross-modal `[CLS]` state `(B, d)` for a head (`model`: an [`OptTriModel`]), plus the base model's output when hidden states or
    attentions are asked for (then through the full `forward`); otherwise through `pooled_output`, which runs the
    last cross-modal layer at the `[CLS]` only."""
    attentions, hidden = _wants_outputs(model.config, output_attentions, output_hidden_states)
    if attentions or _asked(hidden):
        out = model(**inputs, output_attentions=attentions, output_hidden_states=hidden, return_dict=True)
        return out.pooler_output, out
    return model.pooled_output(**inputs), None
