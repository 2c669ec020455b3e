"""Image processor for OPT-Tri.

This is a Hub file: it is copied next to checkpoints as remote code. It imports only third-party packages
(numpy, PIL, transformers; torch optionally) and nothing from the rest of the `modeling_opt_tri` package.

Pipeline, per image: convert to RGB -> resize to `image_size` x `image_size` (PIL, bicubic by default) ->
rescale to [0, 1] -> normalise with `image_mean` / `image_std`.

Speed: PIL images are resized as they are (no NumPy -> PIL -> NumPy round trip), and each resized image is
rescaled and normalised straight into its channels-first slot of the output batch while it is still in cache
(three in-place float32 passes; no batch-sized temporaries, no channels-last copy). Everything runs in NumPy,
so the processor never touches torch's intra-op thread pool (which on a busy machine costs more than the work).
The arithmetic is the same float32 operations as the straightforward pipeline, so the pixels are bit-identical.
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


try:
    import torch
except ImportError:  # torch is optional for the processor itself
    torch = None


logger = logging.get_logger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_FLOAT_RANGE_TOLERANCE = 1e-3
"""Float images may exceed [0, 1] by this much (rounding) before they are rejected."""


class OptTriImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments accepted by `OptTriImageProcessor` (used by `from_pretrained(..., **kwargs)`)."""

    image_size: int


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


def _resized_rgb(image: Any, size: int, resample: int) -> Image.Image | np.ndarray:
    """One image resized to `size` x `size` RGB: a PIL RGB image, or an HWC array (uint8 0..255 or float32 [0, 1]).

    A PIL image with 8-bit channels is converted and resized by PIL directly and returned as a PIL image; this
    gives the same pixels as `_resize(_to_rgb_array(image))`, which would copy it to NumPy and back to PIL first.
    Anything else (arrays, tensors, 16-bit and float PIL modes) goes through `_to_rgb_array` and `_resize`.
    """
    if _is_plain_pil(image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"image has zero size: {image.width}x{image.height} (width x height)")
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.width != size or image.height != size:
            image = image.resize((size, size), resample=resample)
        return image
    return _resize(_to_rgb_array(image), size, resample)


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

    Each image is converted to RGB, resized to a square `image_size` x `image_size` with PIL (bicubic by
    default, aspect ratio not kept), scaled to [0, 1] and normalised with `image_mean` / `image_std`.

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
        self.resample = int(resample)
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
        for row, image in enumerate(batch):
            if image is None:
                pixels[row] = 0.0  # rows without an image are all zeros
                continue
            try:
                rgb = _resized_rgb(image, size, self.resample)
            except (ValueError, TypeError) as error:
                raise type(error)(f"images[{row}]: {error}") from None
            # rescale + normalise into this row's channels-first slot, one channel at a time (stays in cache);
            # the same float32 operations as `(uint8 * float32(1/255) - mean) * (1 / std)`, in place
            for channel, plane in enumerate(_channels(rgb)):
                out = pixels[row, channel]
                np.copyto(out, plane, casting="unsafe")  # uint8 -> float32 is exact; float planes are float32
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
