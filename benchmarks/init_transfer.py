"""Initialisation carries over, measured: does a pre-trained audio tower help OPT-Tri pre-training?

    python benchmarks/init_transfer.py --output_dir outputs/init_transfer [--fsdd ../shared/data/fsdd]
        [--takes 12] [--classifier_epochs 8] [--pretrain_steps 120] [--eval_takes 10] [--threads 1]

1. (a) `classifier`: our log-mel audio encoder (`OptTriAudioModel`, the tiny preset's geometry) plus a linear layer on
   its `[CLS]` state is trained to classify the spoken digit of FSDD recordings (8 kHz, resampled by our feature
   extractor) from five speakers, and its encoder is saved (`save_pretrained`).
2. OPT-Tri (tiny preset) is pre-trained with the contrastive objective on audio-text rows of the same five speakers,
   the text being the digit's word ("seven"), through `run_pretraining` (what `examples/pretrain.py` runs):
   (b) `initialised`: `--init_audio` from the saved encoder; (c) `random`: from random initialisation;
   (d) `frozen`: `--init_audio` and `--freeze audio` (only the text tower, the projections and the rest train).
3. Zero-shot audio -> text accuracy on the sixth speaker (never seen by any run): each held-out recording is given the
   digit word whose text embedding is closest to its audio embedding, among the 10 words (chance: 10%).

The figures (accuracy per run, the classifier's own accuracy on the held-out speaker, steps, wall times) are printed
and written to `<output_dir>/results.json`. Everything is seeded, so a run repeats its figures; the text tokenizer's
vocabulary is the ten words (and BERT's special tokens), so no word is `[UNK]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from modeling_opt_tri import OptTriAudioModel, OptTriConfig, OptTriModel, OptTriProcessor  # noqa: E402
from modeling_opt_tri.data.collate import TriModalCollator  # noqa: E402
from modeling_opt_tri.data.decoding import decode_audio  # noqa: E402
from modeling_opt_tri.data.folder import load_metadata_folder  # noqa: E402
from modeling_opt_tri.data.fsdd import DIGIT_WORDS as DIGITS, HELD_OUT_SPEAKER, fsdd_recordings, write_fsdd_folder  # noqa: E402
from modeling_opt_tri.training.evaluation import embed_batches, retrieval_metrics  # noqa: E402
from modeling_opt_tri.training.pretrain import PretrainArguments, run_pretraining  # noqa: E402

PRESET = REPO_ROOT / "configuration" / "tiny"
RUNS = {"initialised": dict(init=True, freeze=None), "random": dict(init=False, freeze=None),
        "frozen": dict(init=True, freeze="audio")}


def write_digit_tokenizer(folder: Path) -> Path:
    """A WordPiece tokenizer whose vocabulary is BERT's special tokens and the ten digit words, in a fixed order (a
    trained one orders tied pieces differently from run to run, which changes the text tower's initial embeddings)."""
    from transformers import BertTokenizerFast

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *DIGITS]
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(vocabulary)}, model_max_length=16)
    tokenizer.save_pretrained(folder)
    return folder


def recordings(folder: Path, split: str) -> list[tuple[Path, int]]:
    """(path, digit) of the rows of a split of the FSDD folder written by `write_fsdd_folder`."""
    rows = load_metadata_folder(folder, split=split)
    return [(Path(path), DIGITS.index(text)) for path, text in zip(rows["audio"], rows["text"])]


def features(processor: OptTriProcessor, rows: list[tuple[Path, int]]) -> dict[str, torch.Tensor]:
    """Log-mel features of the recordings, resampled from 8 kHz by our feature extractor, and their digits."""
    waves, rates = zip(*(decode_audio(str(path)) for path, _ in rows))
    batch = processor(audio=list(waves), sampling_rate=rates[0], return_tensors="pt")
    return {"input_features": batch["input_features"], "audio_attention_mask": batch["audio_attention_mask"],
            "labels": torch.tensor([digit for _, digit in rows])}


class DigitClassifier(nn.Module):
    """An `OptTriAudioModel` and a linear layer on its `[CLS]` state."""

    def __init__(self, config):
        super().__init__()
        self.encoder = OptTriAudioModel(config)
        self.head = nn.Linear(config.hidden_size, len(DIGITS))

    def forward(self, input_features: torch.Tensor, audio_attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_features, audio_attention_mask).pooler_output)


