"""Batching for pre-training: robust decoding + processing of rows, and length-grouped batch sampling.

`TriModalCollator` turns dataset rows (any mix of text / image / audio, any of them missing per row, in any of the
forms `decoding.py` accepts) into model inputs. Rows that fail to decode are skipped and counted in the batch's
`num_skipped_rows`, so a corrupt file never stops a run.

`LengthGroupedBatchSampler` implements UNITER-style dynamic batching: rows are shuffled, cut into mega-batches,
sorted by length inside each mega-batch and batched either by a fixed number of rows or by a token budget, so that
padding stays small. The order depends only on `(seed, epoch)`, which makes the data position resumable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

from ..feature_extraction_opt_tri import resample
from .decoding import MAX_IMAGE_PIXELS, CorruptSampleError, audio_duration, decode_audio, decode_image
from .sources import CORRUPT_COLUMN

logger = logging.get_logger(__name__)


@dataclass
class DecodedRows:
    """What `TriModalCollator.decode_rows` made of a list of rows: per decoded row its text (`str` or None), image
    (PIL or None) and waveform (`np.ndarray` at the processor's rate, or None), its position in the input list, and
    one reason per skipped row."""

    texts: list[str | None]
    images: list[Any]
    audios: list[np.ndarray | None]
    positions: list[int]
    reasons: list[str]


class TriModalCollator:
    """
    Decode and process a list of rows into one batch.

    Args:
        processor: an `OptTriProcessor`.
        text_column / image_column / audio_column: column names (a missing column or a `None` value means the row
            lacks that modality).
        text_as_labels: for captioning/ASR: the text becomes decoder `labels` (`(B, n)`, the tokenized text after
            its `[CLS]`, -100 on padding) instead of encoder input; rows without text are then skipped.
        max_image_pixels: images with more pixels are corrupt rows, refused from the file header before decoding
            (decompression bombs); default `decoding.MAX_IMAGE_PIXELS` (8192 x 8192); None: no limit.

    Audio is read only up to the feature extractor's `max_length_seconds` (plus a 20 ms margin), then resampled to
    its rate: a long clip costs what a `max_length_seconds` one does.

    Returns (from `__call__`): a dict of tensors as the processor gives them (`input_ids`, `attention_mask`,
    `pixel_values`, `image_mask`, `input_features`, `audio_attention_mask`, for the modalities present in the batch)
    plus `num_skipped_rows` (int) and `skipped_reasons` (list of str). When every row of the batch is corrupt the
    dict holds only those two keys.
    """

    def __init__(
        self,
        processor,
        text_column: str = "text",
        image_column: str = "image",
        audio_column: str = "audio",
        text_as_labels: bool = False,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
    ):
        valid = isinstance(max_image_pixels, int) and not isinstance(max_image_pixels, bool) and max_image_pixels > 0
        if max_image_pixels is not None and not valid:
            raise ValueError(f"max_image_pixels must be a positive int or None, got {max_image_pixels!r}")
        self.processor = processor
        self.max_image_pixels = max_image_pixels
        self.text_as_labels = text_as_labels
        self.text_column = text_column
        self.image_column = image_column
        self.audio_column = audio_column
        self.sampling_rate = processor.feature_extractor.sampling_rate
        self.max_audio_seconds = getattr(processor.feature_extractor, "max_length_seconds", None)

    def decode_row(self, row: dict[str, Any], context: str) -> tuple[str | None, Any, np.ndarray | None]:
        """Decode one row; raise `CorruptSampleError` when it cannot be used."""
        if row.get(CORRUPT_COLUMN):  # a WebDataset member that did not decode (see `sources._decode_members`)
            raise CorruptSampleError(f"{context}: {row[CORRUPT_COLUMN]}")
        text = row.get(self.text_column)
        if text is not None:
            if isinstance(text, bytes):
                try:
                    text = text.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise CorruptSampleError(f"{context}: text is not valid UTF-8 ({error})") from error
            if not isinstance(text, str):
                raise CorruptSampleError(f"{context}: text must be a string, got {type(text).__name__}")
            text = text if text.strip() else None
        image = row.get(self.image_column)
        if image is not None:
            image = decode_image(image, context=context, max_pixels=self.max_image_pixels)
        audio = row.get(self.audio_column)
        if audio is not None:
            wave, rate = decode_audio(audio, context=context, max_seconds=self.max_audio_seconds)
            if rate != self.sampling_rate:  # cut first (to the feature extractor's limit), then resample
                limit = None if self.max_audio_seconds is None else round(self.max_audio_seconds * self.sampling_rate)
                wave = resample(wave, rate, self.sampling_rate, limit)
            audio = wave
        if text is None and image is None and audio is None:
            raise CorruptSampleError(f"{context}: the row has no text, image or audio")
        return text, image, audio

    def decode_rows(
        self, rows: Sequence[Any], view: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    ) -> DecodedRows:
        """
        Decode `rows` under the one corrupt-row policy of every OPT-Tri collator: a row that is not a dict of columns,
        or that `decode_row` refuses (`CorruptSampleError`), is skipped and its reason kept; the others are decoded
        in order. `view` (row -> the columns to decode) selects or renames columns first (fine-tuning tasks).
        """
        decoded = DecodedRows([], [], [], [], [])
        for position, row in enumerate(rows):
            if not isinstance(row, Mapping):  # e.g. a raw string: skipped and counted like any other unusable row
                decoded.reasons.append(f"row {position}: expected a dict of columns, got {type(row).__name__}")
                continue
            try:
                text, image, audio = self.decode_row(view(row) if view else row, f"row {row.get('id', position)}")
            except CorruptSampleError as error:
                decoded.reasons.append(str(error))
                continue
            decoded.texts.append(text)
            decoded.images.append(image)
            decoded.audios.append(audio)
            decoded.positions.append(position)
        return decoded

    def process(self, texts: list, images: list, audios: list, with_text: bool = True) -> dict[str, Any]:
        """The processor's tensors for decoded rows; a modality no row has (or the text, `with_text=False`) is left
        out."""
        return dict(
            self.processor(
                text=texts if with_text and any(t is not None for t in texts) else None,
                images=images if any(i is not None for i in images) else None,
                audio=audios if any(a is not None for a in audios) else None,
                sampling_rate=self.sampling_rate,
                return_tensors="pt",
            )
        )

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        decoded = self.decode_rows(rows)
        texts, images, audios, reasons = decoded.texts, decoded.images, decoded.audios, decoded.reasons
        if self.text_as_labels:
            missing = [i for i, t in enumerate(texts) if t is None]
            reasons += ["a row without text cannot be a captioning target"] * len(missing)
            keep = [i for i in range(len(texts)) if texts[i] is not None]
            texts, images, audios = [texts[i] for i in keep], [images[i] for i in keep], [audios[i] for i in keep]
        batch: dict[str, Any] = {"num_skipped_rows": len(reasons), "skipped_reasons": reasons}
        if not texts:
            return batch
        if self.text_as_labels:
            encoded = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
            labels = encoded["input_ids"][:, 1:].masked_fill(encoded["attention_mask"][:, 1:] == 0, -100)
            batch["labels"] = labels
        batch.update(self.process(texts, images, audios, with_text=not self.text_as_labels))
        return batch


def padding_fraction(batch: dict[str, Any]) -> tuple[int, int]:
    """(padded, total) token counts of the variable-length parts of a batch (text tokens and audio frames)."""
    padded = total = 0
    for key in ("attention_mask", "audio_attention_mask"):
        mask = batch.get(key)
        if mask is not None:
            total += mask.numel()
            padded += int(mask.numel() - mask.sum())
    return padded, total


def row_lengths(
    dataset,
    tokenizer=None,
    text_column="text",
    audio_column="audio",
    frames_per_second=100.0,
    max_text_tokens: int | None = None,
    max_audio_seconds: float | None = None,
) -> list[tuple[int, int]]:
    """
    Model lengths of every row as `(audio frames, text tokens)`, for length grouping and token budgets: the lengths
    after truncation, i.e. what the processor gives the model. Text length is counted with `tokenizer` when given
    (else whitespace words + 2) and capped at `max_text_tokens` (default: the tokenizer's `model_max_length`, the
    processor's truncation limit); audio length comes from the array length or the file header (no decoding) and is
    capped at `max_audio_seconds` (pass the feature extractor's `max_length_seconds`). Rows whose audio cannot be
    read (missing, not a regular file, corrupt) count 0 frames: the collator skips and counts them later.
    """
    columns = dataset.column_names
    text_lengths = np.zeros(len(dataset), dtype=np.int64)
    audio_lengths = np.zeros(len(dataset), dtype=np.int64)
    if max_text_tokens is None and tokenizer is not None:
        limit = getattr(tokenizer, "model_max_length", None)
        max_text_tokens = int(limit) if limit is not None and limit < 10**9 else None  # ~1e30 means "no limit"
    if text_column in columns:
        texts = [t if isinstance(t, str) else "" for t in dataset[text_column]]
        if tokenizer is not None:
            counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]]
        else:
            counts = [len(t.split()) + 2 for t in texts]
        text_lengths += np.asarray(counts, dtype=np.int64)
        if max_text_tokens is not None:
            np.minimum(text_lengths, max_text_tokens, out=text_lengths)
    if audio_column in columns:
        values = dataset.with_format(None)[audio_column] if hasattr(dataset, "with_format") else dataset[audio_column]
        seconds = np.asarray([0.0 if value is None else audio_duration(value) for value in values], dtype=np.float64)
        if max_audio_seconds is not None:
            np.minimum(seconds, max_audio_seconds, out=seconds)
        audio_lengths += (seconds * frames_per_second).astype(np.int64)
    return list(zip(audio_lengths.tolist(), text_lengths.tolist()))


class LengthGroupedBatchSampler:
    """
    Deterministic, resumable, length-grouped batches of row indices.

    Args:
        lengths: length of every row, an int, or a tuple of per-modality lengths such as `(audio frames, text
            tokens)` from `row_lengths`. Tuples are sorted lexicographically (each modality is padded separately, so
            sorting by the longest part first keeps padding lower than sorting by the sum); budgets use the sum.
        batch_size: rows per batch (the upper bound when `max_tokens` is set).
        max_tokens: optional token budget: a batch holds at most `max_tokens` padded tokens (rows x longest row).
        group_by_length: sort inside mega-batches (False gives plain shuffled batches, for comparison).
        mega_batch_factor: batches per mega-batch.
        seed: the order of epoch `e` depends only on `(seed, e)`.
        drop_last: drop the final smaller batch of each epoch (needed for equal batches across processes).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        max_tokens: int | None = None,
        group_by_length: bool = True,
        mega_batch_factor: int = 50,
        seed: int = 0,
        drop_last: bool = False,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        parts = np.asarray(lengths, dtype=np.int64).reshape(len(lengths), -1)
        self.lengths = parts.sum(1)  # total tokens per row (token budgets)
        # one sort key per row, ordering by the first part, then the next ones
        self.sort_key = np.lexsort(parts.T[::-1]).argsort() if parts.shape[1] > 1 else self.lengths
        if max_tokens is not None and max_tokens < int(self.lengths.max(initial=0)):
            raise ValueError(f"max_tokens={max_tokens} is smaller than the longest row ({int(self.lengths.max())} tokens)")
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.group_by_length = group_by_length
        self.mega_batch_factor = mega_batch_factor
        self.seed = seed
        self.drop_last = drop_last

    def batches(self, epoch: int) -> list[list[int]]:
        """All batches of `epoch`, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        if not self.group_by_length:
            batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        else:
            mega = self.batch_size * self.mega_batch_factor
            batches = []
            for start in range(0, len(order), mega):
                chunk = order[start : start + mega]
                chunk = chunk[np.argsort(-self.sort_key[chunk], kind="stable")]
                batches.extend(self._split(chunk))
            # shuffle batch order so that long and short batches alternate across the epoch
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size] if self.max_tokens is None else batches
        return batches

    def _split(self, sorted_chunk: np.ndarray) -> list[list[int]]:
        if self.max_tokens is None:
            return [sorted_chunk[i : i + self.batch_size].tolist() for i in range(0, len(sorted_chunk), self.batch_size)]
        batches, current, longest = [], [], 0
        for index in sorted_chunk.tolist():
            length = max(int(self.lengths[index]), 1)
            new_longest = max(longest, length)
            if current and (len(current) >= self.batch_size or new_longest * (len(current) + 1) > self.max_tokens):
                batches.append(current)
                current, new_longest = [], length
            current.append(index)
            longest = new_longest
        if current:
            batches.append(current)
        return batches

    def __len__(self) -> int:
        return len(self.batches(0))

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        """Batches of `epoch` from batch number `start` on (for resuming mid-epoch)."""
        yield from self.batches(epoch)[start:]


class ListBatchSampler(torch.utils.data.Sampler):
    """A fixed list of batches, for `DataLoader(batch_sampler=...)`."""

    def __init__(self, batches: list[list[int]]):
        self._batches = batches

    def __iter__(self):
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)
