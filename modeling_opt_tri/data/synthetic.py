"""ShapeWorld: the built-in, procedurally generated tri-modal dataset.

Every row is a *scene* of 1 to ``max_shapes`` (default 3) coloured shapes placed on a 3x3 grid,
rendered three ways that carry the same content:

* **image** -- RGB, ``image_size`` x ``image_size`` (default 64), drawn with ``PIL.ImageDraw`` at
  2x resolution and downsampled (anti-aliased) onto a dark, lightly tinted background, with a
  little Gaussian pixel noise. Each shape sits in its own grid cell, so shapes never overlap.
* **text** -- a templated caption of variable length, e.g. ``"a red circle"`` or
  ``"a scene with two large blue squares and a small yellow triangle at the bottom."``.
  Every shape's colour word and shape word appear in the caption. Identical shapes
  (same size, colour and shape) are grouped with a number word.
* **audio** -- a mono float32 sonification at ``sampling_rate`` (default 16 kHz), 0.4-1.5 s long.

Vocabulary
----------
``COLORS`` = red, green, blue, yellow, purple, orange; ``SHAPES`` = circle, square, triangle, star;
``SIZES`` = small, large; ``POSITIONS`` = the 3x3 grid cells named ``top left``, ``top``,
``top right``, ``left``, ``center``, ``right``, ``bottom left``, ``bottom``, ``bottom right``.
The scene list, the caption and the audio all follow reading order (top-to-bottom, then
left-to-right). ``label`` is the colour index of the first shape in that order.

Sonification mapping (consistent for every row, visible in a log-mel spectrogram)
---------------------------------------------------------------------------------
* **one shape = one tone segment**; segments are separated by 0.10 s of near-silence, with
  0.10 s of lead-in and tail, so *count* = number of segments and *order* = reading order.
* **colour -> pitch** (fundamental, spaced by a fifth so they are well separated):
  red 220 Hz, green 330 Hz, blue 495 Hz, yellow 742 Hz, purple 1114 Hz, orange 1670 Hz.
* **shape -> timbre**: circle = pure sine; square = odd harmonics 1, 3, 5 (amplitudes 1, 1/3,
  1/5, "square-ish"); triangle = harmonics 1-4 with amplitudes 1/k ("sawtooth-ish");
  star = fundamental + equally loud 2nd harmonic with a 10 Hz, +/-7 % vibrato ("warble").
  Harmonics at or above the Nyquist frequency are left out (at 16 kHz only the orange
  square's 5th harmonic, 8.35 kHz).
* **size -> loudness and duration**: large = peak 0.60, about 0.34 s; small = peak 0.30, about
  0.22 s (+/-0.02 s jitter). Each segment has 10 ms raised-cosine attack and release.
* **background**: white noise with standard deviation 0.004 over the whole clip.

Question answering
------------------
Each row carries several question/answer pairs (``questions``/``answers``; the first pair is also
``question``/``answer``) about colour, shape, size, position, counts and existence. Every answer is
one entry of the closed vocabulary ``ANSWERS`` (yes/no, colours, shapes, sizes, positions and
number words ``zero`` ... ``nine``).

Determinism
-----------
Row ``i`` of ``ShapeWorld(seed)`` depends only on ``(seed, i)`` (NumPy ``SeedSequence``), not on
the order rows are generated in or on the number of worker processes.
``build_synthetic_dataset`` maps the split name to a disjoint range of row indices (train
starts at 0, validation at 2**40, test at 2**41), so splits never share a row. Because the
world is small (e.g. 432 distinct single-shape layouts), two rows from different splits can
still show the same layout; their colour jitter, pixel noise and audio noise differ.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageDraw

COLORS: list[str] = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES: list[str] = ["circle", "square", "triangle", "star"]
SIZES: list[str] = ["small", "large"]
POSITIONS: list[str] = [
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
]
NUMBER_WORDS: list[str] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ANSWERS: list[str] = ["yes", "no"] + COLORS + SHAPES + SIZES + POSITIONS + NUMBER_WORDS

#: Nominal RGB value of every colour (each channel is jittered by up to +/-12 per shape).
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (155, 60, 205),
    "orange": (245, 140, 30),
}
#: Fundamental frequency (Hz) that encodes each colour in the audio.
COLOR_PITCH_HZ: dict[str, float] = {
    "red": 220.0,
    "green": 330.0,
    "blue": 495.0,
    "yellow": 742.0,
    "purple": 1114.0,
    "orange": 1670.0,
}
#: Harmonic recipe per shape: list of (harmonic number, relative amplitude).
SHAPE_HARMONICS: dict[str, list[tuple[int, float]]] = {
    "circle": [(1, 1.0)],
    "square": [(1, 1.0), (3, 1.0 / 3.0), (5, 1.0 / 5.0)],
    "triangle": [(1, 1.0), (2, 1.0 / 2.0), (3, 1.0 / 3.0), (4, 1.0 / 4.0)],
    "star": [(1, 1.0), (2, 1.0)],
}
#: Peak amplitude and nominal duration (seconds) per size.
SIZE_AMPLITUDE: dict[str, float] = {"small": 0.30, "large": 0.60}
SIZE_DURATION_S: dict[str, float] = {"small": 0.22, "large": 0.34}
DURATION_JITTER_S = 0.02
GAP_S = 0.10
EDGE_SILENCE_S = 0.10
RAMP_S = 0.010
NOISE_STD = 0.004
VIBRATO_RATE_HZ = 10.0
VIBRATO_DEPTH = 0.07

#: First row index of each known split; other split names get a hashed offset (see split_offset).
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "validation": 1 << 40, "test": 2 << 40}

_PLURALS = {shape: shape + "s" for shape in SHAPES}
_POSITION_PHRASES: dict[str, list[str]] = {
    "top left": ["in the top left corner", "at the top left"],
    "top": ["at the top", "at the top center"],
    "top right": ["in the top right corner", "at the top right"],
    "left": ["on the left", "at the left"],
    "center": ["in the center", "in the middle"],
    "right": ["on the right", "at the right"],
    "bottom left": ["in the bottom left corner", "at the bottom left"],
    "bottom": ["at the bottom", "at the bottom center"],
    "bottom right": ["in the bottom right corner", "at the bottom right"],
}
_CAPTION_TEMPLATES: list[str] = [
    "{}",
    "{}",
    "a picture of {}",
    "an image of {}",
    "a scene with {}",
    "there {be} {}",
    "{} on a dark background",
]
_SUPERSAMPLE = 2


def _source_digest() -> str:
    """Short hash of this module's source, used to key the datasets cache (stale-cache guard)."""
    return hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:12]