def train_classifier(train: dict, test: dict, epochs: int, batch_size: int, lr: float, seed: int, folder: Path) -> dict:
    """(a): train the digit classifier, save its encoder to `folder`; its accuracy on the held-out speaker."""
    torch.manual_seed(seed)
    model = DigitClassifier(OptTriConfig.from_pretrained(PRESET).audio_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    rows = len(train["labels"])
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(rows, generator=generator).split(batch_size):
            logits = model(train["input_features"][index], train["audio_attention_mask"][index])
            loss = nn.functional.cross_entropy(logits, train["labels"][index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(test["input_features"], test["audio_attention_mask"]).argmax(-1)
    model.encoder.save_pretrained(folder)
    return {"heldout_accuracy": float((predicted == test["labels"]).float().mean()), "epochs": epochs,
            "train_rows": rows, "last_loss": loss.item()}


@torch.no_grad()
def zero_shot_accuracy(folder: Path, data: Path) -> float:
    """Audio -> text accuracy of the pre-trained model in `folder` on the held-out speaker among the ten digit words:
    class-level retrieval (`match="text"`) of the validation split, whose text gallery holds each word once."""
    model = OptTriModel.from_pretrained(folder).eval()
    processor = OptTriProcessor.from_pretrained(folder)
    rows = list(load_metadata_folder(data, split="validation"))
    loader = torch.utils.data.DataLoader(rows, batch_size=64, collate_fn=TriModalCollator(processor))
    encoded = embed_batches(model, loader, progress=False, match="text")
    return retrieval_metrics(encoded, ks=(1,), match="text")["audio->text"]["R@1"]


def pretrain(name: str, args: argparse.Namespace, data: Path, tokenizer: Path, encoder: Path) -> Path:
    """(b) / (c) / (d): one contrastive pre-training run; returns its `final/` folder."""
    run = RUNS[name]
    output = Path(args.output_dir) / name
    run_pretraining(PretrainArguments(
        preset=str(PRESET), dataset=str(data), tokenizer=str(tokenizer), output_dir=str(output),
        objectives="contrastive=1", max_steps=args.pretrain_steps, batch_size=args.batch_size,
        learning_rate=args.pretrain_lr, warmup_steps=min(10, args.pretrain_steps // 10), seed=args.seed,
        init_audio=str(encoder) if run["init"] else None, freeze=run["freeze"], save_steps=0,
        save_total_limit=1, num_workers=0, evaluate=False, tensorboard=False, progress=False, logging_steps=10,
    ))
    return output / "final"


def run(args: argparse.Namespace) -> dict:
    """The whole experiment; returns the results (also written to `<output_dir>/results.json`)."""
    start = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    speakers = sorted({speaker for _, speaker, _, _ in fsdd_recordings(args.fsdd)})
    heldout = args.heldout_speaker
    if heldout not in speakers or len(speakers) < 2:
        raise ValueError(f"--heldout_speaker {heldout!r} must be one of the FSDD speakers {speakers} (of at least two)")
    train_speakers = [speaker for speaker in speakers if speaker != heldout]
    data = out / "data"
    write_fsdd_folder(args.fsdd, data, (heldout,), takes=args.takes, eval_takes=args.eval_takes)
    train_rows, test_rows = recordings(data, "train"), recordings(data, "validation")
    tokenizer = write_digit_tokenizer(out / "tokenizer")
    processor = OptTriProcessor.from_pretrained(PRESET)
    train, test = features(processor, train_rows), features(processor, test_rows)
    results = {"train_speakers": train_speakers, "heldout_speaker": heldout, "train_rows": len(train_rows),
               "heldout_rows": len(test_rows), "chance": 1 / len(DIGITS), "runs": {}}
    t0 = time.perf_counter()
    results["classifier"] = train_classifier(train, test, args.classifier_epochs, args.batch_size, args.classifier_lr,
                                             args.seed, out / "audio_classifier_encoder")
    results["classifier"]["seconds"] = round(time.perf_counter() - t0, 1)
    for name in RUNS:
        t0 = time.perf_counter()
        final = pretrain(name, args, data, tokenizer, out / "audio_classifier_encoder")
        results["runs"][name] = {"zero_shot_accuracy": zero_shot_accuracy(final, data), "steps": args.pretrain_steps,
                                 "seconds": round(time.perf_counter() - t0, 1)}
    results["seconds"] = round(time.perf_counter() - start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def report(results: dict) -> str:
    lines = [f"speakers {', '.join(results['train_speakers'])} -> held out {results['heldout_speaker']} "
             f"({results['train_rows']} training / {results['heldout_rows']} held-out recordings; chance "
             f"{100 * results['chance']:.0f}%)",
             f"(a) digit classifier: held-out accuracy {100 * results['classifier']['heldout_accuracy']:.1f}% "
             f"({results['classifier']['epochs']} epochs, {results['classifier']['seconds']} s)",
             f"{'pre-training run':<20}{'zero-shot audio->text':>23}{'steps':>7}{'seconds':>9}"]
    for name, entry in results["runs"].items():
        lines.append(f"{name:<20}{100 * entry['zero_shot_accuracy']:>22.1f}%{entry['steps']:>7}{entry['seconds']:>9}")
    lines.append(f"total wall time {results['seconds']} s")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--fsdd", default=str(REPO_ROOT.parent / "shared" / "data" / "fsdd"))
    parser.add_argument("--heldout_speaker", default=HELD_OUT_SPEAKER, help="the speaker no run trains on")
    parser.add_argument("--takes", type=int, default=12, help="training takes per digit and speaker (of 50)")
    parser.add_argument("--eval_takes", type=int, default=10, help="held-out takes per digit")
    parser.add_argument("--classifier_epochs", type=int, default=8)
    parser.add_argument("--classifier_lr", type=float, default=1e-3)
    parser.add_argument("--pretrain_steps", type=int, default=120)
    parser.add_argument("--pretrain_lr", type=float, default=5e-4)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    for name in ("takes", "eval_takes", "classifier_epochs", "pretrain_steps", "batch_size", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be an integer >= 1, got {getattr(args, name)}")
    if max(args.takes, args.eval_takes) > 50:
        raise SystemExit("--takes and --eval_takes must be at most 50 (FSDD has 50 takes per digit and speaker)")
    torch.set_num_threads(args.threads)
    results = run(args)
    print(report(results))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
