"""Training data from the formats the ecosystem uses, one source or a weighted mixture of several.

A *source* is one of:

* ``builtin`` -- the procedurally generated ShapeWorld dataset;
* a metadata folder (``metadata.jsonl`` at the top or in ``train/``, ``validation/``, ... sub-folders);
* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* anything ``datasets.load_dataset`` reads: a folder or file of parquet / arrow / json / csv files, a folder of
  WebDataset ``.tar`` shards (``datasets``' ``webdataset`` builder), or a dataset name.

Every source is brought to the columns ``text`` (string), ``image`` and ``audio`` (the stored ``{"bytes", "path"}``
of ``Image(decode=False)`` / ``Audio(decode=False)``, decoded later by ``decoding.py``, so ``torchcodec`` is never
needed). The column each comes from is the source's column mapping (``--text_column caption`` or, per source,
``--text_column coco:caption,clotho:description``; ``none`` leaves a modality out). A missing column means the
source lacks that modality.

A mixture (``--dataset coco=0.5,clotho=0.3,triples=0.2``) is combined row by row with
``datasets.interleave_datasets`` (the weights are its probabilities) and gains a ``source`` column.

Evaluation never uses training rows: a source's evaluation rows are its evaluation split when it has one, or else a
deterministic held-out fraction of its training split (``--eval_holdout_fraction``). A row is held out by a keyed
hash of its content, so the choice does not depend on the row order, the number of processes or streaming, and
duplicate rows fall on the same side.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

MODALITIES: tuple[str, str, str] = ("text", "image", "audio")
SOURCE_COLUMN = "source"
#: why a row of WebDataset shards is corrupt ("" when it is not): a member that does not decode
CORRUPT_COLUMN = "__corrupt__"
#: Column names tried, in order, when a modality's column is not given and the default (its own name) is missing:
#: the member extensions of WebDataset shards and common caption columns.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "text": ("txt", "caption", "captions", "sentence", "transcript"),
    "image": ("jpg", "jpeg", "png", "webp", "img"),
    "audio": ("wav", "flac", "mp3", "ogg"),
}
_HOLDOUT_KEY = b"opt-tri-holdout"


@dataclass
class Source:
    """One training source: where it is, its mixture weight and its column mapping (`None` = modality off)."""

    path: str
    name: str
    weight: float = 1.0
    columns: dict[str, str | None] = field(default_factory=dict)
    explicit: frozenset[str] = frozenset()  # modalities whose column the user named


def _parse_column_flag(value: str | None, names: list[str], flag: str) -> tuple[str | None, dict[str, str]]:
    """`'caption'` -> ('caption', {}); `'coco:caption,clotho:description'` -> (None, {...}); checks source names."""
    if not value:
        return None, {}
    default, per_source = None, {}
    for item in value.split(","):
        item = item.strip()
        if ":" in item:
            name, _, column = item.partition(":")
            if name not in names:
                raise ValueError(f"--{flag} {value!r}: no source named {name!r}; the sources are {names}")
            per_source[name] = column
        elif default is None:
            default = item
        else:
            raise ValueError(f"--{flag} {value!r}: give one column for every source, or SOURCE:COLUMN pairs")
    return default, per_source


def _source_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path)) or path
    return base.split(".")[0] if not os.path.isdir(path) else base


def parse_sources(
    dataset: str, text_column: str | None = None, image_column: str | None = None, audio_column: str | None = None
) -> list[Source]:
    """
    Parse `--dataset` (`PATH`, or `PATH=WEIGHT,PATH=WEIGHT,...`) and the column flags into `Source`s.

    A source is named after its folder or file (`data/coco` -> `coco`); the names must be unique. Weights are
    positive numbers, normalised to sum to 1. A folder's own `metadata.jsonl` stands for the folder (its file paths
    are relative to the folder; read as a plain JSON-lines file, every row would be corrupt).
    """
    if not dataset or not dataset.strip():
        raise ValueError("--dataset is empty: give 'builtin', a folder, a file or a dataset name")
    sources = []
    for item in dataset.split(","):
        item = item.strip()
        path, weight = item, 1.0
        head, sep, tail = item.rpartition("=")
        if sep:
            try:
                path, weight = head, float(tail)
            except ValueError:
                raise ValueError(f"--dataset {dataset!r}: the weight of {head!r} is {tail!r}, not a number") from None
            if not weight > 0:
                raise ValueError(f"--dataset {dataset!r}: the weight of {head!r} must be positive, got {tail}")
        if Path(path).name == "metadata.jsonl" and Path(path).is_file():
            path = str(Path(path).parent)  # the folder's file: its image/audio paths are relative to the folder
        sources.append(Source(path=path, name=_source_name(path), weight=weight))
    names = [source.name for source in sources]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"--dataset {dataset!r}: several sources are named {duplicates}; rename their folders")
    if len(sources) > 1 and any(source.path == "builtin" for source in sources):
        raise ValueError("--dataset: 'builtin' cannot be mixed; export it first with processing/export_builtin.py")
    total = sum(source.weight for source in sources)
    flags = {"text": text_column, "image": image_column, "audio": audio_column}
    for modality, value in flags.items():
        default, per_source = _parse_column_flag(value, names, f"{modality}_column")
        for source in sources:
            column = per_source.get(source.name, default)
            if column is not None:
                source.columns[modality] = None if column.lower() == "none" else column
                source.explicit = source.explicit | {modality}
    for source in sources:
        source.weight /= total
    return sources


# ----------------------------------------------------------------------------------------------------- loading
_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv",
                  ".tar": "webdataset"}


def _load_dataset(source: Source, dataset_config: str | None, **kwargs):
    """
    `datasets.load_dataset` for a name, a folder, or a single data file (its builder chosen by extension). WebDataset
    shards are read by `datasets`' builder with every member decoded by us (a corrupt one is a corrupt row,
    see `_decode_members`); a map-style load of them is written from the stream with the audio as the stored
    struct: the `webdataset` builder would encode every `Audio()` value, which needs torchcodec.
    """
    import datasets

    path = Path(source.path)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"--dataset {source.path!r}: cannot tell the format of a {path.suffix!r} file; "
                             f"use one of {sorted(_FILE_BUILDERS)} or a folder")
        args, kwargs = (builder,), {**kwargs, "data_files": {"train": str(path)}}
    else:
        args = (source.path, dataset_config)
    builder = datasets.load_dataset_builder(*args, **{k: v for k, v in kwargs.items() if k not in ("split", "streaming")})
    if not isinstance(builder, _webdataset_builder_class()):
        return datasets.load_dataset(*args, **kwargs)
    builder.__class__ = _checked_webdataset_class()  # our text decoding, for this builder only
    stream = builder.as_streaming_dataset(split=kwargs.get("split"))
    if kwargs.get("streaming") or "split" not in kwargs:
        return stream
    # map-style: written from the stream (the builder would encode every `Audio()` value, which needs torchcodec)
    audio = [name for name, feature in (stream.features or {}).items() if isinstance(feature, datasets.Audio)]
    for name in audio:
        stream = stream.cast_column(name, media_feature())
    try:
        return datasets.Dataset.from_generator(_rows_of, features=stream.features, gen_kwargs={"stream": stream},
                                               split=datasets.NamedSplit(kwargs["split"]))
    except datasets.exceptions.DatasetGenerationError as error:  # the refusal itself, not `datasets`' wrapper
        if isinstance(error.__cause__, PickleMemberError):
            raise error.__cause__ from None
        raise


def _webdataset_builder_class():
    from datasets.packaged_modules.webdataset.webdataset import WebDataset

    return WebDataset


#: WebDataset member extensions that are pickles (`datasets` leaves `.pyd` / `.pickle` as bytes and loads `.pth` with
#: `torch.load`): OPT-Tri never unpickles data, so a shard holding one is refused with `PickleMemberError`
PICKLE_MEMBER_EXTENSIONS = frozenset({"pyd", "pickle", "pkl", "pth"})


class PickleMemberError(ValueError):
    """A WebDataset shard holds a pickled member: it is never unpickled (data, like weights, never loads through
    pickle)."""


def _member_extension(field_name: str) -> str:
    """The extension that picks a member's decoder: `txt` for `txt`, `json` for `meta.json.gz`."""
    from datasets.filesystems import EXTENSION_TO_COMPRESSION_FS_FILE_CLS as compressions

    parts = field_name.lower().split(".")
    return parts[-2] if len(parts) > 1 and f".{parts[-1]}" in compressions else parts[-1]


