"""Robust decoding of image and audio values, shared by every OPT-Tri data loader.

A value may come from an in-memory dataset (a PIL image, a NumPy array, an
``{"array", "sampling_rate"}`` dict), from ``datasets.Image(decode=False)`` storage (a
``{"bytes", "path"}`` dict), or from a metadata folder (an absolute path string). Both decoders
return one normalised form:

* :func:`decode_image` -> ``PIL.Image.Image`` in mode ``RGB``. EXIF orientation is applied;
  images with transparency are composited onto white; 16-bit and float greyscale images are
  rescaled to 0..255.
* :func:`decode_audio` -> ``(waveform, sampling_rate)`` with ``waveform`` a 1-D ``float32``
  NumPy array. Multi-channel audio is downmixed to mono by averaging the channels; integer PCM
  is scaled to [-1, 1) (int16 by 1/32768, int32 by 1/2**31, uint8 centred on 128).

Anything that cannot be decoded raises :class:`CorruptSampleError` (a ``ValueError``) whose
message names the row (``context``) and the file, and says why: missing file, truncated or
unreadable bytes, zero-size image, empty audio, NaN/inf samples, bad sampling rate. Callers
check for a missing modality (``None``) before decoding; the training loop catches
``CorruptSampleError``, skips the row and counts it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["CorruptSampleError", "decode_image", "decode_audio"]


class CorruptSampleError(ValueError):
    """A row's image or audio value cannot be decoded (the row should be skipped)."""


def _where(context: str | None, source: str) -> str:
    """Prefix naming the row and source of a value, for error messages."""
    parts = [p for p in (context, source) if p]
    return ": ".join(parts) if parts else "value"


def _source_name(value: Any) -> str:
    """Human-readable name of where ``value`` comes from (file path or in-memory kind)."""
    if isinstance(value, (str, os.PathLike)):
        return f"file {os.fspath(value)!r}"
    if isinstance(value, dict):
        path = value.get("path")
        if path:
            return f"file {path!r}"
        if value.get("bytes") is not None:
            return "in-memory bytes"
        return "dict value"
    return type(value).__name__


# ---------------------------------------------------------------------------- images
def _open_image_file(path: str | os.PathLike[str], where: str) -> Image.Image:
    """Open and fully load an image file."""
    if not os.path.exists(path):
        raise CorruptSampleError(f"{where}: image file does not exist")
    if os.path.isdir(path):
        raise CorruptSampleError(f"{where}: image path is a directory, not a file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptSampleError(f"{where}: unreadable or truncated image ({err})") from err


def _open_image_bytes(data: bytes, where: str) -> Image.Image:
    """Open and fully load an encoded image from bytes."""
    if len(data) == 0:
        raise CorruptSampleError(f"{where}: empty image bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptSampleError(f"{where}: unreadable or truncated image bytes ({err})") from err


def _array_to_image(array: np.ndarray, where: str) -> Image.Image:
    """Convert an HxW, HxWx1, HxWx3 or HxWx4 array (uint8, or float in [0, 1]) to a PIL image."""
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channels-first -> channels-last
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise CorruptSampleError(f"{where}: image array has unsupported shape {tuple(np.shape(array))}")
    if arr.size == 0:
        raise CorruptSampleError(f"{where}: zero-size image array {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise CorruptSampleError(f"{where}: image array contains NaN or inf")
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        arr = np.clip(arr * scale, 0, 255).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.integer) and arr.max(initial=0) > 255:
            arr = (arr.astype(np.float64) / float(np.iinfo(arr.dtype).max) * 255.0).round()
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr))