def split_offset(split: str) -> int:
    """First ShapeWorld row index used by ``split``.

    ``train``, ``validation`` and ``test`` map to 0, 2**40 and 2**41. Any other name maps to a
    hashed multiple of 2**40 of at least 3 * 2**40, so every split owns a disjoint index range of
    2**40 rows.
    """
    if split in SPLIT_OFFSETS:
        return SPLIT_OFFSETS[split]
    return (3 + zlib.crc32(split.encode("utf-8")) % (1 << 20)) << 40


def _article(word: str) -> str:
    """Indefinite article for ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def _join_phrases(phrases: list[str]) -> str:
    """Join phrases as 'a', 'a and b', 'a, b and c'."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


class ShapeWorld:
    """Deterministic generator of tri-modal ShapeWorld scenes (see the module docstring).

    Args:
        seed: Non-negative world seed; row ``i`` depends only on ``(seed, i)``.
        image_size: Side length of the square RGB image, in pixels (at least 16).
        sampling_rate: Audio sampling rate in Hz (at least 8000 so every pitch is representable).
        max_shapes: Largest number of shapes in a scene, 1 to 9.
    """

    COLORS: list[str] = COLORS
    SHAPES: list[str] = SHAPES
    SIZES: list[str] = SIZES
    POSITIONS: list[str] = POSITIONS
    ANSWERS: list[str] = ANSWERS

    def __init__(self, seed: int = 0, image_size: int = 64, sampling_rate: int = 16000, max_shapes: int = 3) -> None:
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if int(image_size) < 16:
            raise ValueError(f"image_size must be at least 16, got {image_size}")
        if int(sampling_rate) < 8000:
            raise ValueError(f"sampling_rate must be at least 8000 Hz, got {sampling_rate}")
        if not 1 <= int(max_shapes) <= len(POSITIONS):
            raise ValueError(f"max_shapes must be between 1 and {len(POSITIONS)}, got {max_shapes}")
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.sampling_rate = int(sampling_rate)
        self.max_shapes = int(max_shapes)
        self.label_names: list[str] = list(COLORS)

    def __repr__(self) -> str:
        return (
            f"ShapeWorld(seed={self.seed}, image_size={self.image_size}, "
            f"sampling_rate={self.sampling_rate}, max_shapes={self.max_shapes})"
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index)

    # ------------------------------------------------------------------ public API
    def sample(self, index: int) -> dict[str, Any]:
        """Generate row ``index`` (a non-negative integer).

        Returns:
            A dict with ``id``, ``text``, ``image`` (PIL RGB), ``audio``
            (``{"array": float32 1-D, "sampling_rate": int}``), ``question``, ``answer``,
            ``questions``, ``answers``, ``label`` (colour index of the first shape), ``color``,
            ``shape``, ``count`` and ``scene`` (one dict per shape with ``color``, ``shape``,
            ``size``, ``position``, ``row``, ``col``).
        """
        index = int(index)
        if index < 0:
            raise ValueError(f"index must be non-negative, got {index}")
        scene_rng, image_rng, audio_rng, text_rng, qa_rng = (
            np.random.default_rng(child) for child in np.random.SeedSequence([self.seed, index]).spawn(5)
        )
        scene = self.make_scene(scene_rng)
        questions, answers = self.make_questions(scene, qa_rng)
        first = scene[0]
        return {
            "id": f"shapeworld-{self.seed}-{index}",
            "text": self.make_caption(scene, text_rng),
            "image": self.render_image(scene, image_rng),
            "audio": {"array": self.render_audio(scene, audio_rng), "sampling_rate": self.sampling_rate},
            "question": questions[0],
            "answer": answers[0],
            "questions": questions,
            "answers": answers,
            "label": COLORS.index(first["color"]),
            "color": first["color"],
            "shape": first["shape"],
            "count": len(scene),
            "scene": scene,
        }

    # ------------------------------------------------------------------ scene
    def make_scene(self, rng: np.random.Generator) -> list[dict[str, Any]]:
        """Draw 1..max_shapes shapes in distinct grid cells, sorted in reading order.

        With probability 0.25 the later shapes copy the first shape's colour, shape and size,
        so captions such as "two large blue squares" occur.
        """
        count = int(rng.integers(1, self.max_shapes + 1))
        cells = sorted(int(c) for c in rng.choice(len(POSITIONS), size=count, replace=False))
        scene: list[dict[str, Any]] = []
        for cell in cells:
            if scene and rng.random() < 0.25:
                color, shape, size = scene[0]["color"], scene[0]["shape"], scene[0]["size"]
            else:
                color = COLORS[int(rng.integers(len(COLORS)))]
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
                size = SIZES[int(rng.integers(len(SIZES)))]
            scene.append(
                {
                    "color": color,
                    "shape": shape,
                    "size": size,
                    "position": POSITIONS[cell],
                    "row": cell // 3,
                    "col": cell % 3,
                }
            )
        return scene

    # ------------------------------------------------------------------ image
    def render_image(self, scene: list[dict[str, Any]], rng: np.random.Generator) -> Image.Image:
        """Render ``scene`` as an RGB image of ``image_size`` pixels (see module docstring)."""
        big = self.image_size * _SUPERSAMPLE
        base = int(rng.integers(25, 60))
        tint = rng.integers(-6, 7, size=3)
        background = tuple(int(np.clip(base + t, 0, 255)) for t in tint)
        canvas = Image.new("RGB", (big, big), background)
        draw = ImageDraw.Draw(canvas)
        cell = big / 3.0
        for item in scene:
            radius = cell * (0.40 if item["size"] == "large" else 0.22) * float(rng.uniform(0.95, 1.05))
            slack = max(cell / 2.0 - radius - 2.0, 0.0) * 0.5
            cx = (item["col"] + 0.5) * cell + float(rng.uniform(-slack, slack))
            cy = (item["row"] + 0.5) * cell + float(rng.uniform(-slack, slack))
            rgb = np.clip(np.array(COLOR_RGB[item["color"]]) + rng.integers(-12, 13, size=3), 0, 255)
            fill = tuple(int(v) for v in rgb)
            self._draw_shape(draw, item["shape"], cx, cy, radius, fill)
        image = canvas.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)
        pixels = np.asarray(image, dtype=np.float32)
        pixels = pixels + rng.normal(0.0, 3.0, size=pixels.shape).astype(np.float32)
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")

    @staticmethod
    def _draw_shape(
        draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, fill: tuple[int, int, int]
    ) -> None:
        """Draw one filled shape centred at (cx, cy) with circumradius ``radius``."""
        if shape == "circle":
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
        elif shape == "square":
            half = radius * 0.85
            draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
        elif shape == "triangle":
            angles = np.deg2rad([-90.0, 30.0, 150.0])
            # Shift down a little so the triangle's visual centre sits on the cell centre.
            points = [(cx + radius * np.cos(a), cy + radius * 0.15 + radius * np.sin(a)) for a in angles]
            draw.polygon([(float(x), float(y)) for x, y in points], fill=fill)
        elif shape == "star":
            points = []
            for k in range(10):
                r = radius if k % 2 == 0 else radius * 0.45
                a = np.deg2rad(-90.0 + 36.0 * k)
                points.append((float(cx + r * np.cos(a)), float(cy + r * np.sin(a))))
            draw.polygon(points, fill=fill)
        else:
            raise ValueError(f"unknown shape {shape!r}")

    # ------------------------------------------------------------------ audio
    def render_audio(self, scene: list[dict[str, Any]], rng: np.random.Generator) -> np.ndarray:
        """Sonify ``scene``: one tone segment per shape (see the mapping in the module docstring)."""
        sr = self.sampling_rate
        edge = np.zeros(int(round(EDGE_SILENCE_S * sr)), dtype=np.float64)
        gap = np.zeros(int(round(GAP_S * sr)), dtype=np.float64)
        pieces: list[np.ndarray] = [edge]
        for i, item in enumerate(scene):
            if i:
                pieces.append(gap)
            duration = SIZE_DURATION_S[item["size"]] + float(rng.uniform(-DURATION_JITTER_S, DURATION_JITTER_S))
            phase = float(rng.uniform(0, 2 * np.pi))
            pieces.append(self._tone(item["color"], item["shape"], item["size"], duration, phase))
        pieces.append(edge)
        signal = np.concatenate(pieces)
        signal = signal + rng.normal(0.0, NOISE_STD, size=signal.shape)
        return np.clip(signal, -1.0, 1.0).astype(np.float32)

    def _tone(self, color: str, shape: str, size: str, duration: float, phase: float) -> np.ndarray:
        """One enveloped tone segment for a shape."""
        sr = self.sampling_rate
        n = int(round(duration * sr))
        t = np.arange(n, dtype=np.float64) / sr
        f0 = COLOR_PITCH_HZ[color]
        if shape == "star":
            # Instantaneous frequency f0 * (1 + depth * sin(2 pi rate t)), integrated to a phase.
            base_phase = 2 * np.pi * f0 * (
                t - VIBRATO_DEPTH / (2 * np.pi * VIBRATO_RATE_HZ) * (np.cos(2 * np.pi * VIBRATO_RATE_HZ * t) - 1.0)
            )
        else:
            base_phase = 2 * np.pi * f0 * t
        wave = np.zeros(n, dtype=np.float64)
        for harmonic, amplitude in SHAPE_HARMONICS[shape]:
            if harmonic * f0 * (1 + VIBRATO_DEPTH) < sr / 2:
                wave += amplitude * np.sin(harmonic * (base_phase + phase))
        wave /= np.max(np.abs(wave)) + 1e-9
        ramp = min(int(round(RAMP_S * sr)), n // 2)
        envelope = np.ones(n, dtype=np.float64)
        if ramp > 0:
            rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
            envelope[:ramp] = rise
            envelope[n - ramp :] = rise[::-1]
        return SIZE_AMPLITUDE[size] * wave * envelope

    # ------------------------------------------------------------------ text
    def make_caption(self, scene: list[dict[str, Any]], rng: np.random.Generator) -> str:
        """Templated caption naming the colour and shape of every shape (variable length)."""
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for item in scene:
            groups.setdefault((item["size"], item["color"], item["shape"]), []).append(item)
        phrases: list[str] = []
        for (size, color, shape), items in groups.items():
            words = [size] if rng.random() < 0.6 else []
            words.append(color)
            noun = shape if len(items) == 1 else _PLURALS[shape]
            body = " ".join(words + [noun])
            if len(items) == 1:
                determiner = "one" if rng.random() < 0.15 else _article(body)
                phrase = f"{determiner} {body}"
                if rng.random() < 0.5:
                    options = _POSITION_PHRASES[items[0]["position"]]
                    phrase += " " + options[int(rng.integers(len(options)))]
            else:
                phrase = f"{NUMBER_WORDS[len(items)]} {body}"
            phrases.append(phrase)
        template = _CAPTION_TEMPLATES[int(rng.integers(len(_CAPTION_TEMPLATES)))]
        first_count = len(next(iter(groups.values())))
        caption = template.replace("{be}", "is" if first_count == 1 else "are").format(_join_phrases(phrases))
        if rng.random() < 0.3:
            caption += "."
        return caption

    # ------------------------------------------------------------------ questions
    def make_questions(self, scene: list[dict[str, Any]], rng: np.random.Generator) -> tuple[list[str], list[str]]:
        """Up to six distinct question/answer pairs; every answer is in ``ANSWERS``."""
        candidates: list[tuple[str, str]] = []
        count = len(scene)
        shape_counts = {s: sum(item["shape"] == s for item in scene) for s in SHAPES}
        color_counts = {c: sum(item["color"] == c for item in scene) for c in COLORS}
        pair_counts: dict[tuple[str, str], int] = {}
        for item in scene:
            key = (item["color"], item["shape"])
            pair_counts[key] = pair_counts.get(key, 0) + 1

        candidates.append(("how many shapes are there?", NUMBER_WORDS[count]))
        for item in scene:
            color, shape = item["color"], item["shape"]
            if shape_counts[shape] == 1:
                candidates.append((f"what color is the {shape}?", color))
            if color_counts[color] == 1:
                candidates.append((f"what shape is the {color} object?", shape))
            if pair_counts[(color, shape)] == 1:
                candidates.append((f"where is the {color} {shape}?", item["position"]))
                candidates.append((f"what size is the {color} {shape}?", item["size"]))
                asked = SIZES[int(rng.integers(len(SIZES)))]
                candidates.append((f"is the {color} {shape} {asked}?", "yes" if item["size"] == asked else "no"))
        present = scene[int(rng.integers(count))]
        candidates.append((f"is there {_article(present['color'])} {present['color']} {present['shape']}?", "yes"))
        absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in pair_counts]
        c, s = absent[int(rng.integers(len(absent)))]
        candidates.append((f"is there {_article(c)} {c} {s}?", "no"))
        asked_shape = SHAPES[int(rng.integers(len(SHAPES)))]
        candidates.append((f"how many {_PLURALS[asked_shape]} are there?", NUMBER_WORDS[shape_counts[asked_shape]]))
        if rng.random() < 0.7:
            asked_color = scene[int(rng.integers(count))]["color"]
        else:
            asked_color = COLORS[int(rng.integers(len(COLORS)))]
        candidates.append((f"how many {asked_color} shapes are there?", NUMBER_WORDS[color_counts[asked_color]]))

        unique: dict[str, str] = {}
        for question, answer in candidates:
            unique.setdefault(question, answer)
        order = rng.permutation(len(unique))[:6]
        items = list(unique.items())
        chosen = [items[int(i)] for i in order]
        return [q for q, _ in chosen], [a for _, a in chosen]


