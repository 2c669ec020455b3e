"""Image processor for OPT-Tri.

This is a Hub file: it is copied next to checkpoints as remote code. It imports third-party packages (numpy,
PIL, transformers; torch for the default resize backend) and, relatively, the Hub file
`feature_extraction_opt_tri.py` (for `_single_threaded_torch`); nothing else from the `modeling_opt_tri` package.

Pipeline, per image: convert to RGB (`to_rgb`, below; `data/decoding.py` uses the same function, so training rows
and `processor(images=...)` give the same pixels) -> resize to `image_size` x `image_size` (bicubic by default) ->
rescale to [0, 1] -> normalise with `image_mean` / `image_std`.

Resizing (`resize_backend`):
    - `"torch"` (default): 8-bit images (PIL images other than 16-bit / float modes, uint8 / bool arrays and
      tensors) with a bilinear or bicubic filter are resized by torch's antialiased uint8 kernel
      (`F.interpolate(..., antialias=True)` on uint8, the kernel torchvision uses), all images of one size in
      one call. It follows PIL's resampling (same filters, same support when shrinking) but rounds
      differently: values are within a few levels of PIL's, typically at most 2 of 255. Resizing a batch of
      equally sized images is up to about 10x faster than PIL (batch of 32, 64 -> 224 px: 1.3 ms against 14 ms);
      images of different sizes go in separate calls and gain less. The result of an image does not depend on
      what else is in the batch. Inputs are converted to arrays one chunk of at most 64 MB at a time.
    - `"pil"`: every image is resized by `PIL.Image.resize`, bit for bit PIL's result.
    Float and 16-bit images, and the other filters (nearest, box, hamming, lanczos), always use PIL.

Speed: the resized images are rescaled and normalised straight into their channels-first slots of the output
batch one plane at a time while still in cache (three in-place float32 passes; no batch-sized float
temporaries). Torch runs on the calling thread only (its intra-op pool, on a busy machine, costs more than
the work). The arithmetic is the same float32 operations as `(uint8 * float32(1/255) - mean) * (1 / std)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ImagesKwargs
from transformers.utils import TensorType, logging

from .feature_extraction_opt_tri import _single_threaded_torch


try:
    import torch
    import torch.nn.functional as F
except ImportError:  # torch is needed only by resize_backend="torch"
    torch = None


logger = logging.get_logger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_FLOAT_RANGE_TOLERANCE = 1e-3
"""Float images may exceed [0, 1] by this much (rounding) before they are rejected."""

RESIZE_BACKENDS: tuple[str, ...] = ("torch", "pil")

_TORCH_FILTERS: dict[int, str] = {
    int(Image.Resampling.BILINEAR): "bilinear",
    int(Image.Resampling.BICUBIC): "bicubic",
}
"""PIL filters that torch's antialiased uint8 kernel implements, and their `F.interpolate` mode names."""

_EXIF_ORIENTATION = 0x0112
"""EXIF tag of the image orientation (1: as stored)."""

_TORCH_RESIZE_CHUNK_BYTES = 64 * 2**20
"""Images of one size are resized together in chunks of at most this many input bytes (at least one image)."""


class OptTriImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments accepted by `OptTriImageProcessor` (used by `from_pretrained(..., **kwargs)`)."""

    image_size: int
    resize_backend: str


def _is_torch_tensor(value: Any) -> bool:
    return torch is not None and isinstance(value, torch.Tensor)


def _check_image_size(image_size: Any) -> int:
    """`image_size` if it is a positive int (the side of the output image, in pixels); raise otherwise."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return int(image_size)