def _decode_members(example: dict[str, Any], decoders: dict[str, Any]) -> dict[str, Any]:
    """
    Decode the members of one WebDataset sample with `decoders` (the builder's stock decoders: text, JSON, `.cls`
    integers, `.npy` / `.npz`, msgpack, CBOR, tenbin). A member that does not decode is set to `None` and named in
    the sample's `CORRUPT_COLUMN`, so the collator skips and counts the row instead of the stream stopping.

    Raises:
        PickleMemberError: the sample has a pickle member (`PICKLE_MEMBER_EXTENSIONS`).
    """
    problems = []
    where = os.path.basename(str(example.get("__url__", "")))
    for field_name, value in example.items():
        extension = _member_extension(field_name)
        if extension in PICKLE_MEMBER_EXTENSIONS:
            raise PickleMemberError(
                f"member {example.get('__key__')}.{field_name} of {where} is a pickle: OPT-Tri never unpickles data "
                "(a pickle can run any code). Write it as .json, .npy or .safetensors, or leave it out of the shards")
        if extension in decoders and isinstance(value, bytes):
            try:
                example[field_name] = decoders[extension](value)
            except ImportError:  # a missing package (msgpack, cbor) is the environment's fault, not the row's
                raise
            except Exception as error:  # noqa: BLE001 -- any decoder's failure on these bytes makes the row corrupt
                example[field_name] = None
                problems.append(f"member {example.get('__key__')}.{field_name} of {where} does not decode "
                                f"({type(error).__name__}: {error})")
    example[CORRUPT_COLUMN] = "; ".join(problems)
    return example


