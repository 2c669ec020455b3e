"""Image processor for OPT-Tri.

This is a Hub file: it is copied next to checkpoints as remote code. It imports third-party packages (numpy,
PIL, transformers; torch for the default resize backend) and, relatively, the Hub file
`feature_extraction_opt_tri.py` (for `_single_threaded_torch`); nothing else from the `modeling_opt_tri` package.

Pipeline, per image: convert to RGB -> resize to `image_size` x `image_size` (bicubic by default) -> rescale to
[0, 1] -> normalise with `image_mean` / `image_std`.

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
from PIL import Image
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

_TORCH_RESIZE_CHUNK_BYTES = 64 * 2**20
"""Images of one size are resized together in chunks of at most this many input bytes (at least one image)."""


class OptTriImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments accepted by `OptTriImageProcessor` (used by `from_pretrained(..., **kwargs)`)."""

    image_size: int
    resize_backend: str


def _is_torch_tensor(value: Any) -> bool:
    return torch is not None and isinstance(value, torch.Tensor)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to an HWC RGB array, uint8 [0, 255] or float32 [0, 1].

    16-bit and 32-bit integer modes (`I;16*`, `I`) are scaled by 1/65535 to float32 [0, 1]; mode `F` is taken
    as float in [0, 1]. Every other mode (`L`, `LA`, `P`, `RGBA`, `CMYK`, `YCbCr`, `1`, ...) goes through
    `Image.convert("RGB")`, which drops any alpha channel without compositing.
    """
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image has zero size: {image.width}x{image.height} (width x height)")
    if image.mode.startswith("I"):  # "I;16", "I;16B", "I;16L", "I;16N", "I"
        gray = np.asarray(image).astype(np.float32) / 65535.0
        return np.repeat(np.clip(gray, 0.0, 1.0)[:, :, None], 3, axis=2)
    if image.mode == "F":
        return _float_to_unit_range(np.repeat(np.asarray(image, dtype=np.float32)[:, :, None], 3, axis=2))
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def _float_to_unit_range(array: np.ndarray) -> np.ndarray:
    """Check a float HWC array for NaN/inf and for values outside [0, 1]; return it as float32."""
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


def _array_to_hwc(array: np.ndarray, channels_first_preferred: bool) -> np.ndarray:
    """Bring a 2-D or 3-D array to HWC layout with 3 (RGB) channels.

    Layout: a 2-D array is grayscale `[H, W]`. For a 3-D array, NumPy inputs are read as `[H, W, C]` when
    the last axis has 1, 3 or 4 entries and as `[C, H, W]` otherwise; torch tensors
    (`channels_first_preferred=True`) the other way round. One channel is repeated to RGB; a fourth
    (alpha) channel is dropped.
    """
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim != 3:
        raise ValueError(
            f"an image must have 2 (H, W) or 3 (H, W, C) / (C, H, W) dimensions, got {array.ndim} "
            f"with shape {tuple(array.shape)}"
        )
    elif channels_first_preferred and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    elif array.shape[-1] not in (1, 3, 4):
        if array.shape[0] in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)
        else:
            raise ValueError(
                f"image of shape {tuple(array.shape)} has no channel axis with 1, 3 or 4 channels "
                "(grayscale, RGB or RGBA) at the start or the end"
            )
    if 0 in array.shape:
        raise ValueError(f"image has zero size: shape {tuple(array.shape)}")
    channels = array.shape[-1]
    if channels == 1:
        array = np.repeat(array, 3, axis=2)
    elif channels == 4:
        array = array[:, :, :3]
    return array


def _to_rgb_array(image: Any) -> np.ndarray:
    """Convert one image (PIL, NumPy, torch) to HWC RGB: uint8 in [0, 255] or float32 in [0, 1].

    Accepted dtypes: uint8 (0..255), uint16 (0..65535, scaled by 1/65535), bool (0/1) and floats
    (float16/32/64, bfloat16 tensors; values in [0, 1]). Other dtypes raise `TypeError`.
    """
    if isinstance(image, Image.Image):
        return _pil_to_array(image)
    channels_first = False
    if _is_torch_tensor(image):
        tensor = image.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        image = tensor.numpy()
        channels_first = True
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"unsupported image type {type(image).__name__}; expected a PIL.Image.Image, a numpy.ndarray "
            "or a torch.Tensor (or None for a row without an image)"
        )
    if image.ndim not in (2, 3):
        raise ValueError(
            f"an image must have 2 (H, W) or 3 (H, W, C) / (C, H, W) dimensions, got {image.ndim} "
            f"with shape {tuple(image.shape)}"
        )
    if image.size == 0:
        raise ValueError(f"image has zero size: shape {tuple(image.shape)}")
    image = _array_to_hwc(image, channels_first_preferred=channels_first)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype == np.bool_:
        return np.ascontiguousarray(image.astype(np.uint8) * 255)
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if np.issubdtype(image.dtype, np.floating):
        return _float_to_unit_range(image)
    raise TypeError(
        f"unsupported image dtype {image.dtype}; use uint8 (0..255), uint16 (0..65535) or float (0..1)"
    )


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


def _is_plain_pil(image: Any) -> bool:
    """True for a PIL image whose pixels are 8 bits per channel once converted to RGB (not `I*` or `F`)."""
    return isinstance(image, Image.Image) and not (image.mode.startswith("I") or image.mode == "F")


def _rgb_image(image: Any) -> Image.Image | np.ndarray:
    """One image as RGB, not yet resized: a PIL RGB image (8-bit PIL inputs) or an HWC array (see `_to_rgb_array`).

    A PIL image with 8-bit channels stays a PIL image (converted to RGB if needed), so the PIL backend resizes it
    without a NumPy -> PIL round trip; 16-bit and float PIL modes, arrays and tensors go through `_to_rgb_array`.
    """
    if _is_plain_pil(image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"image has zero size: {image.width}x{image.height} (width x height)")
        return image if image.mode == "RGB" else image.convert("RGB")
    return _to_rgb_array(image)


def _pil_resized(rgb: Image.Image | np.ndarray, size: int, resample: int) -> Image.Image | np.ndarray:
    """`rgb` (from `_rgb_image`) resized to `size` x `size` by PIL; images already that size are returned as they are."""
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

    Accepted images:
        - `PIL.Image.Image` of any mode. Grayscale, palette, RGBA, CMYK... are converted with
          `convert("RGB")` (alpha is dropped, not composited). 16-bit modes (`I;16`, `I`) are scaled by
          1/65535.
        - `numpy.ndarray` with shape `[H, W]` (grayscale), `[H, W, C]` or `[C, H, W]` where `C` is 1
          (grayscale, repeated to RGB), 3 (RGB) or 4 (RGBA, alpha dropped). dtype uint8 (0..255), uint16
          (0..65535), bool, or float in [0, 1]. The channel axis is looked for last, then first.
        - `torch.Tensor` as for NumPy, but the channel axis is looked for first (`[C, H, W]`), then last.
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
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        mean = list(IMAGENET_MEAN if image_mean is None else image_mean)
        std = list(IMAGENET_STD if image_std is None else image_std)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"image_mean and image_std need 3 values (RGB), got {mean} and {std}")
        if any(not np.isfinite(s) or s <= 0 for s in std):
            raise ValueError(f"image_std values must be positive and finite, got {std}")
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
        self.do_normalize = bool(do_normalize)

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
        **kwargs: Any,
    ) -> BatchFeature:
        """Preprocess one image or a batch of images.

        Args:
            images: One image, a 4-D batch, or a list of images in which `None` marks a row without an image.
            return_tensors: `"pt"`, `"np"` or `None` (default: NumPy arrays).
            image_size: Overrides `self.image_size` for this call.
            do_normalize: Overrides `self.do_normalize` for this call.
            **kwargs: Ignored with a warning (kept for API compatibility with other image processors).

        Returns:
            `BatchFeature` with `pixel_values` float32 `[B, 3, S, S]` and `image_mask` int64 `[B]`.

        Raises:
            ValueError: empty batch, wrong number of dimensions, channel count other than 1/3/4, zero-size
                image, NaN/inf or out-of-range float values.
            TypeError: unsupported image type or dtype.
        """
        if kwargs:
            logger.warning(f"OptTriImageProcessor ignores the unsupported arguments {sorted(kwargs)}")
        size = self.image_size if image_size is None else int(image_size)
        normalize = self.do_normalize if do_normalize is None else bool(do_normalize)
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
                rgb = _rgb_image(image)
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

__all__ = ["OptTriImageProcessor"]