def _check_flag(name: str, value: Any) -> bool:
    """`value` if it is a bool (a string such as "no" would silently count as True); raise otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


# ------------------------------------------------------------------------------------------ pixel conversion
# `to_rgb` is the one conversion of an image to RGB pixels. The processor uses it for `images=...` and the
# training data path (`data/decoding.py`) for every decoded row, so training and inference see the same pixels.

CHANNEL_COUNTS: tuple[int, ...] = (1, 3, 4)
"""Channel counts an image array may have: 1 (grayscale), 3 (RGB), 4 (RGBA; alpha is composited over white)."""

_INPUT_DATA_FORMATS: dict[str, int] = {"channels_first": 0, "channels_last": 2}
"""Accepted `input_data_format` values (also `transformers.image_utils.ChannelDimension`) -> channel axis."""


def channel_axis(shape: tuple[int, ...], input_data_format: Any = None) -> int:
    """The channel axis of a 3-D image of `shape`: 0 (`[C, H, W]`) or 2 (`[H, W, C]`).

    `input_data_format` (`"channels_first"`, `"channels_last"` or a `ChannelDimension`) settles it. Without it the
    rules of transformers' `infer_channel_dimension_format` apply: the first axis is the channel axis when it has 1
    or 3 entries, else the last axis when it has 1 or 3; then 4 (RGBA) is tried the same way, first axis first.
    When both ends could hold channels (e.g. `(3, 4, 4)` or `(4, 4, 3)`) a warning asks for `input_data_format`.
    """
    shape = tuple(map(int, shape))
    if input_data_format is not None:
        name = str(getattr(input_data_format, "value", input_data_format))
        if name not in _INPUT_DATA_FORMATS:
            raise ValueError(
                f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}"
            )
        axis = _INPUT_DATA_FORMATS[name]
        if shape[axis] not in CHANNEL_COUNTS:
            raise ValueError(
                f"image of shape {shape} has {shape[axis]} entries on its channel axis ({name}); expected 1, 3 or 4"
            )
        return axis
    for counts in ((1, 3), (4,)):
        if shape[0] in counts or shape[2] in counts:
            axis = 0 if shape[0] in counts else 2
            break
    else:
        raise ValueError(
            f"image of shape {shape} has no channel axis with 1, 3 or 4 channels (grayscale, RGB or RGBA) at the "
            "start or the end"
        )
    if shape[0] in CHANNEL_COUNTS and shape[2] in CHANNEL_COUNTS:
        layout = "[C, H, W]" if axis == 0 else "[H, W, C]"
        logger.warning(
            f"the channel axis of an image of shape {shape} is ambiguous; reading it as {layout}. Pass "
            "input_data_format='channels_first' or 'channels_last' to say which"
        )
    return axis


def _integer_pixels(array: np.ndarray) -> np.ndarray:
    """Integer pixels without a fixed range (signed ints, uint32/uint64, PIL mode "I") as uint8 or float32 [0, 1].

    Values in 0..255 are 8-bit pixels (kept as uint8); values up to 65535 are 16-bit pixels (divided by 65535).
    Negative values and values above 65535 have no pixel meaning and raise.
    """
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise ValueError(
            f"integer image of dtype {array.dtype} has negative values (min {low}); integer pixels must be in "
            "0..255 (8-bit) or 0..65535 (16-bit)"
        )
    if high <= 255:
        return array.astype(np.uint8)
    if high <= 65535:
        return array.astype(np.float32) * np.float32(1.0 / 65535.0)
    raise ValueError(
        f"integer image of dtype {array.dtype} has values up to {high}, above the 16-bit range; integer pixels must "
        "be in 0..255 (8-bit) or 0..65535 (16-bit): rescale it, or pass uint8, uint16 or float values in [0, 1]"
    )


def _unit_pixels(array: np.ndarray) -> np.ndarray:
    """Pixels of any supported dtype as uint8 (0..255) or float32 (0..1); see `to_rgb` for the rules."""
    kind, width = array.dtype.kind, array.dtype.itemsize
    if kind == "b":
        return array.astype(np.uint8) * np.uint8(255)
    if kind == "u" and width == 1:
        return array
    if kind == "u" and width == 2:
        return array.astype(np.float32) * np.float32(1.0 / 65535.0)
    if kind in "iu":
        return _integer_pixels(array)
    if kind == "f":
        return _float_to_unit_range(array)
    raise TypeError(
        f"unsupported image dtype {array.dtype}; use uint8 (0..255), uint16 (0..65535), bool, integers in 0..255 "
        "or 0..65535, or float (0..1)"
    )


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """An RGBA PIL image composited over an opaque white background, as RGB."""
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _array_to_rgb(array: np.ndarray, input_data_format: Any = None) -> np.ndarray:
    """A 2-D or 3-D array as HWC RGB pixels: uint8 0..255 or float32 0..1 (see `to_rgb`)."""
    if array.ndim not in (2, 3):
        raise ValueError(
            f"an image must have 2 (H, W) or 3 (H, W, C) / (C, H, W) dimensions, got {array.ndim} "
            f"with shape {tuple(array.shape)}"
        )
    if array.size == 0:
        raise ValueError(f"image has zero size: shape {tuple(array.shape)}")
    if array.ndim == 3 and channel_axis(array.shape, input_data_format) == 0:
        array = np.moveaxis(array, 0, -1)
    pixels = _unit_pixels(array)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[-1] == 4:
        if pixels.dtype == np.uint8:  # PIL's compositing, so an RGBA array and an RGBA image agree exactly
            return np.asarray(_composite_on_white(Image.fromarray(np.ascontiguousarray(pixels), mode="RGBA")))
        alpha = pixels[:, :, 3:]
        pixels = pixels[:, :, :3] * alpha + (np.float32(1.0) - alpha)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels)


_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})


def _pil_to_rgb(image: Image.Image) -> Image.Image | np.ndarray:
    """A PIL image of any mode as RGB: a PIL RGB image for 8-bit modes, an HWC array for "I", "I;16*" and "F"."""
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image has zero size: {image.width}x{image.height} (width x height)")
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        try:
            image = ImageOps.exif_transpose(image)
        except (OSError, ValueError, SyntaxError, TypeError, KeyError):
            pass  # broken EXIF metadata does not make the pixels unusable
    mode = image.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _array_to_rgb(np.asarray(image))  # the same rules as the array `np.asarray(image)`
    if mode == "La":  # premultiplied alpha: over white, grey + (255 - alpha)
        grey_alpha = np.asarray(image).astype(np.int32)
        grey = np.clip(grey_alpha[:, :, 0] + 255 - grey_alpha[:, :, 1], 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_white(image.convert("RGBA"))
    return image if mode == "RGB" else image.convert("RGB")


def to_rgb(image: Any, input_data_format: Any = None) -> Image.Image | np.ndarray:
    """Convert one image (PIL, NumPy, torch) to RGB pixels, by the rules both training and inference use.

    Returns a PIL image in mode RGB (PIL images with 8-bit channels), or an HWC array with 3 channels: uint8 in
    0..255, or float32 in [0, 1] for deeper pixels.

    Rules:
        - PIL images: the EXIF orientation is applied. Modes with alpha (RGBA, LA, PA, RGBa, La, and any mode
          with a "transparency" entry, e.g. palette images) are composited over white. Mode "I;16*" is 16-bit
          (value / 65535), mode "I" follows the integer rule below and mode "F" the float rule, exactly as the
          array `np.asarray(image)` does. Every other mode (1, L, P, CMYK, YCbCr, LAB, HSV, RGBX, ...) goes through
          `convert("RGB")`.
        - Arrays and tensors: `[H, W]` is grayscale; a 3-D array's channel axis is found by `channel_axis` (or
          given by `input_data_format`). 1 channel is repeated to RGB; a 4th channel is alpha, composited over
          white (in [0, 255] for uint8, [0, 1] for floats).
        - dtypes: uint8 as is; bool as 0 / 255; uint16 as value / 65535; other integers (int8..int64, uint32,
          uint64, PIL mode "I"), which have no fixed range, are 8-bit when every value is in 0..255 and 16-bit
          (value / 65535) when every value is in 0..65535, and raise otherwise (also for negative values); floats
          (float16/32/64, bfloat16 tensors) must lie in [0, 1] and be finite.

    Raises:
        ValueError: wrong number of dimensions, no channel axis with 1, 3 or 4 channels, zero size, NaN/inf or
            out-of-range values, a bad `input_data_format`.
        TypeError: unsupported image type or dtype.
    """
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if _is_torch_tensor(image):
        if image.is_meta:
            raise ValueError(f"image tensor of shape {tuple(image.shape)} is on the meta device: it holds no pixels")
        tensor = image.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        image = tensor.numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"unsupported image type {type(image).__name__}; expected a PIL.Image.Image, a numpy.ndarray "
            "or a torch.Tensor (or None for a row without an image)"
        )
    return _array_to_rgb(image, input_data_format)


def _float_to_unit_range(array: np.ndarray) -> np.ndarray:
    """Check a float array for NaN/inf and for values outside [0, 1]; return it as float32."""
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError("image contains NaN or inf values")
    low, high = float(array.min()), float(array.max())
    if low < -_FLOAT_RANGE_TOLERANCE or high > 1.0 + _FLOAT_RANGE_TOLERANCE:
        raise ValueError(
            f"float images must have values in [0, 1], got range [{low:.4g}, {high:.4g}]; pass uint8 "
            "pixels (0..255) or divide by 255 first"
        )
    return np.clip(array, 0.0, 1.0)


def _resize(rgb: np.ndarray, size: int, resample: int) -> np.ndarray:
    """Resize an HWC RGB array to `[size, size, 3]` with PIL: uint8 stays uint8, floats become float32 [0, 1].

    uint8 images are resized as PIL RGB images (the usual 8-bit result); float images channel by channel in
    PIL's 32-bit float mode ("F") and clipped back to [0, 1].
    """
    if rgb.dtype == np.uint8:
        if rgb.shape[0] != size or rgb.shape[1] != size:
            rgb = np.asarray(Image.fromarray(rgb).resize((size, size), resample=resample))
        return rgb
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb.astype(np.float32, copy=False)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(rgb[:, :, c])).resize((size, size), resample))
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def _pil_resized(rgb: Image.Image | np.ndarray, size: int, resample: int) -> Image.Image | np.ndarray:
    """`rgb` (from `to_rgb`) resized to `size` x `size` by PIL; images already that size are returned as they are."""
    if isinstance(rgb, Image.Image):
        if rgb.width != size or rgb.height != size:
            rgb = rgb.resize((size, size), resample=resample)
        return rgb
    return _resize(rgb, size, resample)


def _torch_resized(images: list[Image.Image | np.ndarray], size: int, mode: str) -> list[np.ndarray]:
    """Resize equally sized 8-bit RGB images (PIL RGB images or HWC uint8 arrays) to `[size, size, 3]` uint8 with
    torch's antialiased uint8 kernel.

    The images are converted and stacked `[n, 3, H, W]` (channels-last in memory, the layout the kernel is written
    for) one chunk of at most `_TORCH_RESIZE_CHUNK_BYTES` at a time, so at most one chunk of full-resolution copies
    is alive at once. Returns HWC uint8 views of the results.
    """
    first = images[0]
    height, width = (first.height, first.width) if isinstance(first, Image.Image) else first.shape[:2]
    per_chunk = max(1, _TORCH_RESIZE_CHUNK_BYTES // (height * width * 3))
    resized: list[np.ndarray] = []
    with _single_threaded_torch():
        for start in range(0, len(images), per_chunk):
            chunk = np.stack([np.asarray(image) for image in images[start : start + per_chunk]])
            stacked = torch.from_numpy(chunk).permute(0, 3, 1, 2)
            out = F.interpolate(stacked, size=(size, size), mode=mode, antialias=True)  # uint8 [n, 3, S, S]
            del chunk, stacked
            resized.extend(out.permute(0, 2, 3, 1).numpy())  # HWC views (no copy when channels-last)
    return resized


def _channels(rgb: Image.Image | np.ndarray) -> list[np.ndarray]:
    """The three `[S, S]` channel planes of a resized image (contiguous for PIL images: PIL packs each band)."""
    if isinstance(rgb, Image.Image):  # one "raw" pack per band: no split() images, no interleaved copy
        return [
            np.frombuffer(rgb.tobytes("raw", band), dtype=np.uint8).reshape(rgb.height, rgb.width) for band in "RGB"
        ]
    return [rgb[:, :, channel] for channel in range(3)]


_INV_255 = np.float32(1.0 / 255.0)


class OptTriImageProcessor(BaseImageProcessor):
    r"""Turn images into OPT-Tri `pixel_values` and an `image_mask`.

    Each image is converted to RGB, resized to a square `image_size` x `image_size` (bicubic by default, aspect
    ratio not kept), scaled to [0, 1] and normalised with `image_mean` / `image_std`.

    Accepted images (converted to RGB by `to_rgb`, the same conversion the training data path uses):
        - `PIL.Image.Image` of any mode. The EXIF orientation is applied; modes with alpha (RGBA, LA, PA,
          palette images with transparency...) are composited over white; `I;16*` is scaled by 1/65535, `I`
          and `F` follow the integer and float rules of arrays; other modes go through `convert("RGB")`.
        - `numpy.ndarray` with shape `[H, W]` (grayscale), `[H, W, C]` or `[C, H, W]` where `C` is 1
          (grayscale, repeated to RGB), 3 (RGB) or 4 (RGBA, composited over white). dtype uint8 (0..255),
          uint16 (0..65535), bool, other integers in 0..255 or 0..65535, or float in [0, 1]. The channel axis
          follows transformers' `infer_channel_dimension_format` (first axis first); pass
          `input_data_format="channels_first"` / `"channels_last"` to settle ambiguous shapes such as `(3, 4, 4)`.
        - `torch.Tensor` as for NumPy.
        - a 4-D array / tensor is read as a batch of images (`[B, H, W, C]` or `[B, C, H, W]`).

    Args:
        image_size (`int`, defaults to 224): Side of the square output image, in pixels.
        image_mean (`list[float]`, defaults to the ImageNet mean): Per-channel mean subtracted after
            rescaling to [0, 1].
        image_std (`list[float]`, defaults to the ImageNet std): Per-channel standard deviation.
        resample (`int`, defaults to `PIL.Image.BICUBIC` = 3): PIL resampling filter.
        resize_backend (`str`, defaults to `"torch"`): `"torch"` resizes 8-bit images with a bilinear or bicubic
            filter by torch's antialiased uint8 kernel, batched (up to about 10x faster than PIL; values within a
            few levels of PIL's, typically at most 2 of 255); `"pil"` gives PIL's exact result. Processors saved
            before this option existed load with `"torch"`. Float / 16-bit
            images and other filters always use PIL. See the module docstring.
        do_normalize (`bool`, defaults to True): Whether to normalise; if False `pixel_values` are in [0, 1].

    Returns from `__call__` (a `BatchFeature`):
        - `pixel_values`: float32 `[B, 3, image_size, image_size]`; rows without an image are all zeros.
        - `image_mask`: int64 `[B]`; 1 where the row has an image, 0 where it was `None`.
    """

    model_input_names = ["pixel_values", "image_mask"]
    valid_kwargs = OptTriImageProcessorKwargs

    def __init__(
        self,
        image_size: int = 224,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        resample: int = int(Image.Resampling.BICUBIC),
        resize_backend: str = "torch",
        do_normalize: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("size", None)  # saved by some transformers versions' base `to_dict`; we use `image_size`
        super().__init__(**kwargs)
        image_size = _check_image_size(image_size)
        mean = list(IMAGENET_MEAN if image_mean is None else image_mean)
        std = list(IMAGENET_STD if image_std is None else image_std)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"image_mean and image_std need 3 values (RGB), got {mean} and {std}")
        if any(not np.isfinite(s) or s <= 0 for s in std):
            raise ValueError(f"image_std values must be positive and finite, got {std}")
        if not all(np.isfinite(m) for m in mean):
            raise ValueError(f"image_mean values must be finite, got {mean}")
        if int(resample) not in {int(f) for f in Image.Resampling}:
            raise ValueError(
                f"resample must be a PIL filter ({', '.join(f'{f.name}={int(f)}' for f in Image.Resampling)}), "
                f"got {resample!r}"
            )
        self.image_size = image_size
        self.image_mean = [float(m) for m in mean]
        self.image_std = [float(s) for s in std]
        if resize_backend not in RESIZE_BACKENDS:
            raise ValueError(f"resize_backend must be one of {RESIZE_BACKENDS}, got {resize_backend!r}")
        if resize_backend == "torch" and torch is None:
            raise ImportError(
                'resize_backend="torch" needs torch, which is not installed; install torch or pass '
                'resize_backend="pil"'
            )
        self.resample = int(resample)
        self.resize_backend = resize_backend
        self.do_normalize = _check_flag("do_normalize", do_normalize)

    @staticmethod
    def _as_list(images: Any) -> list[Any]:
        """Turn `images` (one image, a 4-D batch, or a list/tuple of images or `None`) into a list."""
        if isinstance(images, (list, tuple)):
            return list(images)
        if (isinstance(images, np.ndarray) or _is_torch_tensor(images)) and images.ndim == 4:
            return list(images)
        return [images]

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        """Preprocess one image or a batch; see `preprocess`."""
        return self.preprocess(images, **kwargs)

    def preprocess(
        self,
        images: Any,
        return_tensors: str | TensorType | None = None,
        image_size: int | None = None,
        do_normalize: bool | None = None,
        input_data_format: Any = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Preprocess one image or a batch of images.

        Args:
            images: One image, a 4-D batch, or a list of images in which `None` marks a row without an image.
            return_tensors: `"pt"`, `"np"` or `None` (default: NumPy arrays).
            image_size: Overrides `self.image_size` for this call.
            do_normalize: Overrides `self.do_normalize` for this call.
            input_data_format: `"channels_first"` / `"channels_last"` (or a `ChannelDimension`): the layout of
                every 3-D array / tensor in `images`; None infers it per image (see `channel_axis`).
            **kwargs: Ignored with a warning (kept for API compatibility with other image processors).

        Returns:
            `BatchFeature` with `pixel_values` float32 `[B, 3, S, S]` and `image_mask` int64 `[B]`.

        Raises:
            ValueError: empty batch, wrong number of dimensions, channel count other than 1/3/4, zero-size
                image, NaN/inf or out-of-range values, a bad `input_data_format`.
            TypeError: unsupported image type or dtype.
        """
        if kwargs:
            logger.warning(f"OptTriImageProcessor ignores the unsupported arguments {sorted(kwargs)}")
        size = self.image_size if image_size is None else _check_image_size(image_size)
        normalize = self.do_normalize if do_normalize is None else _check_flag("do_normalize", do_normalize)
        batch = self._as_list(images)
        if not batch:
            raise ValueError("images is an empty list; pass at least one image (or None for an empty row)")

        pixels = np.empty((len(batch), 3, size, size), dtype=np.float32)
        mask = np.zeros((len(batch),), dtype=np.int64)
        mean = np.asarray(self.image_mean, dtype=np.float32)
        inv_std = np.float32(1.0) / np.asarray(self.image_std, dtype=np.float32)
        torch_mode = _TORCH_FILTERS.get(self.resample) if self.resize_backend == "torch" else None
        resized: list[Image.Image | np.ndarray | None] = [None] * len(batch)
        to_torch: dict[tuple[int, int], list[tuple[int, Image.Image | np.ndarray]]] = {}  # (H, W) -> (row, image)
        for row, image in enumerate(batch):
            if image is None:
                continue
            try:
                rgb = to_rgb(image, input_data_format)
                is_pil = isinstance(rgb, Image.Image)
                height, width = (rgb.height, rgb.width) if is_pil else rgb.shape[:2]
                if torch_mode is not None and (height, width) != (size, size) and (is_pil or rgb.dtype == np.uint8):
                    to_torch.setdefault((height, width), []).append((row, rgb))
                    continue
                resized[row] = _pil_resized(rgb, size, self.resample)
            except (ValueError, TypeError) as error:
                raise type(error)(f"images[{row}]: {error}") from None
        for group in to_torch.values():
            rows = [row for row, _ in group]
            for row, array in zip(rows, _torch_resized([rgb for _, rgb in group], size, torch_mode)):
                resized[row] = array

        for row, rgb in enumerate(resized):
            if rgb is None:
                pixels[row] = 0.0  # rows without an image are all zeros
                continue
            # rescale + normalise into this row's channels-first slot, one channel at a time (stays in cache);
            # the same float32 operations as `(uint8 * float32(1/255) - mean) * (1 / std)`, in place
            for channel, plane in enumerate(_channels(rgb)):
                out = pixels[row, channel]
                out[...] = plane  # uint8 -> float32 is exact; float planes are float32
                if plane.dtype == np.uint8:
                    out *= _INV_255
                if normalize:
                    out -= mean[channel]
                    out *= inv_std[channel]
            mask[row] = 1
        pixel_values = pixels
        return BatchFeature(
            data={"pixel_values": pixel_values, "image_mask": mask}, tensor_type=return_tensors
        )

    def to_dict(self) -> dict[str, Any]:
        """Serialise the settings (what `save_pretrained` writes); drops base-class bookkeeping keys."""
        output = super().to_dict()
        for key in ("_valid_processor_keys", "_valid_kwargs_names", "size"):
            output.pop(key, None)
        return output


OptTriImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["CHANNEL_COUNTS", "OptTriImageProcessor", "channel_axis", "to_rgb"]
