"""Train the OPT-Tri image tokenizer (`OptTriImageVQModel`, a VQ autoencoder with an EMA codebook) with accelerate.

The data is the built-in ShapeWorld dataset (`build_synthetic_dataset`), processed by the image processor of an
`OptTriProcessor` folder (`configuration/tiny` by default: 64-px images). The defaults are a tiny tokenizer that trains
in a few minutes on 2 CPU cores: 64-px images, 8x downsampling (8x8 = 64 codes per image), 512 codes. The
`OptTriImageVQConfig` defaults (8192 codes, 224 px, 128 hidden channels) are for real runs.

    python examples/train_image_tokenizer.py --output_dir /tmp/image_tokenizer
    accelerate launch examples/train_image_tokenizer.py --mixed_precision bf16 --processor configuration/base \
        --codebook_size 8192 --hidden_channels 128 --num_res_blocks 2 --max_steps 20000 --output_dir out/image_vq

It logs the reconstruction error, the perplexity, the codebook usage (% of codes used in the batch, and since the last
log line) and the dead-code restarts (tqdm, and `metrics.jsonl`), evaluates on held-out (validation-split) images before
and after training, and writes to `--output_dir`:

- the tokenizer (`save_pretrained`: `config.json`, `model.safetensors`, the Hub files) and the image processor
  (`preprocessor_config.json`), so `AutoModel.from_pretrained(dir, trust_remote_code=True)` loads it;
- `reconstructions.png`: the first 8 held-out images (top row) above their reconstructions (bottom row);
- `loss_curve.png` (when matplotlib is installed), `metrics.jsonl` and `report.json` (the figures).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from modeling_opt_tri import OptTriProcessor
from modeling_opt_tri.configuration_opt_tri_vq import OptTriImageVQConfig
from modeling_opt_tri.data.synthetic import build_synthetic_dataset
from modeling_opt_tri.modeling_opt_tri_vq import OptTriImageVQModel
from modeling_opt_tri.training.plots import save_vq_loss_curve
from modeling_opt_tri.training.vq import add_vq_training_arguments, train_vq

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--processor", default=str(REPO_ROOT / "configuration" / "tiny"),
                        help="OptTriProcessor folder whose image processor prepares the images")
    parser.add_argument("--output_dir", default="outputs/image_tokenizer")
    parser.add_argument("--num_train_rows", type=int, default=2048, help="ShapeWorld training rows")
    parser.add_argument("--num_eval_rows", type=int, default=64, help="held-out (validation split) rows")
    add_vq_training_arguments(parser, max_steps=600, dead_code_threshold=1.0)
    # tokenizer (the defaults are the tiny setting; see OptTriImageVQConfig for the full-size defaults)
    parser.add_argument("--codebook_size", type=int, default=512)
    parser.add_argument("--embedding_dim", type=int, default=32)
    parser.add_argument("--hidden_channels", type=int, default=32)
    parser.add_argument("--channel_multipliers", default="1,2,2", help="comma-separated, log2(downsample) of them")
    parser.add_argument("--num_res_blocks", type=int, default=1)
    parser.add_argument("--downsample", type=int, default=8)
    return parser.parse_args(argv)


def load_pixels(processor: OptTriProcessor, num_rows: int, seed: int, split: str) -> tuple[torch.Tensor, list]:
    """ShapeWorld rows of `split` -> (`pixel_values` `(N, 3, S, S)`, the PIL images)."""
    dataset = build_synthetic_dataset(num_rows, seed=seed, split=split, image_size=processor.image_processor.image_size)
    images = list(dataset["image"])
    chunks = [processor(images=images[i : i + 256], return_tensors="pt")["pixel_values"] for i in range(0, len(images), 256)]
    return torch.cat(chunks), images


@torch.no_grad()
def evaluate(model: OptTriImageVQModel, pixels: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Reconstruction error (normalised units and [0, 1] pixels), PSNR, and codebook use on `pixels`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    mean = torch.tensor(model.config.image_mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(model.config.image_std, device=device).view(1, -1, 1, 1)
    squared, squared_unit, count = 0.0, 0.0, 0
    histogram = torch.zeros(model.config.codebook_size, device=device)
    for start in range(0, pixels.shape[0], batch_size):
        batch = pixels[start : start + batch_size].to(device)
        output = model(batch)
        reconstruction = output.reconstruction.float()
        squared += float(((reconstruction - batch) ** 2).sum())
        unit = (reconstruction * std + mean).clamp(0, 1)
        squared_unit += float(((unit - (batch * std + mean)) ** 2).sum())
        count += batch.numel()
        histogram += torch.bincount(output.codes.flatten(), minlength=model.config.codebook_size)
    model.train(was_training)
    probabilities = histogram / histogram.sum()
    entropy = -(probabilities * torch.log(probabilities + 1e-10)).sum()
    mse_unit = squared_unit / count
    return {
        "mse": squared / count,
        "mse_pixels_01": mse_unit,
        "psnr_db": 10 * math.log10(1.0 / max(mse_unit, 1e-12)),
        "codes_used_pct": 100.0 * float((histogram > 0).float().mean()),
        "perplexity": float(torch.exp(entropy)),
    }


def save_grid(model: OptTriImageVQModel, pixels: torch.Tensor, path: Path, scale: int = 2) -> None:
    """The images of `pixels` (top row) above their reconstructions (bottom row), `scale`x nearest upsampling."""
    model.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        reconstruction = model.decode(model.encode(pixels.to(device))).float().cpu()
    originals, rebuilt = model.to_pil(pixels), model.to_pil(reconstruction)
    width, height = originals[0].size
    gap = 4
    cell_w, cell_h = width * scale, height * scale
    grid = Image.new("RGB", (len(originals) * (cell_w + gap) + gap, 2 * (cell_h + gap) + gap), (255, 255, 255))
    for column, (top, bottom) in enumerate(zip(originals, rebuilt)):
        x = gap + column * (cell_w + gap)
        grid.paste(top.resize((cell_w, cell_h), Image.Resampling.NEAREST), (x, gap))
        grid.paste(bottom.resize((cell_w, cell_h), Image.Resampling.NEAREST), (x, 2 * gap + cell_h))
    grid.save(path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    processor = OptTriProcessor.from_pretrained(args.processor)
    with accelerator.main_process_first():
        train_pixels, _ = load_pixels(processor, args.num_train_rows, args.seed, "train")
        eval_pixels, _ = load_pixels(processor, args.num_eval_rows, args.seed, "validation")
    config = OptTriImageVQConfig.from_image_processor(
        processor.image_processor,
        downsample=args.downsample,
        codebook_size=args.codebook_size,
        embedding_dim=args.embedding_dim,
        hidden_channels=args.hidden_channels,
        channel_multipliers=[int(m) for m in args.channel_multipliers.split(",")],
        num_res_blocks=args.num_res_blocks,
        commitment_cost=args.commitment_cost,
        ema_decay=args.ema_decay,
        dead_code_threshold=args.dead_code_threshold,
    )
    model = OptTriImageVQModel(config)
    accelerator.print(
        f"image tokenizer: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"{config.codebook_size} codes, {config.image_size // config.downsample}x{config.image_size // config.downsample}"
        f" codes per {config.image_size}-px image; {len(train_pixels)} train / {len(eval_pixels)} held-out images"
    )
    initial = evaluate(model.to(accelerator.device), eval_pixels)

    loader = DataLoader(TensorDataset(train_pixels), batch_size=args.batch_size, shuffle=True, drop_last=True)
    unwrapped, history, train_seconds = train_vq(
        model, loader, args, accelerator, output_dir, lambda m, batch: m(batch[0]), "image VQ", "recon MSE"
    )
    step = len(history)

    accelerator.wait_for_everyone()
    report: dict = {}
    if accelerator.is_main_process:
        final = evaluate(unwrapped, eval_pixels)
        unwrapped.save_pretrained(output_dir)
        processor.image_processor.save_pretrained(output_dir)
        save_grid(unwrapped, eval_pixels[:8], output_dir / "reconstructions.png")
        curve = save_vq_loss_curve(history, output_dir / "loss_curve.png", "reconstruction MSE (normalised pixels)")
        first, last = history[0], history[-1]
        report = {
            "steps": step,
            "train_seconds": round(train_seconds, 1),
            "train_reconstruction_mse_first_step": first["reconstruction_loss"],
            "train_reconstruction_mse_last_step": last["reconstruction_loss"],
            "train_reconstruction_mse_last_25_mean": float(np.mean([h["reconstruction_loss"] for h in history[-25:]])),
            "heldout_before": initial,
            "heldout_after": final,
            "batch_codebook_usage_pct_last": last["codebook_usage_pct"],
            "window_codes_used_pct_last": last.get("window_codes_used_pct"),
            "num_restarts": last["num_restarts"],
            "grid_png": str((output_dir / "reconstructions.png").resolve()),
            "loss_curve_png": str((output_dir / "loss_curve.png").resolve()) if curve else None,
            "tokenizer_dir": str(output_dir.resolve()),
            "args": vars(args),
        }
        (output_dir / "report.json").write_text(json.dumps(report, indent=2))
        accelerator.print(
            f"\ntrained {step} steps in {train_seconds:.0f} s\n"
            f"train recon MSE: first step {first['reconstruction_loss']:.4f} -> last step {last['reconstruction_loss']:.4f}\n"
            f"held-out recon MSE (normalised): {initial['mse']:.4f} -> {final['mse']:.4f}; "
            f"[0,1]-pixel MSE {final['mse_pixels_01']:.5f} (PSNR {final['psnr_db']:.1f} dB)\n"
            f"held-out codes used: {final['codes_used_pct']:.1f}% of {config.codebook_size} "
            f"(perplexity {final['perplexity']:.1f}); "
            f"dead-code restarts: {last['num_restarts']}\n"
            f"grid: {report['grid_png']}\ntokenizer: {report['tokenizer_dir']}"
        )
    return report


if __name__ == "__main__":
    main()