def _checked_webdataset_class():
    """`datasets`' WebDataset builder whose members are decoded by `_decode_members` (the builder's own decoders,
    which raise and stop the stream at the first corrupt member, run there with the failure caught)."""
    if "class" not in _CHECKED_WEBDATASET:
        base = _webdataset_builder_class()

        class CheckedWebDataset(base):
            STOCK_DECODERS = {k: v for k, v in base.DECODERS.items() if k not in PICKLE_MEMBER_EXTENSIONS}
            DECODERS: dict[str, Any] = {}  # the base class decodes nothing; `_decode_members` decodes every member

            def _split_generators(self, dl_manager):
                import datasets

                splits = super()._split_generators(dl_manager)  # infers the features unless a README declares them
                self.info.features[CORRUPT_COLUMN] = datasets.Value("string")
                return splits

            @classmethod
            def _get_pipeline_from_tar(cls, tar_path, tar_iterator):
                for example in super()._get_pipeline_from_tar(tar_path, tar_iterator):
                    yield _decode_members(example, cls.STOCK_DECODERS)

        CheckedWebDataset.__module__, CheckedWebDataset.__qualname__ = __name__, "_CheckedWebDataset"
        _CHECKED_WEBDATASET["class"] = CheckedWebDataset
    return _CHECKED_WEBDATASET["class"]


_CHECKED_WEBDATASET: dict[str, type] = {}  # built on first use: `datasets` is imported lazily


def __getattr__(name: str):  # pickle finds the builder class of a stream by this name, in any process
    if name == "_CheckedWebDataset":
        return _checked_webdataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _rows_of(stream):
    yield from stream


