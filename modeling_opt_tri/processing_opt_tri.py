"""Tri-modal processor for OPT-Tri: tokenizer + image processor + log-mel feature extractor.

This is a Hub file: it is copied next to checkpoints as remote code together with
`image_processing_opt_tri.py` and `feature_extraction_opt_tri.py`, which it imports relatively.
"""

from __future__ import annotations

import numbers
import os
from typing import Any

from transformers.feature_extraction_utils import BatchFeature
from transformers.models.auto.tokenization_auto import AutoTokenizer
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import TensorType, logging

from .feature_extraction_opt_tri import OptTriFeatureExtractor
from .image_processing_opt_tri import OptTriImageProcessor


logger = logging.get_logger(__name__)

_UNBOUNDED_LENGTH = 10**9
"""`model_max_length` at or above this means the tokenizer sets no limit (transformers uses ~1e30)."""


class OptTriProcessor(ProcessorMixin):
    r"""Prepare any non-empty subset of text, images and audio for an OPT-Tri model.

    Args:
        image_processor (`OptTriImageProcessor`, optional): Defaults to `OptTriImageProcessor()`.
        feature_extractor (`OptTriFeatureExtractor`, optional): Defaults to `OptTriFeatureExtractor()`.
        tokenizer (`PreTrainedTokenizerBase`): Required, e.g. a `BertTokenizerFast`.

    Calling the processor returns one `BatchFeature` with the keys of the modalities given:
        - text: `input_ids` int64 `[B, L]`, `attention_mask` int64 `[B, L]` (+ `token_type_ids` if the
          tokenizer returns them). A `None` text row has an all-zero `attention_mask` and `[PAD]` ids.
        - images: `pixel_values` float32 `[B, 3, S, S]`, `image_mask` int64 `[B]`.
        - audio: `input_features` float32 `[B, n_mels, T]`, `audio_attention_mask` int64 `[B, T]`.

    Saving writes the tokenizer files and one `processor_config.json` holding the image processor and
    feature extractor settings; `OptTriProcessor.from_pretrained(dir)` and
    `AutoProcessor.from_pretrained(dir, trust_remote_code=True)` both load it back. The sub-processors are
    loaded with this module's own classes, so loading works whether or not they are registered with the
    Auto classes.
    """

    def __init__(
        self,
        image_processor: OptTriImageProcessor | None = None,
        feature_extractor: OptTriFeatureExtractor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        **kwargs: Any,
    ) -> None:
        if tokenizer is None:
            raise ValueError("OptTriProcessor needs a tokenizer (e.g. a BertTokenizerFast)")
        if image_processor is None:
            image_processor = OptTriImageProcessor()
        if feature_extractor is None:
            feature_extractor = OptTriFeatureExtractor()
        super().__init__(
            image_processor=image_processor, feature_extractor=feature_extractor, tokenizer=tokenizer, **kwargs
        )

    @classmethod
    def _get_arguments_from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        processor_dict: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """Load `[image_processor, feature_extractor, tokenizer]` from a saved folder or Hub repo.

        The image processor and feature extractor are loaded with our own classes (from
        `processor_config.json`, or a legacy `preprocessor_config.json`) rather than through
        `AutoImageProcessor` / `AutoFeatureExtractor`, which only find custom classes when they are
        registered (installed package) or when `trust_remote_code=True` is passed. The tokenizer uses
        `AutoTokenizer`.
        """
        kwargs = dict(kwargs)
        kwargs.pop("trust_remote_code", None)
        kwargs.pop("_from_auto", None)
        subfolder = kwargs.pop("subfolder", "")
        image_processor = OptTriImageProcessor.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        feature_extractor = OptTriFeatureExtractor.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        return [image_processor, feature_extractor, tokenizer]

    @property
    def model_input_names(self) -> list[str]:
        """Every key `__call__` can return: the tokenizer's, then image, then audio inputs."""
        names = list(self.tokenizer.model_input_names)
        names += list(self.image_processor.model_input_names) + list(self.feature_extractor.model_input_names)
        return list(dict.fromkeys(names))

    def _text_limit(self, max_length: int | None) -> int | None:
        """The token limit truncation applies: `max_length`, else the tokenizer's `model_max_length`."""
        if max_length is not None:
            if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) or max_length < 1:
                raise ValueError(f"max_length must be a positive int (a number of tokens), got {max_length!r}")
            return int(max_length)
        limit = getattr(self.tokenizer, "model_max_length", None)
        return int(limit) if limit is not None and limit < _UNBOUNDED_LENGTH else None

    def _tokenize(
        self,
        text: str | list[str | None] | tuple[str | None, ...],
        padding: bool | str,
        truncation: bool,
        max_length: int | None,
        **kwargs: Any,
    ) -> dict[str, list[list[int]]]:
        """Tokenize a batch where `None` rows have no text.

        Returns lists (not tensors) so `None` rows can be blanked: their ids become the pad id and their
        `attention_mask` (and `token_type_ids`) all zeros. Counts rows cut by truncation and logs a warning.
        """
        if not isinstance(text, (str, list, tuple)):
            raise TypeError(
                f"text must be a string or a list of strings (None for a row without text), got {type(text).__name__}"
            )
        rows = [text] if isinstance(text, str) else list(text)
        if not rows:
            raise ValueError("text is an empty list; pass at least one string (or None for a row without text)")
        for index, row in enumerate(rows):
            if row is not None and not isinstance(row, str):
                raise TypeError(f"text[{index}] is a {type(row).__name__}, expected str or None")
        missing = [index for index, row in enumerate(rows) if row is None]
        strings = ["" if row is None else row for row in rows]
        limit = self._text_limit(max_length) if truncation else None
        special = self.tokenizer.num_special_tokens_to_add() if kwargs.get("add_special_tokens", True) else 0
        if limit is not None and limit < special:  # the tokenizer would silently not truncate at all
            raise ValueError(
                f"max_length={limit} is shorter than the {special} special tokens added to every text row; "
                f"use max_length >= {special}"
            )
        encoded = self.tokenizer(
            strings,
            padding=padding,
            truncation=bool(truncation) and limit is not None,
            max_length=limit,
            return_tensors=None,
            **kwargs,
        )
        if limit is not None:
            self._warn_truncated(strings, encoded, limit, kwargs.get("add_special_tokens", True))

        output = {key: [list(values) for values in encoded[key]] for key in encoded.keys()}
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for index in missing:
            output["input_ids"][index] = [pad_id] * len(output["input_ids"][index])
            for key in ("attention_mask", "token_type_ids", "special_tokens_mask"):
                if key in output:
                    output[key][index] = [0] * len(output[key][index])
        return output

    def _warn_truncated(self, strings: list[str], encoded: Any, limit: int, add_special_tokens: bool) -> None:
        """Log a warning naming how many rows were longer than `limit` tokens (and so were truncated)."""
        encodings = getattr(encoded, "encodings", None)
        if encodings is not None:  # fast tokenizers keep what truncation cut off
            truncated = sum(1 for encoding in encodings if len(encoding.overflowing) > 0)
        else:
            full = self.tokenizer(strings, add_special_tokens=add_special_tokens, truncation=False)["input_ids"]
            truncated = sum(1 for ids in full if len(ids) > limit)
        if truncated:
            logger.warning(
                f"{truncated} of {len(strings)} text rows were longer than max_length={limit} tokens and were "
                "truncated"
            )

    def __call__(
        self,
        text: str | list[str | None] | None = None,
        images: Any = None,
        audio: Any = None,
        sampling_rate: int | None = None,
        return_tensors: str | TensorType | None = "pt",
        padding: bool | str = True,
        truncation: bool = True,
        max_length: int | None = None,
        input_data_format: Any = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Process any non-empty subset of text, images and audio into one batch.

        Args:
            text: A string or a list of strings; `None` in the list marks a row without text.
            images: One image or a list (`None` entries: rows without an image); see `OptTriImageProcessor`.
            audio: One clip or a list of clips (`None` entries: rows without audio); see
                `OptTriFeatureExtractor`.
            sampling_rate: Rate of `audio` in Hz; required when `audio` is given.
            return_tensors: `"pt"` (default), `"np"` or None.
            padding: Tokenizer padding (True pads to the longest row).
            truncation: Whether text longer than `max_length` tokens is truncated. When it is, a warning
                says how many rows were cut.
            max_length: Token limit; defaults to the tokenizer's `model_max_length`.
            input_data_format: Layout of 3-D image arrays (`"channels_first"` / `"channels_last"`), for shapes
                such as `(3, 4, 4)` whose channel axis is ambiguous; see `OptTriImageProcessor.preprocess`.
            **kwargs: Passed to the tokenizer (e.g. `add_special_tokens`, `pad_to_multiple_of`).

        Returns:
            `BatchFeature` with the keys listed in the class docstring, for the modalities given.

        Raises:
            ValueError: no modality given; batch sizes differ between modalities; audio without
                `sampling_rate`; any error of the sub-processors.
        """
        if text is None and images is None and audio is None:
            raise ValueError("no modality given: pass at least one of text=, images= or audio=")
        if audio is not None and sampling_rate is None:
            raise ValueError("audio was given without sampling_rate: pass sampling_rate=<Hz of the audio>")

        data: dict[str, Any] = {}
        sizes: dict[str, int] = {}
        if text is not None:
            encoded = self._tokenize(text, padding=padding, truncation=truncation, max_length=max_length, **kwargs)
            sizes["text"] = len(encoded["input_ids"])
            data.update(encoded)
        if images is not None:
            image_features = self.image_processor(images, return_tensors=None, input_data_format=input_data_format)
            sizes["images"] = int(image_features["image_mask"].shape[0])
            data.update(image_features)
        if audio is not None:
            audio_features = self.feature_extractor(audio, sampling_rate=sampling_rate, return_tensors=None)
            sizes["audio"] = int(audio_features["audio_attention_mask"].shape[0])
            data.update(audio_features)
        if len(set(sizes.values())) > 1:
            described = ", ".join(f"{name} has {size}" for name, size in sizes.items())
            raise ValueError(f"batch sizes of the modalities differ: {described} rows")
        return BatchFeature(data=data, tensor_type=return_tensors)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        """Forward to the tokenizer's `batch_decode`."""
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        """Forward to the tokenizer's `decode`."""
        return self.tokenizer.decode(*args, **kwargs)


OptTriProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["OptTriProcessor"]
