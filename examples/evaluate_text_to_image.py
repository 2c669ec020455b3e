"""Measure how often an OPT-Tri text-to-image model draws the colour its prompt names.

    python examples/evaluate_text_to_image.py --model outputs/text2image --image_tokenizer outputs/image_tokenizer

The prompts are the captions of held-out (validation-split) single-shape ShapeWorld scenes, so each names exactly one
colour ("a small red circle at the top left"). For every generated image we find its dominant non-background colour
with a plain pixel statistic (`dominant_color`): take the pixels far from the dark background (HSV value >= 100/255
and saturation >= 90/255), give each the ShapeWorld colour of nearest hue, and take the most frequent one (none when
fewer than 0.5% of the pixels qualify). The figure is the fraction of images whose dominant colour is the prompt's.

For calibration the same statistic is also reported on the real held-out images (how well the statistic itself
works), on their reconstructions through the image tokenizer (the best a decoder over these codes can reach), and the
chance level (1/6 for six colours). The statistic says nothing about shape, size or position.

Writes `<output_dir>/color_report.json` and `<output_dir>/generated_grid.png` (the first images, one row per colour).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modeling_opt_tri import OptTriProcessor
from modeling_opt_tri.data.synthetic import COLOR_RGB, COLORS
from modeling_opt_tri.modeling_opt_tri import OptTriForTextToImage
from modeling_opt_tri.modeling_opt_tri_vq import OptTriImageVQModel
from modeling_opt_tri.training import text_to_code
from modeling_opt_tri.training.arguments import CheckedArgumentParser
from modeling_opt_tri.training.text_to_code import accuracy, color_breakdown, heldout_scenes, prompt_color

#: Hue (in [0, 1)) of each ShapeWorld colour's nominal RGB value.
COLOR_HUES: dict[str, float] = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] for name, rgb in COLOR_RGB.items()}
MIN_VALUE, MIN_SATURATION, MIN_FRACTION = 100, 90, 0.005


def dominant_color(image: Image.Image) -> str | None:
    """The ShapeWorld colour of most of the pixels of `image` that stand out from the dark background (see the module
    docstring), or `None` when too few pixels do."""
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.float32)
    hue, saturation, value = hsv[..., 0] / 256.0, hsv[..., 1], hsv[..., 2]
    selected = (value >= MIN_VALUE) & (saturation >= MIN_SATURATION)
    if selected.sum() < MIN_FRACTION * selected.size:
        return None
    references = np.array([COLOR_HUES[name] for name in COLORS])
    distance = np.abs(hue[selected][:, None] - references[None, :])
    distance = np.minimum(distance, 1.0 - distance)  # hue is circular
    votes = np.bincount(distance.argmin(axis=1), minlength=len(COLORS))
    return COLORS[int(votes.argmax())]


def _grid(images: list[Image.Image], columns: int) -> Image.Image:
    side = images[0].size[0]
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * side, rows * side))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * side, (i // columns) * side))
    return grid


@torch.no_grad()
def evaluate(
    model: OptTriForTextToImage,
    processor: OptTriProcessor,
    image_tokenizer: OptTriImageVQModel,
    num_prompts: int = 120,
    seed: int = 0,
    batch_size: int = 24,
    output_dir: str | Path | None = None,
    **sampling,
) -> dict:
    """Generate one image per held-out prompt and measure the colour agreement (see the module docstring)."""
    model.eval()
    image_tokenizer.eval()
    size = int(processor.image_processor.image_size)
    scenes = heldout_scenes(num_prompts, size)
    prompts = [row["text"] for row in scenes]
    targets = [prompt_color(text) for text in prompts]
    device = next(model.parameters()).device
    generated: list[Image.Image] = []
    started = time.time()
    for start in range(0, len(prompts), batch_size):
        batch = processor(text=prompts[start : start + batch_size], return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        generated += model.generate_images(image_tokenizer=image_tokenizer, seed=seed + start, **batch, **sampling)
    seconds = time.time() - started
    real = [row["image"] for row in scenes]
    pixels = processor.image_processor(real, return_tensors="pt")["pixel_values"]
    reconstructed = image_tokenizer.to_pil(image_tokenizer.decode(image_tokenizer.encode(pixels)))
    predicted = [dominant_color(image) for image in generated]
    report = {
        "num_prompts": len(prompts),
        "sampling": {"seed": seed, **sampling},
        "generated_color_accuracy": accuracy(predicted, targets),
        "real_image_color_accuracy": accuracy([dominant_color(i) for i in real], targets),
        "tokenizer_reconstruction_color_accuracy": accuracy([dominant_color(i) for i in reconstructed], targets),
        "chance": 1.0 / len(COLORS),
        "generated_no_color_found": sum(p is None for p in predicted),
        **color_breakdown(predicted, targets),
        "generation_seconds": round(seconds, 1),
    }
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        per_color = len(prompts) // len(COLORS)
        columns = min(per_color, 10)
        shown = [generated[c * per_color + j] for c in range(len(COLORS)) for j in range(columns)]
        _grid(shown, columns).save(output_dir / "generated_grid.png")
        report["grid_png"] = str(output_dir / "generated_grid.png")
        (output_dir / "color_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def build_parser() -> CheckedArgumentParser:
    parser = CheckedArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    text_to_code.add_evaluation_arguments(parser, "OptTriForTextToImage", "--image_tokenizer", "OptTriImageVQModel")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    tokenizer = OptTriImageVQModel.from_pretrained(args.image_tokenizer)
    return text_to_code.run_evaluation(args, OptTriForTextToImage, tokenizer, evaluate)


if __name__ == "__main__":
    main()
