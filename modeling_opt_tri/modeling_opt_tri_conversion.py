"""Checkpoint surgery: towers from BERT / ViT / AST / OPT-Tri audio checkpoints, and resizing the text vocabulary."""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.utils import logging

from .configuration_opt_tri import OptTriAudioConfig, OptTriConfig

logger = logging.get_logger(__name__)


def _load_audio_encoder_checkpoint(
    path: str, default: OptTriAudioConfig, audio_model_class: type[PreTrainedModel]
) -> tuple[OptTriAudioConfig, dict]:
    """Read an OptTriAudioModel (`audio_model_class`), ASTModel or ViTModel folder; return an audio config and a
    state dict in our names."""
    source_config = AutoConfig.from_pretrained(path)
    if source_config.model_type == OptTriAudioConfig.model_type:
        model = audio_model_class.from_pretrained(path)
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
        expected = {k for k in audio_model_class(config).state_dict() if k.startswith(("encoder.", "layernorm."))}
    if set(state) != expected:  # never hand back a silently random audio transformer
        raise ValueError(
            f"Could not map the transformer weights of audio={path!r} onto OPT-Tri's audio encoder; missing "
            f"{sorted(expected - set(state))[:8]}, unexpected {sorted(set(state) - expected)[:8]}"
        )
    return config, state


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


def build_from_unimodal_checkpoints(
    cls: type[PreTrainedModel],
    audio_model_class: type[PreTrainedModel],
    text: str | None = None,
    vision: str | None = None,
    audio: str | None = None,
    config: OptTriConfig | None = None,
    **config_kwargs,
) -> PreTrainedModel:
    """
    Build a `cls` model whose unimodal encoders start from local `transformers` checkpoint folders, as OPT started from
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
    audio_model_class: [`OptTriAudioModel`] (passed in: it lives in `modeling_opt_tri.py`).
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
        audio_config, audio_state = _load_audio_encoder_checkpoint(audio, config.audio_config, audio_model_class)
        config.audio_config = audio_config
    config.validate()
    model = cls(config)
    base = model.base_model
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
