"""Robust decoding of image and audio values, shared by every OPT-Tri data loader.

A value may come from an in-memory dataset (a PIL image, a NumPy array, an
``{"array", "sampling_rate"}`` dict), from ``datasets.Image(decode=False)`` storage (a
``{"bytes", "path"}`` dict), or from a metadata folder (an absolute path string). Both decoders
return one normalised form:

* :func:`decode_image` -> ``PIL.Image.Image`` in mode ``RGB``. The pixels are converted by the image
  processor's ``to_rgb`` (``image_processing_opt_tri.py``), the function ``processor(images=...)``
  uses, so a training row and the same image at inference give the same pixels: EXIF orientation
  applied, alpha composited over white, ``I;16`` as value / 65535, other integers 8-bit (0..255) or
  16-bit (0..65535) by their range, floats in [0, 1], the channel axis of arrays found as
  transformers does. 16-bit and float pixels are rounded to 8 bits here (the processor keeps them
  as floats; the two differ by at most half a level of 255).
* :func:`decode_audio` -> ``(waveform, sampling_rate)`` with ``waveform`` a 1-D ``float32``
  NumPy array. Multi-channel audio is downmixed to mono by averaging the channels; integer samples
  are scaled by the feature extractor's ``pcm_to_float`` (int16 by 1/32768, int32 by 1/2**31,
  uint8 centred on 128, int8 by 1/128; int64 and lists of Python ints as int16 when they fit,
  else an error).

Limits, each a corrupt row when exceeded:

* only regular files are read: a FIFO, a device or a socket as a path would block or never end;
* images above ``max_pixels`` pixels (default :data:`MAX_IMAGE_PIXELS`, 8192 x 8192) are refused
  from their header, before their pixels are decoded (decompression bombs);
* sampling rates outside 1 kHz .. 384 kHz (``MIN_SAMPLING_RATE`` / ``MAX_SAMPLING_RATE``) are refused
  (a corrupt header); with ``max_seconds`` only the start of a clip is read.

Anything that cannot be decoded raises :class:`CorruptSampleError` (a ``ValueError``) whose
message names the row (``context``) and the file, and says why. Callers check for a missing
modality (``None``) before decoding; the training loop catches ``CorruptSampleError``, skips the
row and counts it.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..feature_extraction_opt_tri import check_sampling_rate, pcm_to_float
from ..image_processing_opt_tri import CHANNEL_COUNTS, to_rgb

__all__ = ["CorruptSampleError", "MAX_IMAGE_PIXELS", "audio_duration", "decode_audio", "decode_image"]

MAX_IMAGE_PIXELS = 8192 * 8192
"""Default pixel limit of :func:`decode_image` (67 M pixels). Real photos stay well below it (a 50-megapixel
camera gives 8688 x 5792 = 50 M); a PNG of a few KB can claim 12000 x 12000 (144 M pixels, 432 MB as RGB).
Pass ``max_pixels`` to :func:`decode_image` (or ``max_image_pixels`` to ``TriModalCollator``) to change it; above
twice ``PIL.Image.MAX_IMAGE_PIXELS`` PIL itself refuses the file too."""

_RESAMPLE_MARGIN_SECONDS = 0.02
"""With ``max_seconds``, :func:`decode_audio` reads this much more than asked, so that resampling the clip to any
rate >= 1 kHz and cutting it gives the same samples as resampling the whole file (the filter's reach)."""


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


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _open_regular_file(path: str | os.PathLike[str], where: str, kind: str) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file; raise ``CorruptSampleError`` otherwise.

    The file is opened without blocking (a FIFO with no writer would block ``open`` forever) and checked with
    ``fstat`` on the open descriptor, so what is read is what was checked.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise CorruptSampleError(f"{where}: {kind} file does not exist") from None
    except (OSError, ValueError) as error:  # ValueError: a NUL byte in the path
        reason = getattr(error, "strerror", None) or error
        raise CorruptSampleError(f"{where}: cannot open the {kind} file ({reason})") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        what = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise CorruptSampleError(f"{where}: {kind} path is {what}, not a regular file")
    return os.fdopen(descriptor, "rb")


# ---------------------------------------------------------------------------- images
def _load_image(source: BinaryIO, where: str, max_pixels: int | None) -> Image.Image:
    """Open an encoded image, refuse it from its header if it has more than ``max_pixels`` pixels, then decode it."""
    try:
        with warnings.catch_warnings():  # PIL warns above its own limit; our limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
        pixels = img.width * img.height
        if max_pixels is not None and pixels > max_pixels:
            raise CorruptSampleError(
                f"{where}: image of {img.width}x{img.height} = {pixels} pixels is above the limit of {max_pixels} "
                "pixels (a decompression bomb?); raise max_pixels / max_image_pixels for larger real images"
            )
        img.load()
        return img
    except Image.DecompressionBombError as err:
        raise CorruptSampleError(f"{where}: image is too large for PIL (a decompression bomb?): {err}") from err
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError) as err:
        if isinstance(err, CorruptSampleError):
            raise
        raise CorruptSampleError(f"{where}: unreadable or truncated image ({err})") from err