def _is_saved_to_disk(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _is_metadata_folder(path: Path) -> bool:
    from .folder import METADATA_FILENAME, _split_names

    return path.is_dir() and ((path / METADATA_FILENAME).is_file() or bool(_split_names(path)))


def split_names(source: Source, dataset_config: str | None = None) -> list[str]:
    """The splits a source has (a source without named splits has `train` only)."""
    from .folder import _split_names

    path = Path(source.path)
    if source.path == "builtin":
        return ["train", "validation", "test"]
    if _is_metadata_folder(path):
        return _split_names(path) or ["train"]
    if _is_saved_to_disk(path):
        import datasets

        loaded = datasets.load_from_disk(str(path))
        return list(loaded.keys()) if isinstance(loaded, datasets.DatasetDict) else ["train"]
    return list(_load_dataset(source, dataset_config, streaming=True).keys())


def load_raw_split(source: Source, split: str, streaming: bool, dataset_config: str | None = None,
                   builtin_rows: int = 0, seed: int = 0):
    """One split of a source as `datasets` loads it (columns not yet mapped)."""
    import datasets

    from .folder import load_metadata_folder
    from .synthetic import build_synthetic_dataset, build_synthetic_iterable_dataset

    path = Path(source.path)
    if source.path == "builtin":
        if streaming:
            return build_synthetic_iterable_dataset(num_rows=builtin_rows, seed=seed, split=split)
        return build_synthetic_dataset(builtin_rows, seed=seed, split=split)
    if split not in split_names(source, dataset_config):
        raise ValueError(f"source {source.name!r} ({source.path}) has no split {split!r}; "
                         f"it has {split_names(source, dataset_config)}")
    if _is_metadata_folder(path):
        data = load_metadata_folder(path, split=split if (path / split).is_dir() else None)
    elif _is_saved_to_disk(path):
        data = datasets.load_from_disk(str(path))
        data = data[split] if isinstance(data, datasets.DatasetDict) else data
    else:
        return _load_dataset(source, dataset_config, split=split, streaming=streaming)
    return data.to_iterable_dataset(num_shards=min(8, max(1, len(data)))) if streaming else data


def _column_for(source: Source, modality: str, columns: list[str]) -> str | None:
    """The column a modality is read from (None: the source lacks it)."""
    if modality in source.columns:
        column = source.columns[modality]
        if column is not None and column not in columns:
            raise ValueError(f"--{modality}_column: source {source.name!r} ({source.path}) has no column {column!r}; "
                             f"its columns are {columns}")
        return column
    if modality in columns:
        return modality
    alias = next((alias for alias in COLUMN_ALIASES[modality] if alias in columns), None)
    if alias is not None:
        logger.info(f"source {source.name!r}: {modality} read from column {alias!r} (--{modality}_column to change it)")
    return alias


def media_feature() -> dict[str, Any]:
    """The stored form of an image or audio value: `{"bytes": binary, "path": string}`, as `Image(decode=False)` /
    `Audio(decode=False)` store it, but a plain struct: `datasets` then never encodes it (encoding an `Audio()` value,
    which a streaming dataset does for every row, needs torchcodec)."""
    import datasets

    return {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}


def _store_media_undecoded(data, modalities: list[str]):  # column names
    """Bring `Image()` / `Audio()` columns, path strings and raw bytes to `media_feature()`; other forms are kept."""
    import datasets

    wrap = []
    for modality in modalities:
        feature = data.features[modality]
        if isinstance(feature, (datasets.Image, datasets.Audio)) or (
            isinstance(feature, dict) and set(feature) == {"bytes", "path"}
        ):
            data = data.cast_column(modality, media_feature())
        elif feature in (datasets.Value("string"), datasets.Value("large_string"), datasets.Value("binary")):
            wrap.append(modality)
    if not wrap:
        return data
    features = datasets.Features({**data.features, **{m: media_feature() for m in wrap}})

    def to_media(row):
        return {m: None if row[m] is None else {"bytes": row[m], "path": None} if isinstance(row[m], bytes)
                else {"bytes": None, "path": row[m]} for m in wrap}

    return data.map(to_media, features=features)


def conform(data, source: Source, mixture: bool = False):
    """
    Rename the mapped columns to `text` / `image` / `audio` and store media undecoded (`media_feature()`). With
    `mixture`, keep only those three columns (a missing one becomes all-`None`) and add
    the `source` column, so that every source of a mixture has the same features. Other columns are kept otherwise.
    """
    import datasets

    if source.path == "builtin":
        return data
    features = data.features
    if features is None:  # an IterableDataset whose features are unknown until read
        data = data._resolve_features()
        features = data.features
    columns = list(features)
    chosen = {modality: _column_for(source, modality, columns) for modality in MODALITIES}
    if not any(chosen.values()):
        raise ValueError(f"source {source.name!r} ({source.path}) has none of the columns text / image / audio "
                         f"(its columns are {columns}); name them with --text_column / --image_column / --audio_column")
    # undecoded first: renaming a streaming dataset's Audio() column would encode it (torchcodec)
    data = _store_media_undecoded(data, [chosen[m] for m in ("image", "audio") if chosen[m]])
    clashes = [m for m in MODALITIES if m in columns and chosen[m] != m]
    data = data.remove_columns(clashes) if clashes else data
    renames = {column: m for m, column in chosen.items() if column is not None and column != m}
    data = data.rename_columns(renames) if renames else data
    if chosen["text"] and data.features["text"] != datasets.Value("string"):
        raise ValueError(f"source {source.name!r}: the text column {chosen['text']!r} holds "
                         f"{data.features['text']}, not strings")
    if not mixture:
        return data
    target = datasets.Features({"text": datasets.Value("string"), "image": media_feature(), "audio": media_feature(),
                                SOURCE_COLUMN: datasets.Value("string"), CORRUPT_COLUMN: datasets.Value("string")})
    flagged = CORRUPT_COLUMN in data.features
    data = data.select_columns([m for m in MODALITIES if chosen[m]] + ([CORRUPT_COLUMN] if flagged else []))
    missing = {m: None for m in MODALITIES if not chosen[m]} | ({} if flagged else {CORRUPT_COLUMN: ""})
    data = data.map(lambda row: {**missing, SOURCE_COLUMN: source.name}, features=target)
    return data.select_columns(list(target))


# -------------------------------------------------------------------------------------------- evaluation rows
def _media_key(value: Any) -> bytes:
    if value is None:
        return b"\0"
    data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, value)
    if data is not None:
        return bytes(data)
    return os.path.basename(str(path)).encode()  # the file name: the choice survives moving the folder


