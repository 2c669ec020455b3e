"""Write a tri-modal dataset as WebDataset tar shards or as parquet files with `Image()` / `Audio()` columns.

The input is any source `sources.py` reads (a metadata folder, a `save_to_disk` folder, parquet files, ...), mapped
to `text` / `image` / `audio`. Media are copied as stored (the encoded file bytes), never decoded and re-encoded.

WebDataset: sample `k` of shard `n` is written as the tar members `<k>.txt` (UTF-8 text), `<k>.<ext>` of the image
(`png`, `jpg`, ...) and of the audio (`wav`, `flac`, ...), each present only when the row has that modality. Each
modality keeps one extension (the first row's), which the `webdataset` loader makes its column name. Shards are
named `<split>-00000.tar`, ... so that `datasets.load_dataset(folder)` finds the split, and hold `rows_per_shard`
rows each, so that processes reading them split by node get equal shares. A `README.md` declares the features.

Parquet: `<split>-00000.parquet`, ... with `text` (string), `image` (`datasets.Image()`) and `audio`
(`datasets.Audio()`): the layout of datasets on the Hub, readable by `datasets` without this package.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

from .sources import MODALITIES

__all__ = ["write_parquet", "write_webdataset"]

_IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tiff"}


def _media_bytes(value: Any, kind: str) -> tuple[bytes, str] | None:
    """(encoded bytes, file extension) of a stored image/audio value; None when the row lacks it."""
    if value is None:
        return None
    data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, value)
    if data is None and path:
        data = Path(path).read_bytes()
    if data is None:
        return None
    extension = Path(str(path)).suffix.lower().lstrip(".") if path else ""
    if not extension and kind == "image":
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as img:
                extension = _IMAGE_FORMATS.get(img.format or "", "png")
        except Exception:  # an undecodable image is written as it is: the loader counts it as a corrupt row
            extension = "png"
    return bytes(data), extension or ("png" if kind == "image" else "wav")


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards
    archive.addfile(info, io.BytesIO(data))


def _shard_rows(data, rows_per_shard: int):
    """Yield lists of at most `rows_per_shard` rows."""
    chunk = []
    for row in data:
        chunk.append(row)
        if len(chunk) == rows_per_shard:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_output(output_dir: Path, split: str, pattern: str, overwrite: bool) -> None:
    existing = sorted(output_dir.glob(pattern.format(split=split)))
    if existing and not overwrite:
        raise FileExistsError(f"{output_dir} already holds {len(existing)} {split} file(s) ({existing[0].name}, ...); "
                              "pass --overwrite to replace them")
    for path in existing:
        path.unlink()


def write_webdataset(data, output_dir: str | os.PathLike, split: str = "train", rows_per_shard: int = 1000,
                     overwrite: bool = False) -> list[Path]:
    """Write the `text` / `image` / `audio` rows of `data` as WebDataset shards; return the shard paths."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    _check_output(output, split, "{split}-*.tar", overwrite)
    shards, extensions = [], {}
    key = 0
    for number, rows in enumerate(_shard_rows(data, rows_per_shard)):
        path = output / f"{split}-{number:05d}.tar"
        temporary = path.with_suffix(".tar.tmp")
        with tarfile.open(temporary, "w") as archive:
            for row in rows:
                name = f"{key:09d}"
                key += 1
                if isinstance(row.get("text"), str):
                    _add_member(archive, f"{name}.txt", row["text"].encode("utf-8"))
                for kind in ("image", "audio"):
                    media = _media_bytes(row.get(kind), kind)
                    if media is not None:  # one extension per modality: the loader makes it the column name
                        extension = extensions.setdefault(kind, media[1])
                        _add_member(archive, f"{name}.{extension}", media[0])
        os.replace(temporary, path)
        shards.append(path)
    if not shards:
        raise ValueError("the dataset has no rows to write")
    _write_card(output, extensions)
    return shards


def _write_card(output: Path, extensions: dict[str, str]) -> None:
    """README.md declaring the features: `datasets` then needs no sample of the shards to infer them (its inference
    fails when the first rows lack a modality) and fills a missing member with None."""
    features = [("txt", "string"), *((extensions[k], k) for k in ("image", "audio") if k in extensions),
                ("__key__", "string"), ("__url__", "string")]
    lines = ["---", "dataset_info:", "  features:"]
    for name, dtype in features:
        lines += [f"  - name: {name}", f"    dtype: {dtype}"]
    lines += ["---", "", "WebDataset shards written by OPT-Tri's processing/to_webdataset.py: per sample `<key>.txt`"
              + "".join(f", `<key>.{extensions[k]}`" for k in ("image", "audio") if k in extensions) + ".", ""]
    (output / "README.md").write_text("\n".join(lines))


def write_parquet(data, output_dir: str | os.PathLike, split: str = "train", rows_per_file: int = 10000,
                  overwrite: bool = False) -> list[Path]:
    """Write the `text` / `image` / `audio` rows of `data` as parquet files with `Image()` / `Audio()` columns."""
    import datasets

    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be positive, got {rows_per_file}")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    _check_output(output, split, "{split}-*.parquet", overwrite)
    media = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    stored = datasets.Features({"text": datasets.Value("string"), "image": media, "audio": media})
    files = []
    for number, rows in enumerate(_shard_rows(data, rows_per_file)):
        columns: dict[str, list[Any]] = {modality: [] for modality in MODALITIES}
        for row in rows:
            columns["text"].append(row.get("text") if isinstance(row.get("text"), str) else None)
            for kind in ("image", "audio"):
                found = _media_bytes(row.get(kind), kind)
                columns[kind].append({"bytes": found[0], "path": f"{len(files)}-{len(columns[kind])}.{found[1]}"}
                                     if found else None)
        table = datasets.Dataset.from_dict(columns, features=stored)
        # a cast, not an encode: datasets would need torchcodec to encode Audio() values
        table = table.cast_column("image", datasets.Image()).cast_column("audio", datasets.Audio())
        path = output / f"{split}-{number:05d}.parquet"
        table.to_parquet(str(path))
        files.append(path)
    if not files:
        raise ValueError("the dataset has no rows to write")
    return files