def _check_size(width: int, height: int, where: str, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise CorruptSampleError(
            f"{where}: image of {width}x{height} = {width * height} pixels is above the limit of {max_pixels} pixels"
        )


def _as_rgb_image(image: Any, where: str) -> Image.Image:
    """Convert with the processor's ``to_rgb``; 16-bit / float results are rounded to 8 bits."""
    try:
        rgb = to_rgb(image)
    except (ValueError, TypeError) as error:
        raise CorruptSampleError(f"{where}: {error}") from None
    if isinstance(rgb, Image.Image):
        return rgb
    if rgb.dtype != np.uint8:
        rgb = (rgb * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)  # [0, 1] -> nearest of 0..255
    return Image.fromarray(rgb, mode="RGB")


def decode_image(value: Any, context: str | None = None, max_pixels: int | None = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode ``value`` into an RGB ``PIL.Image.Image``.

    Args:
        value: A PIL image; a ``{"bytes": ..., "path": ...}`` dict (bytes win when both are set,
            as in ``datasets.Image(decode=False)``); a path (``str`` or ``os.PathLike``) to a regular file; raw
            encoded ``bytes``; or a NumPy array / torch tensor (``[H, W]``, ``[H, W, C]`` or ``[C, H, W]``; see
            ``to_rgb`` in ``image_processing_opt_tri.py`` for the layouts and dtypes).
        context: Optional row description (e.g. ``"row 17"``) put at the start of error messages.
        max_pixels: Images with more pixels are refused (from the file header, before decoding); None: no limit.

    Raises:
        CorruptSampleError: The value is missing, unreadable, truncated, zero-size, too large, not a regular file,
            or has pixels outside the documented ranges.
    """
    where = _where(context, _source_name(value))
    if value is None:
        raise CorruptSampleError(f"{where}: image is None (missing modality)")
    if isinstance(value, Image.Image):
        _check_size(value.width, value.height, where, max_pixels)
        try:
            value.load()
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise CorruptSampleError(f"{where}: unreadable or truncated image ({err})") from err
        return _as_rgb_image(value, where)
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and not path:
            raise CorruptSampleError(f"{where}: image dict has neither 'bytes' nor 'path'")
        value = data if data is not None else path
    if isinstance(value, (str, os.PathLike)):
        if not os.fspath(value):
            raise CorruptSampleError(f"{where}: empty image path")
        with _open_regular_file(value, where, "image") as file:
            return _as_rgb_image(_load_image(file, where, max_pixels), where)
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) == 0:
            raise CorruptSampleError(f"{where}: empty image bytes")
        return _as_rgb_image(_load_image(io.BytesIO(bytes(value)), where, max_pixels), where)
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        array = value if hasattr(value, "shape") else np.asarray(value)
        shape = tuple(int(n) for n in array.shape)
        channels = (shape[0] if shape[0] in CHANNEL_COUNTS else shape[-1]) if len(shape) == 3 else 1
        pixels = math.prod(shape) // max(channels, 1)
        if max_pixels is not None and pixels > max_pixels:
            raise CorruptSampleError(f"{where}: image array of shape {shape} is above the limit of {max_pixels} pixels")
        return _as_rgb_image(array, where)
    raise CorruptSampleError(f"{where}: cannot decode an image from {type(value).__name__}")


# ---------------------------------------------------------------------------- audio
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


def _frame_limit(max_seconds: float | None, rate: int) -> int | None:
    """Frames to read for ``max_seconds`` at ``rate``, with the resampling margin (None: all)."""
    if max_seconds is None:
        return None
    return math.ceil((max_seconds + _RESAMPLE_MARGIN_SECONDS) * rate) + 16


def _read_sound(source: BinaryIO, where: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Read an audio file object with soundfile as float32, frames x channels; the rate is checked first."""
    import soundfile

    try:
        with soundfile.SoundFile(source) as sound:
            rate = _check_rate(sound.samplerate, where)
            limit = _frame_limit(max_seconds, rate)
            frames = sound.frames if limit is None else min(sound.frames, limit)
            data = sound.read(frames=frames, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError, TypeError, EOFError) as err:
        if isinstance(err, CorruptSampleError):
            raise
        raise CorruptSampleError(f"{where}: unreadable or truncated audio ({err})") from err
    return data, rate


def _check_rate(sampling_rate: Any, where: str) -> int:
    """``sampling_rate`` as an int in [MIN_SAMPLING_RATE, MAX_SAMPLING_RATE], or ``CorruptSampleError``. Unlike the
    processor's `check_sampling_rate` (whose range rule this applies), a whole-number float (``16000.0``, as some
    metadata files store it) is accepted."""
    if isinstance(sampling_rate, (float, np.floating)) and math.isfinite(sampling_rate):
        if sampling_rate != int(sampling_rate):
            raise CorruptSampleError(f"{where}: sampling_rate must be a whole number of Hz, got {sampling_rate!r}")
        sampling_rate = int(sampling_rate)
    try:
        return check_sampling_rate(sampling_rate)
    except ValueError as error:
        raise CorruptSampleError(f"{where}: {error}") from None


def _array_audio(value: dict[str, Any], where: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Samples and rate of an ``{"array", "sampling_rate"}`` value (cut to ``max_seconds`` plus the margin)."""
    rate = _check_rate(value.get("sampling_rate"), where)
    raw = value["array"]
    if hasattr(raw, "detach") and hasattr(raw, "numpy"):  # a torch tensor (any device; half precision widened)
        raw = raw.detach().cpu()
        raw = (raw.float() if str(raw.dtype) in ("torch.bfloat16", "torch.float16") else raw).numpy()
    try:
        arr = np.asarray(raw)
    except (ValueError, TypeError) as err:
        raise CorruptSampleError(f"{where}: audio array is ragged or not numeric ({err})") from err
    if arr.dtype == object:
        raise CorruptSampleError(f"{where}: audio array is ragged or not numeric")
    if arr.ndim not in (1, 2):
        raise CorruptSampleError(f"{where}: audio array has unsupported shape {arr.shape} (expected 1-D or 2-D)")
    limit = _frame_limit(max_seconds, rate)
    if limit is not None:  # cut the time axis (the longer one of a 2-D array) before any conversion
        arr = arr[:limit] if arr.ndim == 1 or arr.shape[0] >= arr.shape[1] else arr[:, :limit]
    try:
        floats = pcm_to_float(arr)
    except ValueError as error:
        raise CorruptSampleError(f"{where}: {error}") from None
    return _to_mono(floats, where, channels_last=None), rate


def decode_audio(value: Any, context: str | None = None, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode ``value`` into ``(waveform, sampling_rate)``: 1-D float32 mono and an int in Hz.

    Args:
        value: An ``{"array": ..., "sampling_rate": ...}`` dict (the array may be a list or an
            ndarray; 2-D arrays are downmixed, the smaller axis taken as channels); a
            ``{"bytes": ..., "path": ...}`` dict (bytes win when both are set); a path (``str`` or
            ``os.PathLike``) to a regular file ``soundfile`` reads (WAV, FLAC, OGG, ...); or a
            ``(array, sampling_rate)`` tuple.
        context: Optional row description (e.g. ``"row 17"``) put at the start of error messages.
        max_seconds: Read at most this many seconds (plus 20 ms, so that resampling the result and cutting it
            to ``max_seconds`` is exact); None reads everything.

    Raises:
        CorruptSampleError: Missing file or not a regular file, unreadable/truncated data, empty audio, NaN/inf
            samples, a missing or absurd sampling rate (outside 1 kHz .. 384 kHz), int samples of no known scale.
    """
    where = _where(context, _source_name(value))
    if value is None:
        raise CorruptSampleError(f"{where}: audio is None (missing modality)")
    if isinstance(value, tuple) and len(value) == 2:
        value = {"array": value[0], "sampling_rate": value[1]}
    if isinstance(value, dict) and value.get("array") is not None:
        wave, rate = _array_audio(value, where, max_seconds)
    else:
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and not path:
                raise CorruptSampleError(f"{where}: audio dict has neither 'array', 'bytes' nor 'path'")
            value = data if data is not None else path
        if isinstance(value, (str, os.PathLike)):
            if not os.fspath(value):
                raise CorruptSampleError(f"{where}: audio file does not exist")
            with _open_regular_file(value, where, "audio") as file:
                frames, rate = _read_sound(file, where, max_seconds)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            if len(value) == 0:
                raise CorruptSampleError(f"{where}: empty audio bytes")
            frames, rate = _read_sound(io.BytesIO(bytes(value)), where, max_seconds)
        else:
            raise CorruptSampleError(f"{where}: cannot decode audio from {type(value).__name__}")
        wave = _to_mono(frames, where, channels_last=True)
    if wave.size == 0:
        raise CorruptSampleError(f"{where}: empty audio (0 samples)")
    if not np.isfinite(wave).all():
        raise CorruptSampleError(f"{where}: audio contains NaN or inf samples")
    return np.ascontiguousarray(wave, dtype=np.float32), rate


def audio_duration(value: Any) -> float:
    """Duration in seconds of an audio value, from the array length or the file header (no decoding).

    Returns 0.0 for a value whose length cannot be known (missing, not a regular file, unreadable, a bad rate):
    such a row fails in :func:`decode_audio` later and is counted there.
    """
    import soundfile

    try:
        if isinstance(value, tuple) and len(value) == 2:
            value = {"array": value[0], "sampling_rate": value[1]}
        if isinstance(value, dict) and value.get("array") is not None:
            rate = _check_rate(value.get("sampling_rate"), "audio")
            shape = np.shape(value["array"])
            return (max(shape) if shape else 0) / float(rate)
        if isinstance(value, dict):
            value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
        if isinstance(value, (bytes, bytearray, memoryview)):
            info = soundfile.info(io.BytesIO(bytes(value)))
        elif isinstance(value, (str, os.PathLike)) and os.fspath(value):
            with _open_regular_file(value, "audio", "audio") as file:
                info = soundfile.info(file)
        else:
            return 0.0
        return info.frames / float(_check_rate(info.samplerate, "audio"))
    except (CorruptSampleError, soundfile.LibsndfileError, RuntimeError, OSError, ValueError, TypeError, EOFError):
        return 0.0
