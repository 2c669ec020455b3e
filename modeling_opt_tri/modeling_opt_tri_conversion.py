"""Towers from unimodal `transformers` checkpoints (whole or inside a composite / head checkpoint), and resizing the
text vocabulary."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, SiglipTextModel
from transformers.utils import logging

from .configuration_opt_tri import OptTriAudioConfig, OptTriConfig
from .modeling_opt_tri_towers import OptTriAudioModel, tower_adapter

logger = logging.get_logger(__name__)

#: Composite checkpoints whose towers are read: model_type -> {modality: (sub-config name, key prefix, projection)}.
_COMPOSITE_TOWERS = {
    "clip": {"vision": ("vision_config", "vision_model.", "visual_projection"),
             "text": ("text_config", "text_model.", "text_projection")},
    "siglip": {"vision": ("vision_config", "vision_model.", None), "text": ("text_config", "text_model.", None)},
}

#: Tower families that come from a dual encoder with (CLIP) or without (SigLIP) a projection like ours.
_PROJECTED_TOWERS = ("clip_text_model", "clip_vision_model", "siglip_text_model", "siglip_vision_model")


def _read_tower_checkpoint(path: str, modality: str) -> tuple:
    """`(tower config, tower state dict, source projection weight or None, keys the source left random)` of the
    `modality` tower in the checkpoint folder `path`: a tower's own checkpoint, its base model under a head
    (`*ForSequenceClassification`, `*ForCTC`, ...), the vision / text tower of a `CLIPModel` / `SiglipModel`, the
    encoder of a `WhisperModel` / `WhisperForConditionalGeneration`."""
    source_config = AutoConfig.from_pretrained(path)
    model_type = source_config.model_type
    if model_type == OptTriAudioConfig.model_type:
        model = OptTriAudioModel.from_pretrained(path)
        return model.config, model.state_dict(), None, set()
    composite = _COMPOSITE_TOWERS.get(model_type, {}).get(modality)
    if modality != "text" and composite is None and model_type != "whisper":
        tower_adapter(source_config, modality)  # an unsupported family raises, naming the supported ones
    loader = SiglipTextModel if model_type == "siglip_text_model" else AutoModel  # AutoModel does not map it
    source, info = loader.from_pretrained(path, output_loading_info=True)
    random_keys = set(info["missing_keys"])
    if composite is not None:
        config_name, prefix, projection = composite
        state = {
            k[len(prefix):]: v for k, v in source.state_dict().items() if k.startswith(prefix) and k not in random_keys
        }
        weight = getattr(source, projection).weight.detach() if projection else None
        return getattr(source_config, config_name), state, weight, random_keys
    if model_type == "whisper":
        encoder = source.get_encoder()
        random_keys = {k[len("encoder."):] for k in random_keys if k.startswith("encoder.")}
        return source_config, encoder.state_dict(), None, random_keys
    state = {k: v for k, v in source.base_model.state_dict().items() if k not in random_keys}
    return source.config, state, None, random_keys


def _load_tower(name: str, tower: nn.Module, state: dict, random_keys: set[str]) -> None:
    """Load `state` into `tower` exactly: a tower weight absent from the checkpoint (or left random by its loading)
    raises, except the masked-modelling embedding (`mask_token`, `masked_spec_embed`), which is logged as new."""
    prefixes = {key.split(".")[0] for key in tower.state_dict()}
    if len(prefixes) == 1 and not any(key.startswith(f"{next(iter(prefixes))}.") for key in state):
        state = {f"{next(iter(prefixes))}.{key}": value for key, value in state.items()}  # e.g. `vision_model.` in v4
    missing, unexpected = tower.load_state_dict(state, strict=False)
    new = [k for k in missing if k.split(".")[-1] in ("mask_token", "masked_spec_embed")]
    missing = [k for k in missing if k not in new]
    if missing:
        also = f" (left newly initialised when it was read: {sorted(random_keys)[:8]})" if random_keys else ""
        raise ValueError(f"The {name} checkpoint lacks weights the OPT-Tri {name} tower needs: {missing[:8]}{also}")
    if new:
        logger.warning(f"The {name} tower's mask embedding is newly initialised (not in the checkpoint): {new}")
    if unexpected:
        logger.info(f"Ignored {name} checkpoint weights not used by the OPT-Tri {name} tower: {unexpected[:16]}")


def _keep_projection(name: str, projection: nn.Module | None, weight: torch.Tensor | None, source: str) -> None:
    """Copy a source projection (CLIP's) into ours where the shapes match, and say (log) whether it is kept."""
    if weight is None:
        logger.info(f"{name}={source!r}: no projection in the checkpoint matches ours; the {name} projection is new")
        return
    if projection is not None and tuple(projection.weight.shape) == tuple(weight.shape) and projection.bias is None:
        with torch.no_grad():
            projection.weight.copy_(weight)
        logger.warning(f"{name}={source!r}: the checkpoint's projection {tuple(weight.shape)} is kept as ours")
    else:
        shape = None if projection is None else tuple(projection.weight.shape)
        logger.warning(
            f"{name}={source!r}: the checkpoint's projection {tuple(weight.shape)} is NOT kept (ours: {shape}; set "
            f"projection_dim={weight.shape[0]} to keep it); the {name} projection is newly initialised"
        )


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
    text: str | None = None,
    vision: str | None = None,
    audio: str | None = None,
    config: OptTriConfig | None = None,
    **config_kwargs,
) -> PreTrainedModel:
    """
    Build a `cls` model whose unimodal towers start from local `transformers` checkpoint folders, as OPT started from
    BERT and wav2vec 2.0. The cross-modal encoder and heads are newly initialised.

    Args:
        text: folder of a text encoder (BERT, RoBERTa, ... with or without a head; the text tower of a `CLIPModel`
            or `SiglipModel`).
        vision: folder of a ViT, CLIP vision, SigLIP vision or DINOv2 model (with or without a head, or the vision
            tower of a `CLIPModel` / `SiglipModel`).
        audio: folder of an [`OptTriAudioModel`], AST, wav2vec2, HuBERT, WavLM or Whisper checkpoint (with or
            without a head; the encoder of a `WhisperModel` / `WhisperForConditionalGeneration`).
        config: an `OptTriConfig` giving the other settings; its matching sub-configs are replaced by those of the
            checkpoints.
        config_kwargs: further `OptTriConfig` arguments when `config` is not given.

    Every tower weight is loaded exactly: one the checkpoint lacks raises, except a masked-modelling embedding the
    checkpoint has no value for (logged). CLIP's projections are kept when `projection_dim` matches (logged).
    """
    config = OptTriConfig(**config_kwargs) if config is None else config
    loaded = {}
    for name, path in (("text", text), ("vision", vision), ("audio", audio)):
        if path is not None:
            loaded[name] = (*_read_tower_checkpoint(path, name), path)
            setattr(config, f"{name}_config", loaded[name][0])
    config.validate()
    model = cls(config)
    base = model.base_model
    for name, (_, state, projection, random_keys, path) in loaded.items():
        tower = {"text": base.text_model, "vision": base.vision_model, "audio": base.audio_model}[name]
        if tower is None:
            raise ValueError(f"{cls.__name__} builds no {name} tower: {name}={path!r} cannot be loaded")
        _load_tower(name, tower, state, random_keys)
        if name != "audio" and getattr(config, f"{name}_config").model_type in _PROJECTED_TOWERS:
            own = getattr(base, "image_projection" if name == "vision" else "text_projection", None)
            _keep_projection(name, own, projection, path)
    return model
