"""Log-mel feature extractor for OPT-Tri audio.

This is a Hub file: it is copied next to checkpoints as remote code. It imports only numpy and transformers
at load time (scipy lazily, for resampling; torch if installed, which the features need) and nothing from the rest
of the package. The image processor imports `_single_threaded_torch` from here, so this file must import without
torch.

Features: mono waveform at `sampling_rate` -> Hann-windowed STFT (`n_fft`, `hop_length`, centred frames
with reflect padding) -> power spectrum -> Slaney mel filter bank (`feature_size` bins, 0 Hz to Nyquist) ->
natural log with a floor of 1e-10 -> `(log_mel - mel_mean) / mel_std`. The features of a whole batch are one
vectorised torch computation over the real frames only (strided framing, one `rfft`, one matmul), run on the
calling thread (see `_single_threaded_torch`); frames of padding are never transformed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from numbers import Real
from typing import Any

import numpy as np
from transformers.audio_utils import mel_filter_bank, window_function
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import TensorType, logging


try:
    import torch
except ImportError:  # the log-mel features need torch (a clear error at construction); importing does not
    torch = None


logger = logging.get_logger(__name__)

LOG_FLOOR = 1e-10
"""Mel energies are clamped to at least this before the log, so silence gives log(1e-10), never -inf."""

MIN_SAMPLING_RATE = 1000
"""Lowest accepted input sampling rate in Hz. Lower rates are not audio (often a corrupt file header); resampling
them to `sampling_rate` would multiply the clip's size (a 1 Hz header asks for 16000x the memory)."""

MAX_SAMPLING_RATE = 384000
"""Highest accepted input sampling rate in Hz (the highest rate of professional audio formats)."""

_PCM_SCALE: dict[np.dtype, tuple[float, float]] = {
    np.dtype(np.int8): (0.0, 128.0),
    np.dtype(np.uint8): (128.0, 128.0),  # 8-bit WAV is unsigned with an offset of 128
    np.dtype(np.int16): (0.0, 32768.0),
    np.dtype(np.int32): (0.0, 2147483648.0),
}
"""Integer PCM dtype -> (offset, scale): `float = (int - offset) / scale`, which lies in [-1, 1]."""

_INT16_RANGE = (-32768, 32767)

MAX_FLOAT_AMPLITUDE = 64.0
"""Float samples are expected in about [-1, 1]; a clip whose peak is above this (36 dB over full scale) is integer
PCM stored as floats (e.g. `int16_array.astype(np.float32)`, peaks near 32768), and its features would be shifted by
the square of the scale, or overflow to inf, silently. Such clips raise instead."""


def check_sampling_rate(sampling_rate: Any) -> int:
    """Return `sampling_rate` as an int, or raise `ValueError` unless it is a whole number of Hz in
    [`MIN_SAMPLING_RATE`, `MAX_SAMPLING_RATE`]."""
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive int (Hz), got {sampling_rate!r}")
    if not MIN_SAMPLING_RATE <= sampling_rate <= MAX_SAMPLING_RATE:
        raise ValueError(
            f"sampling_rate {int(sampling_rate)} Hz is outside the supported range {MIN_SAMPLING_RATE}.."
            f"{MAX_SAMPLING_RATE} Hz (a corrupt header, or a rate in kHz instead of Hz?)"
        )
    return int(sampling_rate)


