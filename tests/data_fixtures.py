"""Small tri-modal datasets of real FSDD speech for the data-format tests (built in a test's tmp folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = ((220, 30, 30), (30, 160, 30), (30, 30, 220), (200, 200, 30), (200, 30, 200))


def fsdd_recordings(fsdd: Path, count: int, offset: int = 0) -> list[Path]:
    """`count` FSDD recordings, spread over digits and speakers (deterministic)."""
    recordings = sorted((fsdd / "recordings").glob("*.wav"))
    step = max(1, len(recordings) // (count + offset))
    return recordings[offset * step :: step][:count]


def fsdd_folder(root: Path, fsdd: Path, count: int, modalities: tuple[str, ...] = ("text", "image", "audio"),
                offset: int = 0, caption: str = "the digit {digit} spoken by {speaker}") -> Path:
    """A metadata folder of `count` rows: a caption naming the spoken digit, a PNG and the FSDD WAV (symlinked)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "media").mkdir(exist_ok=True)
    rows = []
    for i, wav in enumerate(fsdd_recordings(fsdd, count, offset)):
        digit, speaker, _ = wav.stem.split("_")
        row = {"id": f"{root.name}-{i}"}
        if "text" in modalities:
            row["text"] = caption.format(digit=DIGITS[int(digit)], speaker=speaker)
        if "image" in modalities:
            pixels = np.zeros((16, 16, 3), dtype=np.uint8) + np.asarray(COLOURS[int(digit) % len(COLOURS)], np.uint8)
            pixels[: 2 + int(digit), :4] = 255
            Image.fromarray(pixels).save(root / "media" / f"{i}.png")
            row["image"] = f"media/{i}.png"
        if "audio" in modalities:
            link = root / "media" / f"{i}.wav"
            if not link.exists():
                os.symlink(wav, link)
            row["audio"] = f"media/{i}.wav"
        rows.append(row)
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root
