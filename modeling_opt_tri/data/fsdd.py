"""The Free Spoken Digit Dataset (FSDD) as an audio-text dataset with held-out speakers.

FSDD holds `recordings/{digit}_{speaker}_{take}.wav` (8 kHz mono, 6 speakers x 10 digits x 50 takes). Written as a
metadata folder (`train/` and `validation/` splits, each a `metadata.jsonl` with `text` = the digit's name and
`audio` = the recording), it pre-trains and evaluates like any user folder: `--dataset <folder>`, and
`evaluate_retrieval.py --match text` gives class-level (zero-shot digit) retrieval on speakers never heard in
training. The recordings are linked, not copied.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .synthetic import NUMBER_WORDS

#: the text of a recording of digit d: its name
DIGIT_WORDS = tuple(NUMBER_WORDS)
#: the speaker the project holds out of training (benchmarks/init_transfer.py, docs/RECIPE.md)
HELD_OUT_SPEAKER = "yweweler"
_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


def fsdd_recordings(fsdd_dir: str | os.PathLike) -> list[tuple[int, str, int, str]]:
    """`(digit, speaker, take, file name)` of every recording, sorted; a clear error when the folder is not FSDD."""
    recordings = Path(fsdd_dir) / "recordings"
    if not recordings.is_dir():
        raise FileNotFoundError(f"{str(recordings)!r} not found: expected the FSDD folder (with recordings/*.wav)")
    found = []
    for path in sorted(recordings.iterdir()):
        match = _NAME.match(path.name)
        if match:
            found.append((int(match[1]), match[2], int(match[3]), path.name))
    if not found:
        raise ValueError(f"no FSDD recordings ({{digit}}_{{speaker}}_{{take}}.wav) in {str(recordings)!r}")
    return found


def write_fsdd_folder(
    fsdd_dir: str | os.PathLike, output_dir: str | os.PathLike, eval_speakers: tuple[str, ...] = (HELD_OUT_SPEAKER,),
    takes: int | None = None, eval_takes: int | None = None,
) -> dict[str, int]:
    """
    Write `output_dir/{train,validation}/metadata.jsonl`: the `eval_speakers`' recordings are the validation split,
    every other speaker's the train split (`takes` / `eval_takes`: at most that many takes per digit and speaker in
    each; `eval_takes` defaults to `takes`). Each split links `recordings` to FSDD's folder. Returns the rows per split.
    """
    rows = fsdd_recordings(fsdd_dir)
    speakers = sorted({speaker for _, speaker, _, _ in rows})
    unknown = sorted(set(eval_speakers) - set(speakers))
    if unknown or not eval_speakers or set(eval_speakers) == set(speakers):
        raise ValueError(f"eval_speakers must be some, not all, of {speakers}; got {list(eval_speakers)}")
    source = Path(fsdd_dir, "recordings").resolve()
    counts = {}
    for split, limit in (("train", takes), ("validation", takes if eval_takes is None else eval_takes)):
        folder = Path(output_dir, split)
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "recordings"
        if not link.is_symlink() and not link.exists():
            link.symlink_to(source, target_is_directory=True)
        elif link.resolve() != source:
            raise FileExistsError(f"{str(link)!r} exists and is not a link to {str(source)!r}: use another output_dir")
        chosen = [
            (digit, name) for digit, speaker, take, name in rows
            if (speaker in eval_speakers) == (split == "validation") and (limit is None or take < limit)
        ]
        with open(folder / "metadata.jsonl", "w") as handle:
            for digit, name in chosen:
                handle.write(json.dumps({"text": DIGIT_WORDS[digit], "audio": f"recordings/{name}"}) + "\n")
        counts[split] = len(chosen)
    return counts
