"""Fine-tuning of the code generators (`OptTriForTextToImage`, `OptTriForTextToAudio`) on ShapeWorld captions or on
any `--dataset` pre-training reads (a metadata folder, parquet / arrow / `save_to_disk` data, WebDataset shards).

Shared by `examples/finetune_text_to_image.py` and `examples/finetune_text_to_audio.py`: the command-line flags, the
model built to write a given VQ tokenizer's codes, the one-off encoding of the training rows into codes, and the
teacher-forced training loop (AdamW, cosine schedule with warm-up, gradient clipping, `metrics.jsonl`); and the
held-out single-shape prompts and colour scoring that `examples/evaluate_text_to_{image,audio}.py` share.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from transformers import get_cosine_schedule_with_warmup

from ..configuration_opt_tri import OptTriConfig
from ..data.synthetic import COLORS, ShapeWorld, split_offset
from .arguments import DEVICE, SEED, CheckedArgumentParser, flag, integer, number, string
from .codes import VQCodeTargets
from .finetune import add_dataset_arguments, check_loading_info, load_train_and_evaluation


def add_training_arguments(parser: CheckedArgumentParser, *, default_model: str, default_output_dir: str) -> None:
    """The flags both fine-tuning scripts share (model, data, optimisation, logging, evaluation prompts), with rules."""
    parser.add_argument("--model", default=default_model, rule=string(),
                        help="OPT-Tri checkpoint or preset folder (with the processor files unless --processor)")
    parser.add_argument("--processor", default=None, rule=string(optional=True), help="OptTriProcessor folder (default: --model)")
    parser.add_argument("--output_dir", default=default_output_dir, rule=string())
    add_dataset_arguments(parser)
    parser.add_argument("--num_train_rows", type=int, default=4096, rule=integer(1),
                        help="training rows: generated ShapeWorld rows, or the first rows of --dataset")
    parser.add_argument("--eval_rows", type=int, default=64, rule=integer(1),
                        help="rows of --dataset's evaluation split whose code loss is reported (not for 'builtin')")
    parser.add_argument("--max_shapes", type=int, default=1, rule=integer(1, 9),
                        help="shapes per scene (1: one colour per caption)")
    parser.add_argument("--seed", type=int, default=0, rule=SEED)
    parser.add_argument("--max_steps", type=int, default=1500, rule=integer(1))
    parser.add_argument("--max_minutes", type=float, default=0.0, rule=number(0.0),
                        help="stop training after this long (0: no limit)")
    parser.add_argument("--batch_size", type=int, default=32, rule=integer(1))
    parser.add_argument("--learning_rate", type=float, default=1e-3, rule=number(positive=True))
    parser.add_argument("--weight_decay", type=float, default=0.01, rule=number(0.0))
    parser.add_argument("--warmup_steps", type=int, default=50, rule=integer(0))
    parser.add_argument("--max_grad_norm", type=float, default=1.0, rule=number(0.0, text="a finite number >= 0 (0: no clipping)"))
    parser.add_argument("--log_every", type=int, default=50, rule=integer(1))
    parser.add_argument("--num_threads", type=int, default=0, rule=integer(0), help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", rule=DEVICE)
    parser.add_argument("--skip_eval", action="store_true", rule=flag())
    parser.add_argument("--eval_prompts", type=int, default=120, rule=integer(1))
    parser.add_argument("--eval_top_k", type=int, default=0, rule=integer(0), help="top-k of the evaluation samples (0: off)")
    parser.add_argument("--eval_temperature", type=float, default=1.0, rule=number(positive=True))


def build_generator(model_class, folder: str, processor, image_tokenizer=None, audio_tokenizer=None):
    """
    A `model_class` (`OptTriForTextToImage` / `OptTriForTextToAudio`) from a checkpoint or preset folder, whose code
    decoder writes the given tokenizer's codes: a decoder config that disagrees (codebook size, code grid or clip
    length) is resized to the tokenizer, and the checkpoint tensors whose shape then differs (code embeddings, head,
    positions) start at random while the decoder's layers load. Raises when the tokenizer does not fit the processor
    (image size and normalisation, mel settings).
    """
    config = OptTriConfig.from_pretrained(folder)
    name = "image_decoder_config" if image_tokenizer is not None else "audio_decoder_config"
    before = getattr(config, name).to_dict()
    config.size_code_decoders(image_tokenizer, audio_tokenizer)
    after = getattr(config, name)
    resized = {k: (before.get(k), getattr(after, k)) for k in ("codebook_size", "grid_size", "num_codes")
               if before.get(k) != getattr(after, k)}
    if resized:
        print(f"{name} resized to the tokenizer: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in resized.items()))
    VQCodeTargets.check_compatible(config, processor, image_tokenizer, audio_tokenizer)
    if (Path(folder) / "model.safetensors").is_file():
        # only the tensors a resized decoder cannot take from the checkpoint may start at random; any other missing or
        # wrongly shaped tensor is an error naming it
        model, info = model_class.from_pretrained(folder, config=config, ignore_mismatched_sizes=True, output_loading_info=True)
        prefix = "image" if image_tokenizer is not None else "audio"
        check_loading_info(info, folder, [f"{prefix}_decoder", f"{prefix}_head"] if resized else [])
        return model
    print(f"{folder} holds no weights: random initialisation")
    return model_class(config)


@torch.no_grad()
def encode_rows(processor, rows, image_tokenizer=None, audio_tokenizer=None, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """
    The captions of `rows` (a dataset or a dict of columns: `text` and `image` PIL images or `audio`
    `{"array", "sampling_rate"}`) as `input_ids` / `attention_mask` `(N, L)`, and their images' codes as `labels`
    `(N, g, g)` or their clips' codes as `labels` / `labels_mask` `(N, n)`, computed once by the frozen tokenizer.
    """
    texts = list(rows["text"])
    media = list(rows["image" if image_tokenizer is not None else "audio"])
    text = processor(text=texts, return_tensors="pt")
    targets = VQCodeTargets(image_tokenizer, audio_tokenizer)
    labels, masks = [], []
    for start in range(0, len(texts), batch_size):
        chunk = media[start : start + batch_size]
        if image_tokenizer is not None:
            images = [image.convert("RGB") for image in chunk]
            batch = processor.image_processor(images, return_tensors="pt")
            labels.append(targets(dict(batch))["image_codes"])
        else:
            clips = [clip["array"] for clip in chunk]
            rate = chunk[0]["sampling_rate"]
            batch = processor.feature_extractor(clips, sampling_rate=rate, return_tensors="pt")
            codes = targets(dict(batch))
            labels.append(codes["audio_codes"])
            masks.append(codes["audio_codes_mask"])
    encoded = {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"]}
    if masks:  # clips differ in length: pad every chunk to the longest
        longest = max(chunk.shape[1] for chunk in labels)
        encoded["labels"] = torch.cat([torch.nn.functional.pad(c, (0, longest - c.shape[1])) for c in labels])
        encoded["labels_mask"] = torch.cat([torch.nn.functional.pad(m, (0, longest - m.shape[1])) for m in masks])
    else:
        encoded["labels"] = torch.cat(labels)
    return encoded


def train(model, tensors: dict[str, torch.Tensor], args: argparse.Namespace, output_dir: Path) -> dict:
    """
    Teacher-forced training on `tensors` (from `encode_rows`) for `args.max_steps` steps (or `args.max_minutes`).
    Logs the mean loss every `args.log_every` steps to stdout and `output_dir/metrics.jsonl`.

    Returns the report's training part: steps, seconds, first and last logged loss.
    """
    names = list(tensors)
    loader = DataLoader(TensorDataset(*tensors.values()), batch_size=args.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(args.seed))
    if len(loader) == 0:
        raise ValueError(f"--num_train_rows ({len(next(iter(tensors.values())))}) must be at least --batch_size "
                         f"({args.batch_size})")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, args.max_steps)
    model.train()
    step, losses, log = 0, [], []
    started = time.time()

    def out_of_time() -> bool:
        return bool(args.max_minutes) and time.time() - started > 60 * args.max_minutes

    with open(output_dir / "metrics.jsonl", "w") as metrics:
        while step < args.max_steps and not out_of_time():
            for values in loader:
                batch = {name: value.to(args.device) for name, value in zip(names, values)}
                loss = model(**batch).loss
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
                if step >= args.max_steps or out_of_time():
                    break
    if step < args.max_steps:
        print(f"stopped after {args.max_minutes} minutes at step {step}")
    model.eval()
    return {
        "steps": step,
        "train_seconds": round(time.time() - started, 1),
        "loss_first_log": log[0]["loss"] if log else None,
        "loss_last_log": log[-1]["loss"] if log else None,
    }


def decoded_columns(processor, data, modality: str) -> dict[str, list]:
    """
    The rows of `data` (conformed `--dataset` rows) that have a caption and `modality` and decode, as columns `text`
    and `image` (PIL) or `audio` (`{"array", "sampling_rate"}` at the feature extractor's rate); the others are
    skipped and counted.
    """
    from ..data.collate import TriModalCollator
    from ..data.decoding import CorruptSampleError
    from ..data.sources import CORRUPT_COLUMN

    collator = TriModalCollator(processor)
    rate = int(processor.feature_extractor.sampling_rate)
    columns: dict[str, list] = {"text": [], modality: []}
    skipped = 0
    for index in range(len(data)):
        row = data[index]
        view = {"text": row.get("text"), modality: row.get(modality), CORRUPT_COLUMN: row.get(CORRUPT_COLUMN)}
        try:
            text, image, audio = collator.decode_row(view, f"row {index}")
        except CorruptSampleError as error:
            skipped += 1
            print(f"skipped: {error}")
            continue
        value = image if modality == "image" else None if audio is None else {"array": audio, "sampling_rate": rate}
        if text is None or value is None:
            skipped += 1
            continue
        columns["text"].append(text)
        columns[modality].append(value)
    if not columns["text"]:
        raise ValueError(f"none of the {len(data)} rows has a caption and {'an' if modality == 'image' else 'a'} "
                         f"{modality} that decode")
    if skipped:
        print(f"skipped {skipped} of {len(data)} rows without a caption or {modality}, or that do not decode")
    return columns


def training_rows(args: argparse.Namespace, processor, modality: str):
    """
    `(train, held_out, eval_split)`: `args.num_train_rows` ShapeWorld rows rendered at the processor's sizes (no
    evaluation rows: the colour measurement makes its own prompts), or the training and evaluation rows of
    `--dataset` (`load_train_and_evaluation`: pre-training's held-out rule) as `decoded_columns`.
    """
    from ..data.synthetic import build_synthetic_dataset

    if args.dataset == "builtin":
        rows = build_synthetic_dataset(
            args.num_train_rows, seed=args.seed, split="train", image_size=int(processor.image_processor.image_size),
            sampling_rate=int(processor.feature_extractor.sampling_rate), max_shapes=args.max_shapes,
        )
        return rows, None, None
    train, held_out, eval_split = load_train_and_evaluation(args, args.num_train_rows, args.eval_rows)
    return decoded_columns(processor, train, modality), decoded_columns(processor, held_out, modality), eval_split


@torch.no_grad()
def code_loss(model, tensors: dict[str, torch.Tensor], batch_size: int, device: str) -> float:
    """The teacher-forced code loss of `tensors` (from `encode_rows`), averaged over the rows."""
    model.eval()
    total, rows = 0.0, len(tensors["labels"])
    for start in range(0, rows, batch_size):
        batch = {name: value[start : start + batch_size].to(device) for name, value in tensors.items()}
        total += model(**batch).loss.item() * len(batch["labels"])
    return total / rows


def run(args: argparse.Namespace, model_class, tokenizer, evaluate, image_tokenizer=None, audio_tokenizer=None) -> dict:
    """
    The whole fine-tuning command: build the model for `tokenizer` (passed again as `image_tokenizer` or
    `audio_tokenizer`), encode `args.num_train_rows` training rows (`training_rows`), train, save the model and
    processor to `args.output_dir`, and write `report.json`. On the built-in dataset `evaluate(model, processor,
    tokenizer, ...)` runs unless `args.skip_eval`; on another the report gives the code loss of its evaluation rows
    (`eval_loss`, `eval_split`).
    """
    from ..processing_opt_tri import OptTriProcessor

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    processor = OptTriProcessor.from_pretrained(args.processor or args.model)
    model = build_generator(model_class, args.model, processor, image_tokenizer, audio_tokenizer).to(args.device)
    started = time.time()
    rows, held_out, eval_split = training_rows(args, processor, "image" if image_tokenizer is not None else "audio")
    tensors = encode_rows(processor, rows, image_tokenizer, audio_tokenizer)
    print(f"encoded {len(rows['text'])} rows into codes {tuple(tensors['labels'].shape[1:])} in "
          f"{time.time() - started:.0f}s")
    report = train(model, tensors, args, output_dir)
    if held_out is not None:
        evaluation = encode_rows(processor, held_out, image_tokenizer, audio_tokenizer)
        report.update(eval_split=eval_split, eval_rows=len(held_out["text"]),
                      eval_loss=round(code_loss(model, evaluation, args.batch_size, args.device), 4))
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    dc = model.decoder_config
    # the loss of a uniform guess over what the decoder may write: the codes, and for audio the end code
    report.update(uniform_loss=round(math.log(dc.codebook_size + (dc.modality == "audio")), 4), args=vars(args))
    if not args.skip_eval and args.dataset == "builtin":  # the colour measurement needs ShapeWorld's prompts
        report["evaluation"] = evaluate(
            model, processor, tokenizer, num_prompts=args.eval_prompts, seed=args.seed, output_dir=output_dir,
            top_k=args.eval_top_k, temperature=args.eval_temperature,
        )
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


def add_evaluation_arguments(parser: CheckedArgumentParser, model_class_name: str, tokenizer_flag: str,
                             tokenizer_class_name: str) -> None:
    """The flags both evaluation scripts share: model, tokenizer, prompts and sampling, with rules."""
    parser.add_argument("--model", required=True, rule=string(), help=f"{model_class_name} checkpoint folder")
    parser.add_argument(tokenizer_flag, required=True, rule=string(), help=f"{tokenizer_class_name} folder")
    parser.add_argument("--processor", default=None, rule=string(optional=True), help="OptTriProcessor folder (default: --model)")
    parser.add_argument("--output_dir", default=None, rule=string(optional=True), help="default: --model")
    parser.add_argument("--num_prompts", type=int, default=120, rule=integer(1),
                        help="held-out prompts (balanced over 6 colours)")
    parser.add_argument("--seed", type=int, default=0, rule=SEED)
    parser.add_argument("--batch_size", type=int, default=24, rule=integer(1))
    parser.add_argument("--greedy", action="store_true", rule=flag())
    parser.add_argument("--temperature", type=float, default=1.0, rule=number(positive=True))
    parser.add_argument("--top_k", type=int, default=0, rule=integer(0))
    parser.add_argument("--top_p", type=float, default=1.0, rule=number(0.0, 1.0, positive=True))
    parser.add_argument("--num_threads", type=int, default=0, rule=integer(0), help="torch CPU threads (0: torch's default)")


def run_evaluation(args: argparse.Namespace, model_class, tokenizer, evaluate) -> dict:
    """Load `args.model` as `model_class` and its processor, and print `evaluate(...)`'s report."""
    from ..processing_opt_tri import OptTriProcessor

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    model = model_class.from_pretrained(args.model)
    processor = OptTriProcessor.from_pretrained(args.processor or args.model)
    report = evaluate(
        model, processor, tokenizer, num_prompts=args.num_prompts, seed=args.seed, batch_size=args.batch_size,
        output_dir=args.output_dir or args.model, do_sample=not args.greedy, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p,
    )
    print(json.dumps(report, indent=2))
    return report


# ---------------------------------------------------------------------------------------------- evaluation prompts
def prompt_color(text: str) -> str:
    """The one ShapeWorld colour a prompt names (raises unless it names exactly one)."""
    words = [w for w in text.lower().replace(",", " ").replace(".", " ").split() if w in COLORS]
    if len(set(words)) != 1:
        raise ValueError(f"the prompt {text!r} must name exactly one colour")
    return words[0]


def heldout_scenes(num_prompts: int, image_size: int, seed: int = 0, sampling_rate: int = 16000) -> list[dict]:
    """Single-shape validation scenes, balanced over the six colours (the first `num_prompts // 6` of each)."""
    world = ShapeWorld(seed=seed, image_size=image_size, sampling_rate=sampling_rate, max_shapes=1)
    per_color = max(1, num_prompts // len(COLORS))
    chosen: dict[str, list[dict]] = {name: [] for name in COLORS}
    index = split_offset("validation")
    while any(len(rows) < per_color for rows in chosen.values()):
        row = world.sample(index)
        index += 1
        if len(chosen[row["color"]]) < per_color:
            chosen[row["color"]].append(row)
    return [row for name in COLORS for row in chosen[name]]


def accuracy(predictions: list[str | None], targets: list[str]) -> float:
    """Fraction of predictions equal to their target (a `None` prediction is wrong)."""
    return float(np.mean([p == t for p, t in zip(predictions, targets)]))


def color_breakdown(predicted: list[str | None], targets: list[str]) -> dict:
    """Accuracy for each target colour, and how often each colour (or None) was predicted."""
    return {
        "per_color_accuracy": {
            name: accuracy([p for p, t in zip(predicted, targets) if t == name], [name] * targets.count(name))
            for name in COLORS
        },
        "predicted_color_counts": dict(Counter(str(p) for p in predicted)),
    }