# ---------------------------------------------------------------------- datasets builders
def _features() -> Any:
    """``datasets.Features`` of a built ShapeWorld split."""
    import datasets

    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "text": datasets.Value("string"),
            "image": datasets.Image(),
            "audio": {"array": datasets.List(datasets.Value("float32")), "sampling_rate": datasets.Value("int32")},
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "questions": datasets.List(datasets.Value("string")),
            "answers": datasets.List(datasets.Value("string")),
            "label": datasets.ClassLabel(names=list(COLORS)),
            "color": datasets.Value("string"),
            "shape": datasets.Value("string"),
            "count": datasets.Value("int32"),
        }
    )


def _generate_rows(
    shards: list[tuple[int, int]], seed: int, image_size: int, sampling_rate: int, max_shapes: int
) -> Iterator[dict[str, Any]]:
    """Yield dataset rows for the ShapeWorld index ranges ``shards`` (``[start, stop)`` pairs)."""
    world = ShapeWorld(seed=seed, image_size=image_size, sampling_rate=sampling_rate, max_shapes=max_shapes)
    for start, stop in shards:
        for index in range(start, stop):
            row = world.sample(index)
            del row["scene"]
            yield row


def _shards(offset: int, num_rows: int, num_shards: int) -> list[tuple[int, int]]:
    """Split ``[offset, offset + num_rows)`` into ``num_shards`` contiguous ranges."""
    bounds = np.linspace(0, num_rows, num_shards + 1).round().astype(int)
    return [(offset + int(a), offset + int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def build_synthetic_dataset(
    num_rows: int,
    seed: int = 0,
    split: str = "train",
    image_size: int = 64,
    sampling_rate: int = 16000,
    num_proc: int | None = None,
    max_shapes: int = 3,
    cache_dir: str | None = None,
    keep_in_memory: bool = False,
) -> Any:
    """Build ``num_rows`` ShapeWorld rows of ``split`` as a ``datasets.Dataset``.

    Row ``i`` of the split is ``ShapeWorld(seed, ...).sample(split_offset(split) + i)``, so
    different splits never overlap and a larger ``num_rows`` extends a smaller one.

    Columns: ``id``, ``text`` (string), ``image`` (``datasets.Image()``), ``audio`` (struct of
    ``array`` float32 list and ``sampling_rate`` int32; plain features, not ``datasets.Audio``),
    ``question``, ``answer``, ``questions``, ``answers``, ``label`` (``ClassLabel`` over
    ``COLORS``), ``color``, ``shape``, ``count``.

    The result is written through ``Dataset.from_generator`` into the datasets cache (keyed by the
    arguments and this module's source), so it is memory-mapped and a repeated call is a cache hit.
    ``num_proc`` > 1 generates contiguous shards in worker processes; the rows are identical.
    """
    import datasets

    if num_rows < 1:
        raise ValueError(f"num_rows must be positive, got {num_rows}")
    ShapeWorld(seed=seed, image_size=image_size, sampling_rate=sampling_rate, max_shapes=max_shapes)  # validate args
    workers = max(1, int(num_proc or 1))
    num_shards = min(num_rows, max(workers, 1))
    fingerprint = (
        f"shapeworld-{_source_digest()}-s{seed}-{zlib.crc32(split.encode('utf-8')):08x}-n{num_rows}"
        f"-px{image_size}-sr{sampling_rate}-m{max_shapes}"
    )
    return datasets.Dataset.from_generator(
        _generate_rows,
        features=_features(),
        gen_kwargs={
            "shards": _shards(split_offset(split), num_rows, num_shards),
            "seed": int(seed),
            "image_size": int(image_size),
            "sampling_rate": int(sampling_rate),
            "max_shapes": int(max_shapes),
        },
        num_proc=workers if workers > 1 else None,
        split=datasets.NamedSplit(split),
        fingerprint=fingerprint,
        cache_dir=cache_dir,
        keep_in_memory=keep_in_memory,
    )


def build_synthetic_dataset_dict(
    num_train: int,
    num_validation: int,
    num_test: int,
    seed: int = 0,
    image_size: int = 64,
    sampling_rate: int = 16000,
    num_proc: int | None = None,
    max_shapes: int = 3,
    cache_dir: str | None = None,
) -> Any:
    """``datasets.DatasetDict`` with ``train``/``validation``/``test`` ShapeWorld splits.

    A split with zero rows is left out.
    """
    import datasets

    sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    return datasets.DatasetDict(
        {
            name: build_synthetic_dataset(
                n,
                seed=seed,
                split=name,
                image_size=image_size,
                sampling_rate=sampling_rate,
                num_proc=num_proc,
                max_shapes=max_shapes,
                cache_dir=cache_dir,
            )
            for name, n in sizes.items()
            if n > 0
        }
    )


def build_synthetic_iterable_dataset(
    num_rows: int | None = None,
    seed: int = 0,
    split: str = "train",
    image_size: int = 64,
    sampling_rate: int = 16000,
    max_shapes: int = 3,
) -> Any:
    """Streaming (``datasets.IterableDataset``) version of :func:`build_synthetic_dataset`.

    Yields the same rows in the same order; nothing is written to disk. With ``num_rows=None``
    the stream covers the whole 2**40-row range of the split (practically endless).
    """
    import datasets

    if num_rows is not None and num_rows < 1:
        raise ValueError(f"num_rows must be positive or None, got {num_rows}")
    ShapeWorld(seed=seed, image_size=image_size, sampling_rate=sampling_rate, max_shapes=max_shapes)
    offset = split_offset(split)
    stop = offset + (num_rows if num_rows is not None else 1 << 40)
    return datasets.IterableDataset.from_generator(
        _generate_rows,
        features=_features(),
        gen_kwargs={
            "shards": [(offset, stop)],
            "seed": int(seed),
            "image_size": int(image_size),
            "sampling_rate": int(sampling_rate),
            "max_shapes": int(max_shapes),
        },
        split=datasets.NamedSplit(split),
    )