def pcm_to_float(samples: np.ndarray) -> np.ndarray:
    """Samples of any supported dtype as float32 (any shape). The integer scaling rules:

    - int8 / 128, uint8 (8-bit WAV) (x - 128) / 128, int16 / 32768, int32 / 2**31: by the dtype's width.
    - int64, which is what a list of Python ints becomes (`np.asarray([20000, -20000])`), has no PCM width: its
      values are read as 16-bit PCM (/ 32768) when they all lie in [-32768, 32767], and raise otherwise.
    - floats are kept as they are (expected in about [-1, 1]); a peak above `MAX_FLOAT_AMPLITUDE` (64) raises
      (integer PCM stored as floats). bool, unsigned wider than 8 bits, complex and other dtypes raise.

    Raises:
        ValueError: an unsupported dtype, int64 values outside the int16 range, float samples above 64.
    """
    if samples.dtype in _PCM_SCALE:
        offset, scale = _PCM_SCALE[samples.dtype]
        return ((samples.astype(np.float32) - offset) / scale).astype(np.float32)
    if samples.dtype == np.int64:
        low, high = (int(samples.min()), int(samples.max())) if samples.size else (0, 0)
        if low < _INT16_RANGE[0] or high > _INT16_RANGE[1]:
            raise ValueError(
                f"int64 audio samples (e.g. a list of Python ints) are read as 16-bit PCM, but these lie in "
                f"[{low}, {high}], outside [-32768, 32767]; pass a numpy int32 array for 32-bit PCM, or floats "
                "in [-1, 1]"
            )
        return (samples.astype(np.float32) / np.float32(32768.0)).astype(np.float32)
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(
            f"unsupported audio dtype {samples.dtype}; use float samples (about -1..1) or integer PCM "
            f"({', '.join(str(d) for d in _PCM_SCALE)}; int64 / Python ints in the int16 range)"
        )
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak > MAX_FLOAT_AMPLITUDE and math.isfinite(peak):
        raise ValueError(
            f"float audio samples should lie in about [-1, 1], but these reach {peak:.6g}: integer PCM stored as "
            "floats? Divide by 32768 (16-bit) or 2**31 (32-bit), or pass the integer array itself"
        )
    return samples.astype(np.float32, copy=False)


def _is_torch_tensor(value: Any) -> bool:
    return torch is not None and isinstance(value, torch.Tensor)


def _to_mono_float(clip: Any) -> np.ndarray:
    """Validate one clip and return it as a 1-D float32 array.

    Integer samples are scaled by the rules of `pcm_to_float`; floats are kept as they are. A 2-D input
    with a single channel (`[1, N]` or `[N, 1]`) is squeezed; real multi-channel audio raises.
    """
    if _is_torch_tensor(clip):
        if clip.is_meta:
            raise ValueError(f"audio tensor of shape {tuple(clip.shape)} is on the meta device: it holds no samples")
        clip = clip.detach().cpu()
        if clip.dtype in (torch.bfloat16, torch.float16):
            clip = clip.float()
        clip = clip.numpy()
    elif not isinstance(clip, np.ndarray):
        if not isinstance(clip, (list, tuple)):
            raise TypeError(
                f"unsupported audio type {type(clip).__name__}; expected a 1-D numpy array, a torch tensor or a "
                "list of floats (or None for a row without audio)"
            )
        clip = np.asarray(clip)
    if clip.ndim == 2 and 1 in clip.shape:
        clip = clip.reshape(-1)
    if clip.ndim == 2:
        raise ValueError(
            f"audio must be mono (1-D), got a 2-D array of shape {tuple(clip.shape)} (stereo / multi-channel?). "
            "Mix it down first, e.g. `wav.mean(axis=1)` for [samples, channels] (soundfile) or "
            "`wav.mean(axis=0)` for [channels, samples] (torch)"
        )
    if clip.ndim != 1:
        raise ValueError(f"audio must be a 1-D array of samples, got {clip.ndim} dimensions {tuple(clip.shape)}")
    if clip.shape[0] == 0:
        raise ValueError("audio is empty (0 samples)")
    clip = pcm_to_float(clip)
    if not np.isfinite(clip).all():
        raise ValueError("audio contains NaN or inf samples")
    return clip