def is_held_out(row: dict[str, Any], fraction: float) -> bool:
    """Whether `row` belongs to the held-out `fraction` (a keyed hash of its text and of its image and audio: their
    bytes, or the file name of a path)."""
    digest = hashlib.blake2b(key=_HOLDOUT_KEY, digest_size=8)
    for modality in MODALITIES:
        value = row.get(modality)
        digest.update(str(value).encode() if modality == "text" else _media_key(value))
        digest.update(b"\x1f")
    return int.from_bytes(digest.digest(), "little") / 2.0**64 < fraction


def hold_out(data, fraction: float, held_out: bool):
    """The held-out (`held_out=True`) or the remaining rows of a conformed dataset."""
    return data.filter(lambda row: is_held_out(row, fraction) == held_out)


class NoEvaluationSplitError(ValueError):
    """A source has no evaluation split and no held-out fraction was asked for: there is nothing to evaluate on."""


@dataclass
class EvaluationPlan:
    """Where each source's evaluation rows come from: its own split (`fraction` 0) or a held-out fraction."""

    splits: dict[str, str]
    fractions: dict[str, float]

    def name(self) -> str:
        parts = []
        for source, split in self.splits.items():
            fraction = self.fractions[source]
            label = f"{split} (held-out {100 * fraction:.4g}% of its rows)" if fraction else split
            parts.append(label if len(self.splits) == 1 else f"{source}:{label}")
        return ", ".join(parts)


def training_holdout(sources: list[Source], holdout_fraction: float) -> dict[str, float]:
    """
    The fraction of each source's training rows held out for evaluation (`is_held_out`): `holdout_fraction` for every
    source but the built-in one, whose splits are generated apart. The one rule of pre-training and fine-tuning: both
    train on `load_sources(..., holdout=training_holdout(...))` and evaluate on the same rows with `held_out=True`.
    """
    return {source.name: holdout_fraction for source in sources if holdout_fraction and source.path != "builtin"}