def _to_rgb(img: Image.Image, where: str) -> Image.Image:
    """Normalise any PIL image to RGB (EXIF orientation, alpha over white, wide greyscale rescaled)."""
    if img.width == 0 or img.height == 0:
        raise CorruptSampleError(f"{where}: zero-size image ({img.width}x{img.height})")
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError, TypeError):
        pass  # broken EXIF metadata does not make the pixels unusable
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise CorruptSampleError(f"{where}: image contains NaN or inf")
        low, high = float(arr.min()), float(arr.max())
        top = 65535.0 if img.mode.startswith("I;16") else (high if high > 255 else 255.0)
        if img.mode == "F" and high <= 1.0 and low >= 0.0:
            top = 1.0
        grey = np.clip(arr / max(top, 1e-12) * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(value: Any, context: str | None = None) -> Image.Image:
    """Decode ``value`` into an RGB ``PIL.Image.Image``.

    Args:
        value: A PIL image; a ``{"bytes": ..., "path": ...}`` dict (bytes win when both are set,
            as in ``datasets.Image(decode=False)``); a path (``str`` or ``os.PathLike``); raw
            encoded ``bytes``; or a NumPy array (HxW or HxWxC, channels-first accepted; uint8,
            or float in [0, 1]).
        context: Optional row description (e.g. ``"row 17"``) put at the start of error messages.

    Raises:
        CorruptSampleError: The value is missing, unreadable, truncated or zero-size.
    """
    where = _where(context, _source_name(value))
    if value is None:
        raise CorruptSampleError(f"{where}: image is None (missing modality)")
    if isinstance(value, Image.Image):
        img = value
        try:
            img.load()
        except (OSError, ValueError, SyntaxError) as err:
            raise CorruptSampleError(f"{where}: unreadable or truncated image ({err})") from err
    elif isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            img = _open_image_bytes(bytes(data), where)
        elif path:
            img = _open_image_file(path, where)
        else:
            raise CorruptSampleError(f"{where}: image dict has neither 'bytes' nor 'path'")
    elif isinstance(value, (str, os.PathLike)):
        if not os.fspath(value):
            raise CorruptSampleError(f"{where}: empty image path")
        img = _open_image_file(value, where)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        img = _open_image_bytes(bytes(value), where)
    elif isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        img = _array_to_image(np.asarray(value), where)
    else:
        raise CorruptSampleError(f"{where}: cannot decode an image from {type(value).__name__}")
    return _to_rgb(img, where)


# ---------------------------------------------------------------------------- audio
def _pcm_to_float(arr: np.ndarray, where: str) -> np.ndarray:
    """Convert integer PCM or float samples to float32 (see module docstring for the scaling)."""
    if arr.dtype == np.uint8:
        return (arr.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(arr.dtype, np.signedinteger):
        return (arr.astype(np.float64) / float(-np.iinfo(arr.dtype).min)).astype(np.float32)
    if np.issubdtype(arr.dtype, np.unsignedinteger):
        info = np.iinfo(arr.dtype)
        half = (float(info.max) + 1.0) / 2.0
        return ((arr.astype(np.float64) - half) / half).astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating) or arr.dtype == np.bool_:
        return arr.astype(np.float32)
    raise CorruptSampleError(f"{where}: audio samples have unsupported dtype {arr.dtype}")


def _to_mono(arr: np.ndarray, where: str, channels_last: bool | None) -> np.ndarray:
    """Downmix a 1-D or 2-D sample array to 1-D by averaging channels.

    ``channels_last=None`` (in-memory arrays) takes the smaller axis as the channel axis.
    """
    if arr.ndim == 1:
        return arr
    if arr.ndim == 2:
        if channels_last is None:
            channels_last = arr.shape[1] <= arr.shape[0]
        return arr.mean(axis=1 if channels_last else 0, dtype=np.float64).astype(np.float32)
    raise CorruptSampleError(f"{where}: audio array has unsupported shape {arr.shape}")


def _read_sound(source: Any, where: str) -> tuple[np.ndarray, int]:
    """Read an audio file (path or file object) with soundfile as float32, frames x channels."""
    import soundfile

    try:
        data, sampling_rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
        raise CorruptSampleError(f"{where}: unreadable or truncated audio ({err})") from err
    return data, int(sampling_rate)


def decode_audio(value: Any, context: str | None = None) -> tuple[np.ndarray, int]:
    """Decode ``value`` into ``(waveform, sampling_rate)``: 1-D float32 mono and an int in Hz.

    Args:
        value: An ``{"array": ..., "sampling_rate": ...}`` dict (the array may be a list or an
            ndarray; 2-D arrays are downmixed, the smaller axis taken as channels); a
            ``{"bytes": ..., "path": ...}`` dict (bytes win when both are set); a path (``str`` or
            ``os.PathLike``) to any file ``soundfile`` reads (WAV, FLAC, OGG, ...); or a
            ``(array, sampling_rate)`` tuple.
        context: Optional row description (e.g. ``"row 17"``) put at the start of error messages.

    Raises:
        CorruptSampleError: Missing file, unreadable/truncated data, empty audio, NaN/inf
            samples, or a missing/non-positive sampling rate.
    """
    where = _where(context, _source_name(value))
    if value is None:
        raise CorruptSampleError(f"{where}: audio is None (missing modality)")
    sampling_rate: Any
    if isinstance(value, tuple) and len(value) == 2:
        value = {"array": value[0], "sampling_rate": value[1]}
    if isinstance(value, dict) and value.get("array") is not None:
        sampling_rate = value.get("sampling_rate")
        try:
            arr = np.asarray(value["array"])
        except (ValueError, TypeError) as err:
            raise CorruptSampleError(f"{where}: audio array is ragged or not numeric ({err})") from err
        if arr.dtype == object:
            raise CorruptSampleError(f"{where}: audio array is ragged or not numeric")
        wave = _to_mono(_pcm_to_float(arr, where), where, channels_last=None)
    elif isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            if len(data) == 0:
                raise CorruptSampleError(f"{where}: empty audio bytes")
            frames, sampling_rate = _read_sound(io.BytesIO(bytes(data)), where)
        elif path:
            if not os.path.isfile(path):
                raise CorruptSampleError(f"{where}: audio file does not exist")
            frames, sampling_rate = _read_sound(path, where)
        else:
            raise CorruptSampleError(f"{where}: audio dict has neither 'array', 'bytes' nor 'path'")
        wave = _to_mono(frames, where, channels_last=True)
    elif isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not os.fspath(value) or not path.is_file():
            raise CorruptSampleError(f"{where}: audio file does not exist")
        frames, sampling_rate = _read_sound(os.fspath(path), where)
        wave = _to_mono(frames, where, channels_last=True)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) == 0:
            raise CorruptSampleError(f"{where}: empty audio bytes")
        frames, sampling_rate = _read_sound(io.BytesIO(bytes(value)), where)
        wave = _to_mono(frames, where, channels_last=True)
    else:
        raise CorruptSampleError(f"{where}: cannot decode audio from {type(value).__name__}")

    try:
        rate = int(sampling_rate)
    except (TypeError, ValueError, OverflowError):
        raise CorruptSampleError(f"{where}: missing or invalid sampling_rate {sampling_rate!r}") from None
    if isinstance(sampling_rate, bool) or (isinstance(sampling_rate, (float, np.floating)) and rate != sampling_rate):
        raise CorruptSampleError(f"{where}: sampling_rate must be a whole number of Hz, got {sampling_rate!r}")
    if rate <= 0:
        raise CorruptSampleError(f"{where}: sampling_rate must be positive, got {rate}")
    if wave.size == 0:
        raise CorruptSampleError(f"{where}: empty audio (0 samples)")
    if not np.isfinite(wave).all():
        raise CorruptSampleError(f"{where}: audio contains NaN or inf samples")
    return np.ascontiguousarray(wave, dtype=np.float32), rate
