"""Load a local tri-modal folder described by ``metadata.jsonl``.

This follows the ``imagefolder``/``audiofolder`` convention of ``datasets``. A folder holds a
``metadata.jsonl`` file, one JSON object per line, with the optional keys:

* ``text`` -- a string;
* ``image`` -- a path to an image file, relative to the folder;
* ``audio`` -- a path to an audio file, relative to the folder;
* any other keys, kept as extra columns.

For compatibility, ``image_file_name``/``audio_file_name`` are accepted as aliases of
``image``/``audio``. A plain ``file_name`` goes to ``image`` or ``audio`` by its extension.

Any key may be missing from a row; it becomes ``None`` (so does an empty or blank ``text``,
``image`` or ``audio`` string). Every row needs at least one of text,
image or audio. Paths are made absolute here and are not opened: ``decoding.py`` decodes them
at training time, so a corrupt file costs one skipped row and does not stop the load.
Absolute paths in the metadata are allowed only if they point inside the folder. A path is
checked lexically (``..`` may not climb out of the folder). Symbolic links inside the folder are
followed without checks, so a data directory can be symlinked in.

Split layout: ``root/train/metadata.jsonl``, ``root/validation/metadata.jsonl``, ... are loaded
by :func:`load_metadata_folder_dict`, or one at a time by ``load_metadata_folder(root, split=...)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["METADATA_FILENAME", "load_metadata_folder", "load_metadata_folder_dict"]

METADATA_FILENAME = "metadata.jsonl"
MODALITY_COLUMNS: tuple[str, str, str] = ("text", "image", "audio")
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".ico"}
)
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64"})
_ALIASES = {"image_file_name": "image", "audio_file_name": "audio"}


def _resolve_media_path(root: Path, value: Any, column: str, location: str) -> str | None:
    """Absolute path of a media reference, or ``None``; refuses paths that leave ``root``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{location}: column {column!r} must be a relative path string, got {type(value).__name__}")
    if not value.strip():
        return None
    candidate = Path(value)
    joined = candidate if candidate.is_absolute() else root / candidate
    normalised = Path(os.path.normpath(joined))
    if normalised != root and root not in normalised.parents:
        raise ValueError(f"{location}: {column} path {value!r} escapes the dataset folder {str(root)!r}")
    return str(normalised)


