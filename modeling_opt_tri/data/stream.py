"""Batches for pre-training that are decoded in DataLoader workers: streaming plans and mixture batch samplers.

A stream is cut into batches in two stages. The *plan* (cheap: no decoding) buffers raw rows, groups them by
source, sorts each group by length and cuts it into batches; it depends only on the data, the seed and the epoch.
`StreamBatches` runs the plan in every DataLoader worker and lets worker `w` of `W` decode and collate batches
`w, w + W, ...` of it, so the DataLoader (which takes one batch from each worker in turn) yields the plan's batches
in plan order, for any number of workers, while decoding and feature extraction run in the workers with
prefetching. A resumed run skips the first `start` batches of the plan without decoding them.

Batches never mix sources: a batch comes from one source, so its modality subset is that source's, and the losses
of a step belong to one source (the per-source losses of the log). `SourceGroupedBatchSampler` does the same for
map-style mixtures; it lays out batches in blocks of `world_size` from one source, so that all processes train on
the same source at the same step (the model's collectives depend on the modalities present).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .sources import SOURCE_COLUMN


def stream_length(row: dict[str, Any]) -> int:
    """A cheap length of a raw row for grouping: text words + audio frames (10 ms), read from the file header."""
    text = row.get("text")
    audio = row.get("audio")
    length = len(text.split()) if isinstance(text, str) else 0
    if isinstance(audio, dict) and audio.get("array") is not None:
        return length + len(audio["array"]) // 160
    source = audio.get("bytes") or audio.get("path") if isinstance(audio, dict) else audio
    if isinstance(source, (bytes, str)):
        import soundfile

        try:
            info = soundfile.info(io.BytesIO(source) if isinstance(source, bytes) else source)
            length += int(info.frames * 100 / max(info.samplerate, 1))
        except Exception:  # an unreadable file: the collator skips and counts the row when it decodes it
            pass
    return length


def plan_batches(rows: Iterable[dict[str, Any]], batch_size: int, buffer_rows: int, drop_last: bool,
                 seed: int | list[int] = 0) -> Iterator[list[dict[str, Any]]]:
    """
    Cut a row stream into single-source batches: buffer `buffer_rows` rows, group them by `source`, sort each group
    by `stream_length` (longest first) and cut it into `batch_size` batches (`drop_last` drops the shorter ones).
    With several sources in a buffer, the order of its batches is shuffled (seeded by `seed` and the buffer number).
    """
    buffer: list[dict[str, Any]] = []
    flushes = 0

    def flush(chunk: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        groups: dict[Any, list[dict[str, Any]]] = {}
        for row in chunk:
            groups.setdefault(row.get(SOURCE_COLUMN), []).append(row)
        batches = []
        for group in groups.values():
            group.sort(key=stream_length, reverse=True)
            for i in range(0, len(group), batch_size):
                if not drop_last or len(group) - i >= batch_size:
                    batches.append(group[i : i + batch_size])
        if len(groups) > 1:
            order = np.random.default_rng([*np.atleast_1d(seed).tolist(), flushes]).permutation(len(batches))
            batches = [batches[i] for i in order]
        return batches

    for row in rows:
        buffer.append(row)
        if len(buffer) == buffer_rows:
            yield from flush(buffer)
            buffer, flushes = [], flushes + 1
    if buffer:
        yield from flush(buffer)


class StreamBatches(torch.utils.data.IterableDataset):
    """
    The collated batches of one epoch of a streaming dataset, from plan batch `start` on (see the module docstring).

    Args:
        dataset: a `datasets.IterableDataset` (already split by node), or any iterable of row dicts.
        collate: turns a list of rows into a batch (runs in the workers).
        batch_size / buffer_rows / drop_last: see `plan_batches`.
        seed / epoch: the epoch's shuffle (`dataset.shuffle(seed + epoch)`) and plan seed.
        start: the number of plan batches to skip (already trained on).
        shuffle_buffer: rows in the shuffle buffer of `dataset.shuffle`.
    """

    def __init__(self, dataset, collate: Callable, batch_size: int, buffer_rows: int, drop_last: bool, seed: int,
                 epoch: int, start: int = 0, shuffle_buffer: int = 1000):
        super().__init__()
        self.dataset, self.collate = dataset, collate
        self.batch_size, self.buffer_rows, self.drop_last = batch_size, buffer_rows, drop_last
        self.seed, self.epoch, self.start, self.shuffle_buffer = seed, epoch, start, shuffle_buffer

    def _rows(self) -> Iterable[dict[str, Any]]:
        if not hasattr(self.dataset, "shuffle"):
            yield from self.dataset
            return
        shuffled = self.dataset.shuffle(seed=self.seed + self.epoch, buffer_size=self.shuffle_buffer)
        # `iter`, not `__iter__`: inside a DataLoader worker `__iter__` would read only this worker's shards, and
        # every worker must see the whole plan
        for columns in shuffled.iter(batch_size=64):
            names = list(columns)
            yield from (dict(zip(names, values)) for values in zip(*columns.values()))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = plan_batches(self._rows(), self.batch_size, self.buffer_rows, self.drop_last, [self.seed, self.epoch])
        for number, rows in enumerate(plan):
            if number >= self.start and (number - self.start) % workers == worker:
                yield self.collate(rows)


class SourceTaggingCollator:
    """Wrap a collator: the batch also says which source its (single-source) rows come from (`source`)."""

    def __init__(self, collator: Callable):
        self.collator = collator

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(rows)
        batch[SOURCE_COLUMN] = rows[0].get(SOURCE_COLUMN) if rows and isinstance(rows[0], dict) else None
        return batch


class SourceGroupedBatchSampler:
    """
    Length-grouped batches of a map-style mixture that never mix sources, in blocks of `world_size` batches of one
    source (process `r` takes batches `r, r + world_size, ...`, so all processes see the same source at each step).

    Args:
        lengths: per row, as for `LengthGroupedBatchSampler`.
        sources: the source name of every row.
        batch_size, max_tokens, group_by_length, seed: as for `LengthGroupedBatchSampler`.
        world_size: processes; incomplete blocks are dropped when it is above 1.
    """

    def __init__(self, lengths: Sequence, sources: Sequence[str], batch_size: int, max_tokens: int | None = None,
                 group_by_length: bool = True, seed: int = 0, world_size: int = 1):
        from .collate import LengthGroupedBatchSampler

        names = sorted(set(sources))
        self.members = {name: np.flatnonzero(np.asarray(sources) == name) for name in names}
        self.samplers = {
            name: LengthGroupedBatchSampler([lengths[i] for i in rows], batch_size, max_tokens=max_tokens,
                                            group_by_length=group_by_length, seed=seed + k,
                                            drop_last=world_size > 1)
            for k, (name, rows) in enumerate(self.members.items())
        }
        self.seed, self.world_size = seed, world_size

    def batches(self, epoch: int) -> list[list[int]]:
        blocks = []
        for name, sampler in self.samplers.items():
            rows = self.members[name]
            batches = [rows[batch].tolist() for batch in sampler.batches(epoch)]
            usable = len(batches) - len(batches) % self.world_size
            blocks += [batches[i : i + self.world_size] for i in range(0, usable, self.world_size)]
        order = np.random.default_rng([self.seed, epoch, 0x50]).permutation(len(blocks))
        return [batch for i in order for batch in blocks[i]]
