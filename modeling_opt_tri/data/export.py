"""Write ShapeWorld rows as a ``metadata.jsonl`` folder (PNG images + WAV audio).

The folder layout is the one :func:`modeling_opt_tri.data.folder.load_metadata_folder` reads::

    out_dir/
      metadata.jsonl        {"id", "text", "image": "images/<id>.png", "audio": "audio/<id>.wav",
                             "question", "answer", "label", "color", "shape", "count"} per line
      images/<id>.png
      audio/<id>.wav        mono, 16-bit PCM by default

This is handy for tests, documentation and as a template for bringing your own data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .folder import METADATA_FILENAME
from .synthetic import ShapeWorld, split_offset

__all__ = ["export_synthetic_folder"]


def export_synthetic_folder(
    out_dir: str | os.PathLike[str],
    num_rows: int,
    seed: int = 0,
    split: str = "train",
    image_size: int = 64,
    sampling_rate: int = 16000,
    max_shapes: int = 3,
    missing_probability: float = 0.0,
    wav_subtype: str = "PCM_16",
    overwrite: bool = False,
) -> Path:
    """Write ``num_rows`` ShapeWorld rows of ``split`` into ``out_dir`` as a metadata folder.

    The rows are the same as those of ``build_synthetic_dataset(num_rows, seed, split, ...)``.

    Args:
        out_dir: Target folder (created if needed). Pass ``root / "train"`` etc. to build a
            split layout for ``load_metadata_folder_dict``.
        num_rows: Number of rows to write.
        seed: World seed.
        split: Split whose row indices are used (train/validation/test never overlap).
        image_size: Image side length in pixels.
        sampling_rate: Audio sampling rate in Hz.
        max_shapes: Largest number of shapes per scene.
        missing_probability: Per row and modality, the probability of leaving out ``text``,
            ``image`` or ``audio`` (at least one modality is always kept). It is drawn from a
            generator seeded by ``seed``, so it is deterministic. Useful for testing missing
            modalities.
        wav_subtype: ``soundfile`` subtype of the WAV files (``"PCM_16"`` or ``"FLOAT"``).
        overwrite: Allow writing into a folder that already has a ``metadata.jsonl``.

    Returns:
        The path of the written ``metadata.jsonl``.
    """
    import soundfile

    if num_rows < 1:
        raise ValueError(f"num_rows must be positive, got {num_rows}")
    if not 0.0 <= missing_probability < 1.0:
        raise ValueError(f"missing_probability must be in [0, 1), got {missing_probability}")
    root = Path(out_dir)
    metadata_path = root / METADATA_FILENAME
    if metadata_path.exists() and not overwrite:
        raise FileExistsError(f"{metadata_path} already exists; pass overwrite=True to replace it")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "audio").mkdir(parents=True, exist_ok=True)

    world = ShapeWorld(seed=seed, image_size=image_size, sampling_rate=sampling_rate, max_shapes=max_shapes)
    drop_rng = np.random.default_rng([seed, 0x5EED])
    offset = split_offset(split)
    temporary = metadata_path.with_suffix(".jsonl.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for i in range(num_rows):
            row = world.sample(offset + i)
            keep = drop_rng.random(3) >= missing_probability
            if not keep.any():
                keep[int(drop_rng.integers(3))] = True
            record: dict[str, object] = {"id": row["id"]}
            if keep[0]:
                record["text"] = row["text"]
            if keep[1]:
                image_rel = f"images/{row['id']}.png"
                row["image"].save(root / image_rel, format="PNG")
                record["image"] = image_rel
            if keep[2]:
                audio_rel = f"audio/{row['id']}.wav"
                soundfile.write(
                    root / audio_rel, row["audio"]["array"], row["audio"]["sampling_rate"], subtype=wav_subtype
                )
                record["audio"] = audio_rel
            record.update(
                question=row["question"],
                answer=row["answer"],
                label=row["label"],
                color=row["color"],
                shape=row["shape"],
                count=row["count"],
            )
            handle.write(json.dumps(record) + "\n")
    os.replace(temporary, metadata_path)
    return metadata_path