def _metadata_file(path: str | os.PathLike[str], split: str | None) -> Path:
    """Locate the metadata file of ``path`` (optionally the ``split`` sub-folder)."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"dataset path {str(root)!r} is not a folder")
    if split is not None:
        split_file = root / split / METADATA_FILENAME
        if split_file.is_file():
            return split_file
        if (root / METADATA_FILENAME).is_file() and split == "train":
            return root / METADATA_FILENAME
        raise FileNotFoundError(f"no {METADATA_FILENAME} for split {split!r}: expected {str(split_file)!r}")
    top = root / METADATA_FILENAME
    if top.is_file():
        return top
    splits = _split_names(root)
    if splits:
        raise FileNotFoundError(
            f"no {METADATA_FILENAME} in {str(root)!r}; it has split sub-folders {splits}: pass split=... "
            "or use load_metadata_folder_dict"
        )
    raise FileNotFoundError(f"no {METADATA_FILENAME} in dataset folder {str(root)!r}")


def _split_names(root: Path) -> list[str]:
    """Names of the sub-folders of ``root`` that contain a metadata file, train/validation/test first."""
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / METADATA_FILENAME).is_file())
    preferred = [name for name in ("train", "validation", "test") if name in found]
    return preferred + [name for name in found if name not in preferred]


def _read_rows(metadata: Path) -> list[dict[str, Any]]:
    """Parse and validate every line of ``metadata``; media paths are made absolute."""
    root = Path(os.path.normpath(metadata.parent.absolute()))
    rows: list[dict[str, Any]] = []
    with metadata.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            location = f"{metadata}:{line_number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{location}: line {line_number} is not valid UTF-8 ({err.reason} at byte {err.start})") from err
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{location}: line {line_number} is not valid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise ValueError(f"{location}: line {line_number} must be a JSON object, got {type(record).__name__}")
            for alias, column in _ALIASES.items():
                if alias in record and record.get(column) is None:
                    record[column] = record.pop(alias)
            if "file_name" in record:
                suffix = Path(str(record["file_name"])).suffix.lower()
                target = "image" if suffix in IMAGE_EXTENSIONS else "audio" if suffix in AUDIO_EXTENSIONS else None
                if target is None:
                    raise ValueError(
                        f"{location}: cannot tell whether file_name {record['file_name']!r} is an image or audio; "
                        "use the 'image' or 'audio' key"
                    )
                if record.get(target) is None:
                    record[target] = record.pop("file_name")
            text = record.get("text")
            if text is not None and not isinstance(text, str):
                raise ValueError(f"{location}: column 'text' must be a string, got {type(text).__name__}")
            record["image"] = _resolve_media_path(root, record.get("image"), "image", location)
            record["audio"] = _resolve_media_path(root, record.get("audio"), "audio", location)
            if text is not None and not text.strip():
                record["text"] = None
            if all(record.get(column) is None for column in MODALITY_COLUMNS):
                raise ValueError(f"{location}: row has none of 'text', 'image' or 'audio'")
            rows.append(record)
    if not rows:
        raise ValueError(f"{metadata} contains no rows")
    return rows


def load_metadata_folder(path: str | os.PathLike[str], split: str | None = None) -> Any:
    """Load a ``metadata.jsonl`` folder as a ``datasets.Dataset``.

    Args:
        path: The dataset folder.
        split: If given, load ``path/<split>/metadata.jsonl``. If that is missing and the split is
            ``"train"``, a top-level ``path/metadata.jsonl`` is used. Otherwise load
            ``path/metadata.jsonl``.

    Returns:
        A ``Dataset`` whose first columns are ``text``, ``image`` and ``audio`` (strings, ``None``
        when missing; ``image``/``audio`` hold absolute paths), followed by the extra columns in
        first-seen order (``None`` where a row lacks them).

    Raises:
        FileNotFoundError: The folder or its metadata file does not exist.
        ValueError: A line is not valid JSON or not an object (the line number is named), a row
            has no modality, a media path escapes the folder, or an extra column mixes types.
    """
    import datasets
    import pyarrow as pa

    metadata = _metadata_file(path, split)
    rows = _read_rows(metadata)
    columns: list[str] = list(MODALITY_COLUMNS)
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    data = {column: [row.get(column) for row in rows] for column in columns}
    features = {column: datasets.Value("string") for column in MODALITY_COLUMNS}
    for column in columns[len(MODALITY_COLUMNS) :]:
        try:
            array = pa.array(data[column])
            features[column] = datasets.Features.from_arrow_schema(pa.schema([pa.field(column, array.type)]))[column]
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
            raise ValueError(f"{metadata}: column {column!r} mixes incompatible value types ({err})") from err
    split_name = datasets.NamedSplit(split) if split is not None else None
    return datasets.Dataset.from_dict(data, features=datasets.Features(features), split=split_name)


def load_metadata_folder_dict(path: str | os.PathLike[str]) -> Any:
    """Load every split of a folder as a ``datasets.DatasetDict``.

    Each sub-folder holding a ``metadata.jsonl`` (e.g. ``train``, ``validation``, ``test``) becomes
    a split of that name. If there are none, a top-level ``metadata.jsonl`` becomes ``train``.
    """
    import datasets

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"dataset path {str(root)!r} is not a folder")
    splits = _split_names(root)
    if splits:
        return datasets.DatasetDict({name: load_metadata_folder(root, split=name) for name in splits})
    if (root / METADATA_FILENAME).is_file():
        return datasets.DatasetDict({"train": load_metadata_folder(root)})
    raise FileNotFoundError(
        f"no {METADATA_FILENAME} in dataset folder {str(root)!r} nor in any of its sub-folders"
    )