@contextlib.contextmanager
def _single_threaded_torch() -> Iterator[None]:
    """Run the enclosed torch ops on the calling thread only, then restore its intra-op thread count.

    Used for the log-mel features here and for the image processor's resize. A batch of either is a few
    milliseconds of work. Spread over OpenMP workers it is barely faster, and the workers then busy-wait after
    each op, taking CPU from the single-threaded work around it (tokenisation, the other modalities); on a
    machine with few cores that made the whole processor several times slower.
    `torch.set_num_threads` sets the OpenMP and MKL thread counts of the calling thread (it is what DataLoader
    workers do for good), and it is restored on exit, so other threads and later ops are unaffected.
    """
    if torch is None:  # nothing to pin without torch
        yield
        return
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def clips_at_rate(
    batch: list[Any], sampling_rate: int, target_rate: int, max_samples: int | None
) -> tuple[list[np.ndarray | None], int]:
    """Each clip of `batch` validated as mono float32, cut to `max_samples` samples at `target_rate` and resampled
    from `sampling_rate` to `target_rate` (cut first: only what is kept is resampled). `None` rows stay `None`.
    Returns the clips and how many of them were longer than `max_samples`. Errors name the row."""
    clips: list[np.ndarray | None] = []
    truncated = 0
    for row, clip in enumerate(batch):
        if clip is None:
            clips.append(None)
            continue
        try:
            samples = _to_mono_float(clip)
        except (ValueError, TypeError) as error:
            raise type(error)(f"audio[{row}]: {error}") from None
        if max_samples is not None and -(-samples.shape[0] * target_rate // sampling_rate) > max_samples:
            truncated += 1  # longer than max_samples once at `target_rate`
        if sampling_rate != target_rate:
            samples = resample(samples, sampling_rate, target_rate, max_samples)
        elif max_samples is not None:
            samples = samples[:max_samples]
        clips.append(samples)
    return clips, truncated


def resample(clip: np.ndarray, orig_rate: int, target_rate: int, max_samples: int | None = None) -> np.ndarray:
    """Resample a 1-D float32 clip with `scipy.signal.resample_poly` (up/down reduced by their gcd).

    With `max_samples`, only the input the first `max_samples` output samples depend on is resampled (the clip is
    cut first, keeping the filter's reach as a margin), so a long clip costs what a `max_samples` one does; the
    result is identical to resampling the whole clip and cutting it after.

    Returns float32 of length `ceil(len(clip) * target_rate / orig_rate)`, at most `max_samples`.
    """
    try:
        from scipy.signal import resample_poly
    except ImportError as error:
        raise ImportError(
            f"resampling audio from {orig_rate} Hz to {target_rate} Hz needs scipy: `pip install scipy`, or pass "
            f"audio already sampled at {target_rate} Hz"
        ) from error
    divisor = math.gcd(orig_rate, target_rate)
    up, down = target_rate // divisor, orig_rate // divisor
    if max_samples is None:
        return resample_poly(clip, up, down).astype(np.float32)
    needed = -(-max_samples * orig_rate // target_rate)  # input samples under the first `max_samples` outputs
    reach = 10 * max(up, down) // up + 2  # resample_poly's filter half-length (10 * max(up, down)), in input samples
    return resample_poly(clip[: needed + reach], up, down)[:max_samples].astype(np.float32)


class OptTriFeatureExtractor(SequenceFeatureExtractor):
    r"""Turn mono waveforms into normalised log-mel frames for OPT-Tri.

    Args:
        feature_size (`int`, defaults to 80): Number of mel bins.
        sampling_rate (`int`, defaults to 16000): Rate the features are computed at. Other input rates are
            resampled with `scipy.signal.resample_poly`.
        n_fft (`int`, defaults to 400): FFT size and Hann window length (25 ms at 16 kHz).
        hop_length (`int`, defaults to 160): Frame shift (10 ms at 16 kHz). A clip of `N` samples (at
            `sampling_rate`) gives `1 + N // hop_length` frames (centred frames).
        max_length_seconds (`float` or None, defaults to 10.0): Longer clips are truncated to this length,
            with a `logger.warning` saying how many clips were cut. None disables truncation.
        pad_to_multiple_of (`int`, defaults to 4): The padded frame count `T` is a multiple of this.
        mel_mean (`float`, defaults to -4.27), mel_std (`float`, defaults to 4.57): Features are
            `(log_mel - mel_mean) / mel_std`.
        padding_value (`float`, defaults to 0.0): Value of padded frames and of rows without audio.

    Input (`__call__(audio, sampling_rate=...)`): one clip or a list of clips; a clip is a 1-D numpy array,
    a 1-D torch tensor or a list of floats, and `None` in a list marks a row without audio. Float samples are
    used as given (expected in about [-1, 1]); integer PCM (int8, uint8, int16, int32) is scaled to [-1, 1] by
    its width, and int64 arrays / lists of Python ints are read as 16-bit PCM when they fit (see `pcm_to_float`).
    `[1, N]` / `[N, 1]` arrays are treated as mono.

    Output (`BatchFeature`):
        - `input_features`: float32 `[B, feature_size, T]`, `T` the longest clip's frame count rounded up to
          a multiple of `pad_to_multiple_of` (at least `pad_to_multiple_of` when no row has audio).
        - `audio_attention_mask`: int64 `[B, T]`, 1 for real frames (all 0 for a row without audio).
    """

    model_input_names = ["input_features", "audio_attention_mask"]

    def __init__(
        self,
        feature_size: int = 80,
        sampling_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 160,
        max_length_seconds: float | None = 10.0,
        pad_to_multiple_of: int = 4,
        mel_mean: float = -4.27,
        mel_std: float = 4.57,
        padding_value: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if torch is None:
            raise ImportError("OptTriFeatureExtractor computes its log-mel features with torch; install torch")
        kwargs.setdefault("return_attention_mask", True)
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        for name, value in (
            ("feature_size", feature_size),
            ("sampling_rate", sampling_rate),
            ("n_fft", n_fft),
            ("hop_length", hop_length),
            ("pad_to_multiple_of", pad_to_multiple_of),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if max_length_seconds is not None and not (
            isinstance(max_length_seconds, Real)
            and not isinstance(max_length_seconds, bool)
            and math.isfinite(max_length_seconds)
            and round(max_length_seconds * sampling_rate) >= 1
        ):
            raise ValueError(
                f"max_length_seconds must be a finite number of seconds of at least one sample (1 / sampling_rate) "
                f"or None, got {max_length_seconds!r}"
            )
        if not (math.isfinite(mel_std) and mel_std > 0):
            raise ValueError(f"mel_std must be positive, got {mel_std!r}")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.max_length_seconds = max_length_seconds
        self.pad_to_multiple_of = pad_to_multiple_of
        self.mel_mean = float(mel_mean)
        self.mel_std = float(mel_std)
        # Not serialised (`FeatureExtractionMixin.to_dict` drops `mel_filters` and `window`).
        self.mel_filters = mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1,
            num_mel_filters=feature_size,
            min_frequency=0.0,
            max_frequency=sampling_rate / 2,
            sampling_rate=sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        ).astype(np.float32)  # [n_fft // 2 + 1, feature_size]
        self.window = window_function(n_fft, "hann", periodic=True).astype(np.float32)  # [n_fft]

    def num_frames(self, num_samples: int) -> int:
        """Number of (unpadded) frames for a clip of `num_samples` samples at `self.sampling_rate`."""
        return 1 + num_samples // self.hop_length

    @staticmethod
    def _as_list(audio: Any) -> list[Any]:
        """Split `audio` into a list of clips (entries may be None); a list of numbers is one clip."""
        if isinstance(audio, (list, tuple)):
            if len(audio) > 0 and all(isinstance(x, (Real, np.number)) for x in audio):
                return [audio]
            return list(audio)
        return [audio]

    def _log_mel(self, clips: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        """Normalised log-mel features of the real frames of a batch of 1-D float32 clips.

        Only each clip's own `num_frames(len(clip))` frames are computed (no FFTs of padding): the
        reflect-padded clips are laid end to end in one flat buffer, every real frame is gathered from it into
        one `[N, n_fft]` matrix, and that goes through one windowed `rfft`, one power spectrum and one
        `[N, n_freq] @ [n_freq, n_mels]` matmul. Per frame these are the same float32 operations as
        `torch.stft(center=True)` on a zero-padded batch followed by the mel matmul, and give the same values.

        Args:
            clips: `B` clips at `self.sampling_rate`, each at least one sample long.

        Returns:
            (`features`, `lengths`): float32 `[N, feature_size]` with the frames of clip 0, then clip 1, ...,
            and the frame count of each clip (`N = sum(lengths)`).
        """
        n_fft, hop, half = self.n_fft, self.hop_length, self.n_fft // 2
        sizes = [clip.shape[0] for clip in clips]
        lengths = [self.num_frames(size) for size in sizes]
        # segment of clip b: its reflect padding (`half` each side) plus room for the last frame when n_fft is odd
        offsets = np.zeros(len(clips) + 1, dtype=np.int64)
        np.cumsum([size + n_fft for size in sizes], out=offsets[1:])
        buffer = np.zeros(int(offsets[-1]), dtype=np.float32)
        for clip, size, offset in zip(clips, sizes, offsets[:-1].tolist()):
            if size > half:  # centred frames: reflect padding, as torch.stft(center=True) / np.pad(mode="reflect")
                buffer[offset : offset + half] = clip[half:0:-1]
                buffer[offset + half : offset + half + size] = clip
                buffer[offset + half + size : offset + 2 * half + size] = clip[-2 : -half - 2 : -1]
            else:  # shorter than the padding: np.pad reflects repeatedly
                buffer[offset : offset + size + 2 * half] = np.pad(clip, half, mode="reflect")
        starts = np.concatenate(
            [offset + hop * np.arange(length) for offset, length in zip(offsets[:-1].tolist(), lengths)]
        )
        with _single_threaded_torch():
            signal = torch.from_numpy(buffer)
            windows = signal.as_strided((signal.shape[0] - n_fft + 1, n_fft), (1, 1))  # every window, no copy
            frames = torch.index_select(windows, 0, torch.from_numpy(starts))  # [N, n_fft], one gather
            spectrum = torch.fft.rfft(frames.mul_(torch.from_numpy(self.window)))  # [N, n_fft // 2 + 1]
            power = spectrum.real.square().add_(spectrum.imag.square())  # re^2 + im^2, no extra temporaries
            mel = power @ torch.from_numpy(self.mel_filters)  # [N, feature_size]
            features = mel.clamp_(min=LOG_FLOOR).log_().sub_(self.mel_mean).div_(self.mel_std)
        return features.numpy(), lengths

    def _clips_at_rate(self, batch: list[Any], sampling_rate: int) -> list[np.ndarray | None]:
        """Validate each clip, cut it to `max_length_seconds` and resample it to `self.sampling_rate` (cut first, so
        only what is kept is resampled); warn how many clips were cut. `None` rows stay `None`."""
        max_samples = (
            None if self.max_length_seconds is None else int(round(self.max_length_seconds * self.sampling_rate))
        )
        clips, truncated = clips_at_rate(batch, sampling_rate, self.sampling_rate, max_samples)
        if truncated:
            logger.warning(
                f"{truncated} of {len(batch)} audio clips were longer than max_length_seconds="
                f"{self.max_length_seconds} and were truncated"
            )
        return clips

    def __call__(
        self,
        audio: Any,
        sampling_rate: int | None = None,
        return_tensors: str | TensorType | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Compute log-mel features for one clip or a batch.

        Args:
            audio: A clip or a list of clips (see the class docstring); `None` entries are rows without audio.
            sampling_rate: Rate of `audio` in Hz, in [`MIN_SAMPLING_RATE`, `MAX_SAMPLING_RATE`] (1 kHz to
                384 kHz). Required. Clips at another rate than `self.sampling_rate` are cut to
                `max_length_seconds`, then resampled with `scipy.signal.resample_poly`.
            return_tensors: `"pt"`, `"np"` or None (NumPy arrays).
            **kwargs: Ignored with a warning.

        Returns:
            `BatchFeature` with `input_features` float32 `[B, feature_size, T]` and `audio_attention_mask`
            int64 `[B, T]`.

        Raises:
            ValueError: missing, non-positive or absurd (below 1 kHz, above 384 kHz) `sampling_rate`, empty batch
                or clip, multi-channel audio, NaN/inf samples, unsupported dtype, int64 / Python int samples outside
                the int16 range.
            TypeError: unsupported clip type.
        """
        if kwargs:
            logger.warning(f"OptTriFeatureExtractor ignores the unsupported arguments {sorted(kwargs)}")
        if sampling_rate is None:
            raise ValueError(
                "sampling_rate is required: pass the rate of `audio` in Hz, e.g. "
                f"`sampling_rate=16000` (features are computed at {self.sampling_rate} Hz; other rates are resampled)"
            )
        sampling_rate = check_sampling_rate(sampling_rate)
        batch = self._as_list(audio)
        if not batch:
            raise ValueError("audio is an empty list; pass at least one clip (or None for a row without audio)")

        clips = self._clips_at_rate(batch, sampling_rate)

        lengths = [0 if clip is None else self.num_frames(clip.shape[0]) for clip in clips]
        multiple = self.pad_to_multiple_of
        total = max(multiple, -(-max(lengths) // multiple) * multiple)
        features = np.full((len(batch), self.feature_size, total), self.padding_value, dtype=np.float32)
        mask = (np.arange(total)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)  # [B, T]
        present = [row for row, clip in enumerate(clips) if clip is not None]
        if present:
            computed, _ = self._log_mel([clips[row] for row in present])  # [N, feature_size]
            start = 0
            for row in present:
                features[row, :, : lengths[row]] = computed[start : start + lengths[row]].T
                start += lengths[row]
        return BatchFeature(
            data={
                "input_features": features,
                "audio_attention_mask": mask,
            },
            tensor_type=return_tensors,
        )


OptTriFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")

__all__ = [
    "MAX_FLOAT_AMPLITUDE",
    "MAX_SAMPLING_RATE",
    "MIN_SAMPLING_RATE",
    "OptTriFeatureExtractor",
    "check_sampling_rate",
    "pcm_to_float",
    "resample",
]