def plan_evaluation(sources: list[Source], train_split: str, eval_split: str, holdout_fraction: float,
                    dataset_config: str | None = None) -> EvaluationPlan:
    """
    Decide, per source, which rows evaluation reads. A source with the split `eval_split` is evaluated on it; one
    without it needs `holdout_fraction` > 0 (rows held out of `train_split`, and then never trained on).

    Raises:
        NoEvaluationSplitError: a source has no `eval_split` and `holdout_fraction` is 0.
        ValueError: `eval_split == train_split` without a held-out fraction.
    """
    if eval_split == train_split and not holdout_fraction:
        raise ValueError(f"--eval_split {eval_split!r} is the training split: evaluation would read training rows. "
                         "Name another split, or pass --eval_holdout_fraction 0.05 to hold rows out")
    splits, fractions, holdout = {}, {}, training_holdout(sources, holdout_fraction)
    for source in sources:
        names = split_names(source, dataset_config)
        if source.name in holdout or eval_split not in names:
            if not holdout_fraction:
                raise NoEvaluationSplitError(
                    f"source {source.name!r} ({source.path}) has no {eval_split!r} split (it has {names}), and "
                    "evaluating on training rows would overstate the results: pass --eval_holdout_fraction 0.05 to "
                    "hold out 5% of its training rows, or --eval_split with one of its splits"
                )
            splits[source.name], fractions[source.name] = train_split, holdout_fraction
        else:
            splits[source.name], fractions[source.name] = eval_split, 0.0
    return EvaluationPlan(splits, fractions)


# ---------------------------------------------------------------------------------------------------- mixtures
def mix(parts: list, weights: list[float], seed: int, stopping_strategy: str = "all_exhausted"):
    """Interleave conformed sources row by row (`datasets.interleave_datasets`, probabilities = weights)."""
    import datasets

    if len(parts) == 1:
        return parts[0]
    return datasets.interleave_datasets(parts, probabilities=weights, seed=seed, stopping_strategy=stopping_strategy)


def load_sources(sources: list[Source], split: str | dict[str, str], streaming: bool, *, seed: int,
                 dataset_config: str | None = None, builtin_rows: int = 0,
                 holdout: dict[str, float] | None = None, held_out: bool = False, rank: int = 0, world_size: int = 1,
                 stopping_strategy: str = "all_exhausted", rows_per_source: int | None = None):
    """
    Load, conform, hold out and mix sources. `split` is one split for all or a split per source name; `holdout`
    the held-out fraction per source (rows removed, or with `held_out` the only rows kept). With `world_size` > 1,
    each streaming source is split by node before mixing (`datasets.distributed.split_dataset_by_node`: each
    process reads its own shards when their number divides evenly, else every `world_size`-th row).
    `rows_per_source` (evaluation) keeps the first rows of each source and concatenates the sources instead.
    """
    import datasets

    from datasets.distributed import split_dataset_by_node

    mixture = len(sources) > 1
    parts = []
    for source in sources:
        source_split = split if isinstance(split, str) else split[source.name]
        data = conform(load_raw_split(source, source_split, streaming, dataset_config, builtin_rows, seed), source,
                       mixture)
        fraction = (holdout or {}).get(source.name, 0.0)
        if fraction:
            data = hold_out(data, fraction, held_out)
        if streaming and world_size > 1:
            data = split_dataset_by_node(data, rank=rank, world_size=world_size)
        if rows_per_source is not None:
            data = data.take(rows_per_source) if streaming else data.select(range(min(rows_per_source, len(data))))
        parts.append(data)
    if rows_per_source is not None:
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return mix(parts, [source.weight for source in sources], seed, stopping_strategy)


def text_sample(data, column: str = "text", rows: int = 500) -> list[str]:
    """The texts of the first `rows` rows of a map-style or streaming dataset."""
    from itertools import islice

    if hasattr(data, "__len__"):
        if column not in data.column_names:
            return []
        values: Iterable[Any] = data.select(range(min(rows, len(data))))[column]
    else:
        values = (row.get(column) for row in islice(iter(data.select_columns([column])), rows))
    return [value for value in values if isinstance(value, str) and value.strip()]
