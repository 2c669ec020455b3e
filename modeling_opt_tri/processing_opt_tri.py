"""Tri-modal processor for OPT-Tri: tokenizer + image processor + audio feature extractor.

The three slots hold ours (`OptTriImageProcessor`, `OptTriFeatureExtractor`) or the preprocessing of a pretrained
tower (CLIP / SigLIP / DINOv2 / ViT image processors; Whisper, AST and wav2vec2-family feature extractors; any
tokenizer), see `OptTriProcessor.from_unimodal_pretrained` and docs/PROCESSORS.md.

This is a Hub file: it is copied next to checkpoints as remote code together with
`image_processing_opt_tri.py` and `feature_extraction_opt_tri.py`, which it imports relatively.
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import transformers
from transformers.feature_extraction_utils import BatchFeature, FeatureExtractionMixin
from transformers.image_processing_utils import ImageProcessingMixin
from transformers.models.auto.feature_extraction_auto import AutoFeatureExtractor
from transformers.models.auto.image_processing_auto import AutoImageProcessor
from transformers.models.auto.tokenization_auto import AutoTokenizer
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import TensorType, logging

from .feature_extraction_opt_tri import OptTriFeatureExtractor, check_sampling_rate, clips_at_rate
from .image_processing_opt_tri import OptTriImageProcessor


logger = logging.get_logger(__name__)

_UNBOUNDED_LENGTH = 10**9
"""`model_max_length` at or above this means the tokenizer sets no limit (transformers uses ~1e30)."""

IMAGE_FAMILIES: dict[str, str] = {
    "OptTriImageProcessor": "OPT-Tri (ours): square resize, ImageNet normalisation",
    "CLIPImageProcessor": "CLIP vision: shortest-edge resize, centre crop, CLIP normalisation",
    "SiglipImageProcessor": "SigLIP vision: square resize, [-1, 1] normalisation",
    "BitImageProcessor": "DINOv2: shortest-edge resize, centre crop, ImageNet normalisation",
    "ViTImageProcessor": "ViT: square resize, normalisation",
}
"""Image processor classes a processor slot accepts (the PIL and torchvision variants of each: `...Pil`, `...Fast`)."""


@dataclass(frozen=True)
class AudioFamily:
    """How the processor calls one audio feature-extractor class and names its output.

    Attributes:
        description: The towers this preprocessing belongs to.
        input_key: Key of the tower input in `OptTriProcessor`'s output.
        source_key: Key under which the family's own extractor returns that tensor.
        call_kwargs: Extra arguments of every call of the family's extractor.
    """

    description: str
    input_key: str
    source_key: str
    call_kwargs: tuple[tuple[str, Any], ...] = ()


AUDIO_FAMILIES: dict[str, AudioFamily] = {
    "OptTriFeatureExtractor": AudioFamily("OPT-Tri log-mel (ours)", "input_features", "input_features"),
    "WhisperFeatureExtractor": AudioFamily(
        "Whisper encoder: 80/128-bin log-mel, padded to the 30 s window", "input_features", "input_features",
        (("return_attention_mask", True),),
    ),
    "ASTFeatureExtractor": AudioFamily(
        "AST: Kaldi-style fbank, padded / cut to max_length frames", "input_features", "input_values"
    ),
    "Wav2Vec2FeatureExtractor": AudioFamily(
        "wav2vec2 / HuBERT / WavLM: raw waveform, zero-mean unit-variance", "input_values", "input_values",
        (("padding", True),),
    ),
}
"""Feature-extractor classes the audio slot accepts, and how each is called."""

_LOADING_KWARGS = frozenset(
    {"cache_dir", "force_download", "local_files_only", "token", "revision", "trust_remote_code"}
)
"""Keyword arguments of `from_unimodal_pretrained`, passed to every loader."""

_PREPROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


def _class_family(obj: Any) -> str:
    """The class name of `obj` without the backend suffix transformers adds (`CLIPImageProcessorPil` -> `CLIP...`)."""
    name = type(obj).__name__
    for suffix in ("Pil", "Fast"):
        if name.endswith(suffix) and name[: -len(suffix)] in IMAGE_FAMILIES:
            return name[: -len(suffix)]
    return name


def image_family(image_processor: Any) -> str:
    """The `IMAGE_FAMILIES` key of `image_processor`; raises `ValueError` listing the supported ones."""
    family = _class_family(image_processor)
    if family not in IMAGE_FAMILIES:
        raise ValueError(
            f"image processor {type(image_processor).__name__} is not a supported vision family; supported: "
            + "; ".join(f"{name} ({text})" for name, text in IMAGE_FAMILIES.items())
        )
    return family


def audio_family(feature_extractor: Any) -> AudioFamily:
    """The `AUDIO_FAMILIES` entry of `feature_extractor`; raises `ValueError` listing the supported ones."""
    family = AUDIO_FAMILIES.get(type(feature_extractor).__name__)
    if family is None:
        raise ValueError(
            f"feature extractor {type(feature_extractor).__name__} is not a supported audio family; supported: "
            + "; ".join(f"{name} ({entry.description})" for name, entry in AUDIO_FAMILIES.items())
        )
    return family


def _kept_samples(feature_extractor: Any) -> int | None:
    """How many samples (at the extractor's rate) the family's features depend on at most; None: all of them.

    Whisper pads or cuts every clip to `n_samples` (30 s) before its STFT. AST cuts its fbank to `max_length`
    frames of 400 samples every 160 (25 ms / 10 ms at 16 kHz). Resampling only what is kept (`resample(...,
    max_samples)`) gives the same features for less work.
    """
    name = type(feature_extractor).__name__
    if name == "WhisperFeatureExtractor":
        return int(feature_extractor.n_samples)
    if name == "ASTFeatureExtractor" and feature_extractor.sampling_rate == 16000:
        return (int(feature_extractor.max_length) - 1) * 160 + 400
    return None


def _gives_audio_attention_mask(feature_extractor: Any) -> bool:
    """Whether the processor's audio output has `audio_attention_mask` with this feature extractor."""
    name = type(feature_extractor).__name__
    if name == "Wav2Vec2FeatureExtractor":
        return bool(feature_extractor.return_attention_mask)
    return name != "ASTFeatureExtractor"


def _load_unimodal(argument: str, path: Any, loader: Any, files: tuple[str, ...], kwargs: dict[str, Any]) -> Any:
    """Load one sub-processor of `from_unimodal_pretrained` from a checkpoint folder or Hub repo id.

    Raises:
        ValueError: `path` is not a string / PathLike, a local path that does not exist or is not a folder, a folder
            without any of `files`, or the loader failed (its error is chained).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{argument}= must be a checkpoint folder or Hub repo id (str), got {type(path).__name__}")
    path = os.path.expanduser(os.fspath(path))
    local = os.path.exists(path) or path.startswith(".") or os.path.isabs(path) or path.count("/") > 1
    if local:
        if not os.path.isdir(path):
            raise ValueError(f"{argument}={path!r} is not a checkpoint folder (no such directory)")
        if not any(os.path.isfile(os.path.join(path, name)) for name in files):
            raise ValueError(
                f"{argument}={path!r} is not a checkpoint folder with a {loader.__name__} input: it has none of "
                f"{', '.join(files)}"
            )
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{argument}={path!r}: {loader.__name__} could not load it: {error}") from error


def _sub_processor_from_dict(slot: str, ours: type, path: Any, processor_dict: dict | None, **kwargs: Any) -> Any:
    """Load the `slot` sub-processor of a saved OptTriProcessor: ours through its own class (registered or not),
    any other family through the transformers class named in the nested `processor_config.json` entry."""
    entry = (processor_dict or {}).get(slot)
    type_key = "image_processor_type" if slot == "image_processor" else "feature_extractor_type"
    name = entry.get(type_key) if isinstance(entry, dict) else None
    if name is None or name == ours.__name__:
        return ours.from_pretrained(path, **kwargs)
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(f"processor_config.json names the {slot} class {name!r}, which transformers does not have")
    return cls.from_dict({key: value for key, value in entry.items() if key not in ("auto_map", type_key)})


class OptTriProcessor(ProcessorMixin):
    r"""Prepare any non-empty subset of text, images and audio for an OPT-Tri model.

    Args:
        image_processor (optional): `OptTriImageProcessor` (the default, `OptTriImageProcessor()`) or the image
            processor of a supported vision family (`IMAGE_FAMILIES`: CLIP, SigLIP, DINOv2's `BitImageProcessor`,
            ViT; PIL or torchvision backend).
        feature_extractor (optional): `OptTriFeatureExtractor` (the default) or the feature extractor of a
            supported audio family (`AUDIO_FAMILIES`: Whisper, AST, `Wav2Vec2FeatureExtractor` for
            wav2vec2 / HuBERT / WavLM).
        tokenizer (`PreTrainedTokenizerBase`): Required, e.g. a `BertTokenizerFast` or a RoBERTa tokenizer.

    Calling the processor returns one `BatchFeature` with the keys of the modalities given:
        - text: `input_ids` int64 `[B, L]`, `attention_mask` int64 `[B, L]` (+ `token_type_ids` if the
          tokenizer returns them). A `None` text row has an all-zero `attention_mask` and `[PAD]` ids.
        - images: `pixel_values` float32 `[B, 3, H, W]` (`H = W = image_size` for ours, the family's crop / resize
          size otherwise), `image_mask` int64 `[B]`; rows without an image are zeros with `image_mask` 0.
        - audio, ours: `input_features` float32 `[B, n_mels, T]`, `audio_attention_mask` int64 `[B, T]`.
        - audio, another family: the family's tensor under `AudioFamily.input_key` (`input_features`: Whisper
          `[B, n_mels, nb_max_frames]`, AST `[B, max_length, num_mel_bins]`; `input_values`: wav2vec2 family
          `[B, N]` samples), `audio_mask` int64 `[B]` (1 where the row has audio), and `audio_attention_mask`
          int64 where the family gives a mask (Whisper `[B, nb_max_frames]` frames; wav2vec2 family `[B, N]`
          samples when its `return_attention_mask` is set; AST gives none). Rows without audio are zeros.

    Saving writes the tokenizer files and one `processor_config.json` holding the image processor and
    feature extractor settings (nested, each with its class name); `OptTriProcessor.from_pretrained(dir)` and
    `AutoProcessor.from_pretrained(dir, trust_remote_code=True)` both load it back, with whichever families it
    holds.
    """

    def __init__(
        self,
        image_processor: ImageProcessingMixin | None = None,
        feature_extractor: FeatureExtractionMixin | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        **kwargs: Any,
    ) -> None:
        if tokenizer is None:
            raise ValueError("OptTriProcessor needs a tokenizer (e.g. a BertTokenizerFast)")
        if image_processor is None:
            image_processor = OptTriImageProcessor()
        if feature_extractor is None:
            feature_extractor = OptTriFeatureExtractor()
        image_family(image_processor)
        audio_family(feature_extractor)
        super().__init__(
            image_processor=image_processor, feature_extractor=feature_extractor, tokenizer=tokenizer, **kwargs
        )

    @classmethod
    def from_unimodal_pretrained(
        cls,
        text: str | os.PathLike | None = None,
        vision: str | os.PathLike | None = None,
        audio: str | os.PathLike | None = None,
        preset: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> OptTriProcessor:
        """Build a processor from the preprocessing of pretrained unimodal checkpoints.

        Each of `text`, `vision` and `audio` is a checkpoint folder (or Hub repo id) of the tower: its tokenizer
        (`AutoTokenizer`), image processor (`AutoImageProcessor`) or feature extractor (`AutoFeatureExtractor`)
        is loaded, so the tower sees its inputs as it was trained. Composite folders (a `CLIPProcessor` /
        `WhisperProcessor` folder) work: the Auto classes read their nested `processor_config.json`.

        Args:
            text, vision, audio: The checkpoints. An omitted one comes from `preset` when given, else ours
                (`OptTriImageProcessor()`, `OptTriFeatureExtractor()`); a tokenizer has no default.
            preset: A saved `OptTriProcessor` folder (e.g. `configuration/tiny`) for the omitted parts.
            **kwargs: Loading options passed to every loader: `cache_dir`, `force_download`, `local_files_only`,
                `token`, `revision`, `trust_remote_code`.

        Raises:
            ValueError: an unknown keyword; no tokenizer (`text` and `preset` both omitted); a path that is not a
                checkpoint folder with the expected files; a family that is not supported (the message lists the
                supported ones).
        """
        unknown = sorted(set(kwargs) - _LOADING_KWARGS)
        if unknown:
            raise ValueError(
                f"from_unimodal_pretrained got unknown arguments {unknown}; it takes {sorted(_LOADING_KWARGS)}"
            )
        base = cls.from_pretrained(preset, **kwargs) if preset is not None else None
        if text is not None:
            tokenizer = _load_unimodal("text", text, AutoTokenizer, _TOKENIZER_FILES, kwargs)
        elif base is not None:
            tokenizer = base.tokenizer
        else:
            raise ValueError("text= is required (a tokenizer checkpoint folder) unless preset= names a saved processor")
        if vision is not None:
            image_processor = _load_unimodal("vision", vision, AutoImageProcessor, _PREPROCESSOR_FILES, kwargs)
        else:
            image_processor = base.image_processor if base is not None else OptTriImageProcessor()
        if audio is not None:
            feature_extractor = _load_unimodal("audio", audio, AutoFeatureExtractor, _PREPROCESSOR_FILES, kwargs)
        else:
            feature_extractor = base.feature_extractor if base is not None else OptTriFeatureExtractor()
        try:
            return cls(image_processor=image_processor, feature_extractor=feature_extractor, tokenizer=tokenizer)
        except ValueError as error:
            described = f"text={text!r}, vision={vision!r}, audio={audio!r}"
            raise ValueError(f"from_unimodal_pretrained({described}): {error}") from None

    @classmethod
    def _get_arguments_from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        processor_dict: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """Load `[image_processor, feature_extractor, tokenizer]` from a saved folder or Hub repo.

        Used by the transformers versions whose `ProcessorMixin.from_pretrained` calls it (newer ones resolve the
        nested `processor_config.json` entries through the Auto classes themselves). Our own sub-processors are
        loaded with this module's classes, which works whether or not they are registered with the Auto classes;
        other families through the transformers class their nested entry names. The tokenizer uses `AutoTokenizer`.
        """
        kwargs = dict(kwargs)
        kwargs.pop("trust_remote_code", None)
        kwargs.pop("_from_auto", None)
        subfolder = kwargs.pop("subfolder", "")
        if processor_dict is None:
            config_file = os.path.join(os.fspath(pretrained_model_name_or_path), subfolder, "processor_config.json")
            if os.path.isfile(config_file):
                with open(config_file, encoding="utf-8") as handle:
                    processor_dict = json.load(handle)
        path = pretrained_model_name_or_path
        image_processor = _sub_processor_from_dict(
            "image_processor", OptTriImageProcessor, path, processor_dict, subfolder=subfolder, **kwargs
        )
        feature_extractor = _sub_processor_from_dict(
            "feature_extractor", OptTriFeatureExtractor, path, processor_dict, subfolder=subfolder, **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        return [image_processor, feature_extractor, tokenizer]

    @property
    def model_input_names(self) -> list[str]:
        """Every key `__call__` can return: the tokenizer's, then image, then audio inputs."""
        names = list(self.tokenizer.model_input_names) + ["pixel_values", "image_mask"]
        family = audio_family(self.feature_extractor)
        names.append(family.input_key)
        if family is not AUDIO_FAMILIES["OptTriFeatureExtractor"]:
            names.append("audio_mask")
        if _gives_audio_attention_mask(self.feature_extractor):
            names.append("audio_attention_mask")
        return list(dict.fromkeys(names))

    def _family_images(self, images: Any, input_data_format: Any) -> dict[str, np.ndarray]:
        """`pixel_values` `[B, 3, H, W]` and `image_mask` `[B]` from another family's image processor.

        The images of the rows that have one go through the family's processor in one call, exactly as the family
        would process them alone; rows without an image (`None`) are zeros with `image_mask` 0.
        """
        batch = OptTriImageProcessor._as_list(images)
        if not batch:
            raise ValueError("images is an empty list; pass at least one image (or None for a row without an image)")
        present = [row for row, image in enumerate(batch) if image is not None]
        options = {} if input_data_format is None else {"input_data_format": input_data_format}
        probe = [batch[row] for row in present] or [np.zeros((8, 8, 3), dtype=np.uint8)]  # shape of an all-None batch
        try:
            pixels = np.asarray(self.image_processor(probe, return_tensors="np", **options)["pixel_values"])
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"images: {type(self.image_processor).__name__} rejected the input: {error}. Images reach it as given; "
                "if they are not RGB (and it does not convert them), convert them first, e.g. with "
                "image_processing_opt_tri.to_rgb"
            ) from error
        if not present:
            pixels = np.zeros_like(pixels)[:0]
        output = np.zeros((len(batch),) + pixels.shape[1:], dtype=np.float32)
        output[present] = pixels
        mask = np.zeros(len(batch), dtype=np.int64)
        mask[present] = 1
        return {"pixel_values": output, "image_mask": mask}

    def _family_clips(self, audio: Any, sampling_rate: int) -> list[np.ndarray | None]:
        """Validate each clip (as `OptTriFeatureExtractor` does) and resample it to the family's rate, only as much
        of it as the family keeps (`_kept_samples`); `None` rows stay `None`."""
        batch = OptTriFeatureExtractor._as_list(audio)
        if not batch:
            raise ValueError("audio is an empty list; pass at least one clip (or None for a row without audio)")
        rate = int(self.feature_extractor.sampling_rate)
        return clips_at_rate(batch, sampling_rate, rate, _kept_samples(self.feature_extractor))[0]

    def _family_audio(self, audio: Any, sampling_rate: int) -> dict[str, np.ndarray]:
        """The tower input, `audio_mask` and (where the family gives one) `audio_attention_mask` from another
        family's feature extractor, called once on the clips of the rows that have audio at the family's rate."""
        family = audio_family(self.feature_extractor)
        clips = self._family_clips(audio, sampling_rate)
        present = [row for row, clip in enumerate(clips) if clip is not None]
        rate = int(self.feature_extractor.sampling_rate)
        probe = [clips[row] for row in present] or [np.zeros(rate // 10, dtype=np.float32)]  # all-None: shapes only
        features = self.feature_extractor(
            probe, sampling_rate=rate, return_tensors="np", **dict(family.call_kwargs)
        )
        rows = np.zeros(len(clips), dtype=np.int64)
        rows[present] = 1
        output = {"audio_mask": rows}
        for source, key, dtype in ((family.source_key, family.input_key, np.float32),
                                   ("attention_mask", "audio_attention_mask", np.int64)):
            if source in features:
                values = np.asarray(features[source])
                full = np.zeros((len(clips),) + values.shape[1:], dtype=dtype)
                if present:
                    full[present] = values
                output[key] = full
        return output

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
            images: One image or a list (`None` entries: rows without an image); see `OptTriImageProcessor`, or
                the family's image processor, which gets the images of the other rows as given.
            audio: One clip or a list of clips (`None` entries: rows without audio); see
                `OptTriFeatureExtractor`. Clips are validated and scaled the same way for every family.
            sampling_rate: Rate of `audio` in Hz; required when `audio` is given. Clips at another rate than the
                feature extractor's are resampled to it (`feature_extraction_opt_tri.resample`).
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
            if image_family(self.image_processor) == "OptTriImageProcessor":
                image_features = self.image_processor(images, return_tensors=None, input_data_format=input_data_format)
            else:
                image_features = self._family_images(images, input_data_format)
            sizes["images"] = int(image_features["image_mask"].shape[0])
            data.update(image_features)
        if audio is not None:
            if audio_family(self.feature_extractor) is AUDIO_FAMILIES["OptTriFeatureExtractor"]:
                audio_features = self.feature_extractor(audio, sampling_rate=sampling_rate, return_tensors=None)
                sizes["audio"] = int(audio_features["audio_attention_mask"].shape[0])
            else:
                audio_features = self._family_audio(audio, check_sampling_rate(sampling_rate))
                sizes["audio"] = int(audio_features["audio_mask"].shape[0])
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

__all__ = ["AUDIO_FAMILIES", "IMAGE_FAMILIES", "AudioFamily", "OptTriProcessor", "audio_family", "image_family"]
