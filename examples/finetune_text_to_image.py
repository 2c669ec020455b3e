"""Fine-tune OPT-Tri for text-to-image generation (`OptTriForTextToImage`) on the built-in ShapeWorld dataset.

    python examples/train_image_tokenizer.py --output_dir outputs/image_tokenizer
    python examples/finetune_text_to_image.py --image_tokenizer outputs/image_tokenizer --output_dir outputs/text2image
    python examples/finetune_text_to_image.py --model outputs/pretrain/final --image_tokenizer ... --output_dir ...

The targets are the codes of a trained image tokenizer (`OptTriImageVQModel`): every training image is encoded once,
before training, into its `grid x grid` codes, and the model learns them by teacher forcing (next-code cross-entropy)
conditioned on the caption. `--model` is an OPT-Tri checkpoint (a pre-training checkpoint loads its encoders; the image
decoder starts at random) or a preset folder such as `configuration/tiny` (random initialisation). The image decoder
config is set to the tokenizer's codebook and code grid when the folder's disagrees.

By default scenes have one shape (`--max_shapes 1`), so each caption names one colour and the colour measurement of
`examples/evaluate_text_to_image.py` (run at the end, unless `--skip_eval`) is well defined.

It writes to `--output_dir`: the model and the processor (`save_pretrained`), `metrics.jsonl` (the training loss),
`color_report.json` and `generated_grid.png` (the evaluation) and `report.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset
from transformers import get_cosine_schedule_with_warmup

from modeling_opt_tri import OptTriCodeDecoderConfig, OptTriConfig, OptTriProcessor
from modeling_opt_tri.data.synthetic import build_synthetic_dataset
from modeling_opt_tri.modeling_opt_tri import OptTriForTextToImage
from modeling_opt_tri.modeling_opt_tri_vq import OptTriImageVQModel

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_text_to_image import evaluate  # noqa: E402  (the measurement script next to this one)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=str(REPO_ROOT / "configuration" / "tiny"),
                        help="OPT-Tri checkpoint or preset folder (with the processor files unless --processor)")
    parser.add_argument("--processor", default=None, help="OptTriProcessor folder (default: --model)")
    parser.add_argument("--image_tokenizer", required=True, help="trained OptTriImageVQModel folder")
    parser.add_argument("--output_dir", default="outputs/text2image")
    parser.add_argument("--num_train_rows", type=int, default=4096, help="ShapeWorld training rows")
    parser.add_argument("--max_shapes", type=int, default=1, help="shapes per scene (1: one colour per caption)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_steps", type=int, default=1500)
    parser.add_argument("--max_minutes", type=float, default=0.0, help="stop training after this long (0: no limit)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--warmup_steps", type=int, default=50)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--num_threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip_eval", action="store_true")
    parser.add_argument("--eval_prompts", type=int, default=120)
    parser.add_argument("--eval_top_k", type=int, default=0, help="top-k of the evaluation samples (0: off)")
    parser.add_argument("--eval_temperature", type=float, default=1.0)
    return parser.parse_args(argv)


def build_model(folder: str, tokenizer: OptTriImageVQModel) -> OptTriForTextToImage:
    """An `OptTriForTextToImage` from a checkpoint or preset folder whose image decoder writes `tokenizer`'s codes."""
    config = OptTriConfig.from_pretrained(folder)
    tc = tokenizer.config
    grid = tc.image_size // tc.downsample
    dc = config.image_decoder_config
    if (dc.codebook_size, dc.grid_size) != (tc.codebook_size, grid):
        print(f"image decoder: {dc.codebook_size} codes on a {dc.grid_size}x{dc.grid_size} grid -> the tokenizer's "
              f"{tc.codebook_size} codes on {grid}x{grid}")
        geometry = {k: getattr(dc, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                "intermediate_size", "hidden_act", "layer_norm_eps")}
        config.image_decoder_config = OptTriCodeDecoderConfig(
            modality="image", codebook_size=tc.codebook_size, grid_size=grid, **geometry
        )
    if (Path(folder) / "model.safetensors").is_file():
        return OptTriForTextToImage.from_pretrained(folder, config=config)
    print(f"{folder} holds no weights: random initialisation")
    return OptTriForTextToImage(config)


@torch.no_grad()
def encode_dataset(processor, tokenizer, rows, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids `(N, L)`, attention mask `(N, L)` and image codes `(N, grid, grid)` of the rows."""
    text = processor(text=list(rows["text"]), return_tensors="pt")
    codes = []
    for start in range(0, len(rows), batch_size):
        images = [image.convert("RGB") for image in rows[start : start + batch_size]["image"]]
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        codes.append(tokenizer.encode(pixels))
    return text["input_ids"], text["attention_mask"], torch.cat(codes)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    processor = OptTriProcessor.from_pretrained(args.processor or args.model)
    tokenizer = OptTriImageVQModel.from_pretrained(args.image_tokenizer).eval()
    image_size = int(processor.image_processor.image_size)
    if tokenizer.config.image_size != image_size:
        raise SystemExit(f"the image tokenizer is for {tokenizer.config.image_size}-px images, the processor makes "
                         f"{image_size}-px images")
    model = build_model(args.model, tokenizer).to(args.device)

    started = time.time()
    rows = build_synthetic_dataset(args.num_train_rows, seed=args.seed, split="train", image_size=image_size,
                                   max_shapes=args.max_shapes)
    input_ids, attention_mask, codes = encode_dataset(processor, tokenizer, rows)
    print(f"encoded {len(codes)} rows into {tuple(codes.shape[1:])} codes in {time.time() - started:.0f}s")
    loader = DataLoader(TensorDataset(input_ids, attention_mask, codes), batch_size=args.batch_size, shuffle=True,
                        drop_last=True, generator=torch.Generator().manual_seed(args.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)

    model.train()
    step, losses, log = 0, [], []
    started = time.time()
    with open(output_dir / "metrics.jsonl", "w") as metrics:
        while step < args.max_steps:
            for ids, mask, target in loader:
                loss = model(input_ids=ids.to(args.device), attention_mask=mask.to(args.device),
                             labels=target.to(args.device)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                step += 1
                losses.append(loss.item())
                if step % args.log_every == 0 or step == args.max_steps:
                    recent = sum(losses[-args.log_every :]) / len(losses[-args.log_every :])
                    record = {"step": step, "loss": round(recent, 4), "perplexity": round(math.exp(recent), 2),
                              "seconds": round(time.time() - started, 1)}
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    log.append(record)
                    print(json.dumps(record), flush=True)
                out_of_time = args.max_minutes and time.time() - started > 60 * args.max_minutes
                if step >= args.max_steps or out_of_time:
                    break
            if args.max_minutes and time.time() - started > 60 * args.max_minutes:
                print(f"stopping after {args.max_minutes} minutes at step {step}")
                break
    model.eval()
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    report = {
        "steps": step,
        "train_seconds": round(time.time() - started, 1),
        "loss_first_log": log[0]["loss"] if log else None,
        "loss_last_log": log[-1]["loss"] if log else None,
        "uniform_loss": round(math.log(tokenizer.config.codebook_size), 4),
        "args": vars(args),
    }
    if not args.skip_eval:
        report["evaluation"] = evaluate(
            model, processor, tokenizer, num_prompts=args.eval_prompts, seed=args.seed, output_dir=output_dir,
            top_k=args.eval_top_k, temperature=args.eval_temperature,
        )
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
