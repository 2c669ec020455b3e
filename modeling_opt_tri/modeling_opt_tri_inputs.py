"""Input checks of OPT-Tri's forwards: clear `ValueError`s naming the argument before anything reaches torch; the
fixed-seed generator of `eval()`-mode forwards."""

from __future__ import annotations

import math

import torch
from torch import nn

from .configuration_opt_tri import OptTriAudioConfig, OptTriConfig
from .modeling_opt_tri_layers import MODALITIES


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


#: The audio input of each audio tower family: (ndim, axis that `audio_attention_mask` runs along, layout).
_AUDIO_LAYOUTS = {
    "audio-spectrogram-transformer": (3, 1, "(batch, frames, num_mel_bins)"),
    "wav2vec2": (2, 1, "(batch, samples)"),
    "hubert": (2, 1, "(batch, samples)"),
    "wavlm": (2, 1, "(batch, samples)"),
}
_MEL_LAYOUT = (3, 2, "(batch, num_mel_bins, frames)")  # ours and Whisper


def _audio_layout(config: OptTriConfig) -> tuple[int, int, str]:
    return _AUDIO_LAYOUTS.get(getattr(config.audio_config, "model_type", None), _MEL_LAYOUT)


def _audio_inputs(config: OptTriConfig, input_features, input_values, audio_attention_mask, audio_mask):
    """The audio tensor and its mask as the model reads them: `input_values` (the wav2vec2 family's name, as the
    processor gives it) is the audio tensor; `audio_mask` `(B,)` (the processor's rows-with-audio) zeroes the
    `audio_attention_mask` of the rows without audio, or stands in for it when none is given."""
    if input_values is not None:
        if input_features is not None:
            raise ValueError("Pass the audio as input_features or input_values, not both")
        input_features = input_values
    if audio_mask is None or input_features is None:
        return input_features, audio_attention_mask
    if not torch.is_tensor(audio_mask) or tuple(audio_mask.shape) != (input_features.shape[0],):
        raise ValueError(f"audio_mask must be a tensor of shape ({input_features.shape[0]},), one flag per row")
    if audio_attention_mask is None:
        length = input_features.shape[_audio_layout(config)[1]]
        audio_attention_mask = torch.ones(input_features.shape[0], length, dtype=torch.long, device=audio_mask.device)
    return input_features, audio_attention_mask * audio_mask.long()[:, None]


def _audio_input_names(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook of every OPT-Tri model: the processor's audio names of other tower families become the
    model's (`input_values` -> `input_features`; `audio_mask (B,)` folded into `audio_attention_mask`), so no head
    ignores them (see [`_audio_inputs`])."""
    if "input_values" in kwargs or "audio_mask" in kwargs:
        kwargs = dict(kwargs)
        kwargs["input_features"], kwargs["audio_attention_mask"] = _audio_inputs(
            module.config, kwargs.get("input_features"), kwargs.pop("input_values", None),
            kwargs.get("audio_attention_mask"), kwargs.pop("audio_mask", None),
        )
    return args, kwargs


_MODEL_INPUT_NAMES = (
    "input_ids", "attention_mask", "token_type_ids", "pixel_values", "image_mask", "input_features", "audio_attention_mask"
)


def _check_token_ids(ids: torch.Tensor | None, vocab_size: int, name: str) -> None:
    """Raise a `ValueError` naming `name` unless every id of `ids` (if given and not empty) is in `[0, vocab_size)`."""
    if ids is None or not ids.numel():
        return
    low, high = torch.stack(torch.aminmax(ids)).tolist()  # one host copy for both bounds
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{name} must be in [0, {vocab_size}); got values in [{low}, {high}]")


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
    audio_ndim, audio_axis, audio_layout = _audio_layout(config)
    for name, tensor, ndim, layout in (
        ("pixel_values", pixel_values, 4, "(batch, channels, height, width)"),
        ("input_features", input_features, audio_ndim, audio_layout),
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
        "audio_attention_mask": (batch, input_features.shape[audio_axis]) if input_features is not None else None,
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
        if token_type_ids is not None and isinstance(type_vocab, int):
            _check_token_ids(token_type_ids, type_vocab, "token_type_ids")
    signals = {name: t for name, t in (("pixel_values", pixel_values), ("input_features", input_features)) if t is not None}
    finite = torch.stack([torch.isfinite(t).all() for t in signals.values()]).tolist() if signals else []  # one copy
    for name, ok in zip(signals, finite):
        if not ok:
            raise ValueError(f"{name} contains NaN or inf values; check the images/audio and their preprocessing")
    return batch


#: Seed of the generator that `eval()`-mode forwards use for their random draws when none is passed.
EVAL_SEED = 0


def _eval_generator(model: nn.Module, generator: torch.Generator | None, device) -> torch.Generator | None:
    """The generator of a forward's random draws: the one passed; in `eval()` mode a new one seeded with
    `EVAL_SEED` (identical calls agree); in training mode `None` (torch's global RNG)."""
    if generator is not None or model.training:
        return generator
    return torch.Generator(device=device).manual_seed(EVAL_SEED)


def _check_code_inputs(
    config: OptTriConfig, has_mrc_head: bool, tasks: set[str], pixel_values, image_codes, image_code_probs,
    input_features, audio_codes, audio_codes_mask,
) -> None:
    """Clear errors for the VQ-code objectives: codes present, with the shapes and range the heads expect."""
    cfg = config
    idc = cfg.image_decoder_config
    hint = "compute them with the VQ tokenizer (examples/pretrain.py does this with --image_tokenizer/--audio_tokenizer)"
    if tasks & {"mrc", "mrc_kl", "dir"} and pixel_values is not None:
        if tasks & {"mrc", "mrc_kl"} and not has_mrc_head:
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
        low, high = torch.stack(torch.aminmax(image_codes)).tolist()  # one host copy for both bounds
        if low < 0 or high >= idc.codebook_size:
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
