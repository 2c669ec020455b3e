"""Train the OPT-Tri audio tokenizer (`OptTriAudioVQModel`, a VQ autoencoder over log-mel frames) with accelerate.

The data is the built-in ShapeWorld dataset (`build_synthetic_dataset`), processed by the feature extractor of an
`OptTriProcessor` folder (`configuration/tiny` by default: 32 mel bins at 16 kHz, 10 ms hop). The defaults are a tiny
tokenizer that trains in a few minutes on 2 CPU cores: one code per 4 frames (40 ms), 256 codes. The
`OptTriAudioVQConfig` defaults (80 mel bins, 1024 codes, 256 hidden channels) are for real runs.

    python examples/train_audio_tokenizer.py --output_dir /tmp/audio_tokenizer
    accelerate launch examples/train_audio_tokenizer.py --mixed_precision bf16 --processor configuration/base \
        --codebook_size 1024 --hidden_channels 256 --num_res_blocks 2 --max_steps 20000 --output_dir out/audio_vq

It logs the reconstruction error, the perplexity, the codebook usage and the dead-code restarts (tqdm and
`metrics.jsonl`), evaluates on held-out (validation-split) clips, and writes to `--output_dir`:

- the tokenizer (`save_pretrained`) and the feature extractor (`preprocessor_config.json`);
- `report.json` with the spectral error: the mean squared log-mel error of the VQ round trip (normalised feature
  units and natural-log units), and for Griffin-Lim waveforms re-analysed by the feature extractor, the spectral
  convergence and log-mel error against the original clip's features, both for the round trip
  (codes -> log-mel -> Griffin-Lim) and for Griffin-Lim of the original log-mel alone (the vocoder's own share);
- `original.wav`, `roundtrip.wav` (codes -> log-mel -> Griffin-Lim) and `griffin_lim_of_original.wav` for the first
  held-out clip, and `spectrograms.png` and `loss_curve.png` (when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import time
import wave
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, TensorDataset

from modeling_opt_tri import OptTriProcessor
from modeling_opt_tri.configuration_opt_tri_vq import OptTriAudioVQConfig
from modeling_opt_tri.data.synthetic import build_synthetic_dataset
from modeling_opt_tri.modeling_opt_tri_vq import OptTriAudioVQModel, spectral_convergence
from modeling_opt_tri.training.plots import save_vq_loss_curve
from modeling_opt_tri.training.vq import add_vq_training_arguments, train_vq

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--processor", default=str(REPO_ROOT / "configuration" / "tiny"),
                        help="OptTriProcessor folder whose feature extractor computes the log-mel frames")
    parser.add_argument("--output_dir", default="outputs/audio_tokenizer")
    parser.add_argument("--num_train_rows", type=int, default=2048, help="ShapeWorld training rows")
    parser.add_argument("--num_eval_rows", type=int, default=32, help="held-out (validation split) rows")
    parser.add_argument("--num_griffin_lim_clips", type=int, default=8, help="held-out clips vocoded for the report")
    add_vq_training_arguments(parser, max_steps=1000, dead_code_threshold=0.25)
    # tokenizer (the defaults are the tiny setting; see OptTriAudioVQConfig for the full-size defaults)
    parser.add_argument("--codebook_size", type=int, default=256)
    parser.add_argument("--embedding_dim", type=int, default=32)
    parser.add_argument("--hidden_channels", type=int, default=128)
    parser.add_argument("--num_res_blocks", type=int, default=1)
    parser.add_argument("--frames_per_code", type=int, default=4)
    parser.add_argument("--griffin_lim_iters", type=int, default=32)
    return parser.parse_args(argv)


def load_features(processor: OptTriProcessor, num_rows: int, seed: int, split: str):
    """ShapeWorld rows of `split` -> (`input_features` `(N, n_mels, T)`, `audio_attention_mask` `(N, T)`, clips)."""
    extractor = processor.feature_extractor
    dataset = build_synthetic_dataset(num_rows, seed=seed, split=split, sampling_rate=extractor.sampling_rate)
    clips = [np.asarray(audio["array"], dtype=np.float32) for audio in dataset["audio"]]
    rate = int(dataset[0]["audio"]["sampling_rate"])
    batch = processor(audio=clips, sampling_rate=rate, return_tensors="pt")  # padded to the longest clip
    return batch["input_features"], batch["audio_attention_mask"], clips, rate


@torch.no_grad()
def evaluate(model: OptTriAudioVQModel, features: torch.Tensor, mask: torch.Tensor, batch_size: int = 32) -> dict:
    """Masked log-mel MSE of the VQ round trip and codebook use on held-out features."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    squared, count = 0.0, 0.0
    histogram = torch.zeros(model.config.codebook_size, device=device)
    for start in range(0, features.shape[0], batch_size):
        x, m = features[start : start + batch_size].to(device), mask[start : start + batch_size].to(device)
        output = model(x, m)
        frame_mask = m.unsqueeze(1).float()
        squared += float((((output.reconstruction.float() - x) ** 2) * frame_mask).sum())
        count += float(frame_mask.sum()) * x.shape[1]
        histogram += torch.bincount(output.codes[output.codes_mask.bool()], minlength=model.config.codebook_size)
    model.train(was_training)
    probabilities = histogram / histogram.sum()
    mse = squared / max(count, 1.0)
    return {
        "log_mel_mse": mse,  # normalised feature units
        "log_mel_mse_nat_log": mse * model.config.mel_std**2,  # squared error of ln(mel)
        "codes_used_pct": 100.0 * float((histogram > 0).float().mean()),
        "perplexity": float(torch.exp(-(probabilities * torch.log(probabilities + 1e-10)).sum())),
    }


def write_wav(path: Path, waveform: np.ndarray, rate: int) -> float:
    """16-bit PCM WAV; scaled down (and the gain returned) only if the peak exceeds 0.99."""
    peak = float(np.abs(waveform).max()) if waveform.size else 0.0
    gain = 0.99 / peak if peak > 0.99 else 1.0
    pcm = np.clip(waveform * gain, -1.0, 1.0)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((pcm * 32767.0).round().astype("<i2").tobytes())
    return gain


@torch.no_grad()
def spectral_report(model, processor, features, mask, clips, rate, count, output_dir: Path) -> dict:
    """Griffin-Lim of the VQ round trip and of the original log-mel, re-analysed by the feature extractor and compared
    with the original features; writes the WAVs and the spectrogram figure."""
    extractor = processor.feature_extractor
    model.eval()
    device = next(model.parameters()).device
    x, m = features[:count].to(device), mask[:count].to(device)
    codes, codes_mask = model.encode(x, m, return_mask=True)
    reconstruction = model.decode(codes, codes_mask)[..., : x.shape[-1]].float().cpu()
    x, m = x.cpu(), m.cpu()
    roundtrip, _ = model.decode_waveform(reconstruction, m)
    vocoded, _ = model.decode_waveform(x, m)
    results = {"roundtrip": [], "griffin_lim_of_original": []}
    reanalysed_first = {}
    for name, waveforms in (("roundtrip", roundtrip), ("griffin_lim_of_original", vocoded)):
        for row, waveform in enumerate(waveforms):
            frames = int(m[row].sum())
            reference = x[row, :, :frames]
            again = extractor(waveform, sampling_rate=model.config.sampling_rate, return_tensors="pt")["input_features"][0]
            estimate = again[:, :frames]
            results[name].append({
                "spectral_convergence": model.spectral_convergence(reference, estimate),
                "log_mel_mse": float(((estimate - reference) ** 2).mean()),
            })
            if row == 0:
                reanalysed_first[name] = estimate
    summary = {
        name: {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} for name, rows in results.items()
    }
    frames0 = int(m[0].sum())
    summary["vq_log_mel_mse_these_clips"] = float(
        (((reconstruction - x) ** 2) * m.unsqueeze(1)).sum() / (m.sum() * x.shape[1])
    )
    summary["vq_log_mel_spectral_convergence_these_clips"] = spectral_convergence(
        x, reconstruction, m, model.config.mel_mean, model.config.mel_std
    )
    gains = {
        "original.wav": write_wav(output_dir / "original.wav", clips[0], rate),
        "roundtrip.wav": write_wav(output_dir / "roundtrip.wav", roundtrip[0], model.config.sampling_rate),
        "griffin_lim_of_original.wav": write_wav(output_dir / "griffin_lim_of_original.wav", vocoded[0], model.config.sampling_rate),
    }
    summary["wav_gains"] = gains
    summary["wav_files"] = [str((output_dir / name).resolve()) for name in gains]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [
            ("original log-mel", x[0, :, :frames0]),
            ("VQ reconstruction", reconstruction[0, :, :frames0]),
            ("round trip: Griffin-Lim, re-analysed", reanalysed_first["roundtrip"]),
            ("Griffin-Lim of the original, re-analysed", reanalysed_first["griffin_lim_of_original"]),
        ]
        figure, axes = plt.subplots(len(panels), 1, figsize=(8, 9), sharex=True)
        for axis, (title, image) in zip(axes, panels):
            axis.imshow(image.numpy(), origin="lower", aspect="auto", vmin=-2.5, vmax=2.5, cmap="magma")
            axis.set_title(title, fontsize=9)
            axis.set_ylabel("mel bin")
        axes[-1].set_xlabel("frame (10 ms)")
        figure.tight_layout()
        figure.savefig(output_dir / "spectrograms.png", dpi=90)
        plt.close(figure)
        summary["spectrogram_png"] = str((output_dir / "spectrograms.png").resolve())
    except ImportError:
        pass
    return summary


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
        train_features, train_mask, _, _ = load_features(processor, args.num_train_rows, args.seed, "train")
        eval_features, eval_mask, eval_clips, rate = load_features(processor, args.num_eval_rows, args.seed, "validation")
    config = OptTriAudioVQConfig.from_feature_extractor(
        processor.feature_extractor,
        frames_per_code=args.frames_per_code,
        codebook_size=args.codebook_size,
        embedding_dim=args.embedding_dim,
        hidden_channels=args.hidden_channels,
        num_res_blocks=args.num_res_blocks,
        commitment_cost=args.commitment_cost,
        ema_decay=args.ema_decay,
        dead_code_threshold=args.dead_code_threshold,
        griffin_lim_iters=args.griffin_lim_iters,
    )
    model = OptTriAudioVQModel(config)
    accelerator.print(
        f"audio tokenizer: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {config.codebook_size} "
        f"codes, one per {config.frames_per_code} frames of {config.num_mel_bins} mel bins; "
        f"{len(train_features)} train / {len(eval_features)} held-out clips (up to {train_features.shape[-1]} frames)"
    )
    initial = evaluate(model.to(accelerator.device), eval_features, eval_mask)

    loader = DataLoader(TensorDataset(train_features, train_mask), batch_size=args.batch_size, shuffle=True, drop_last=True)

    def audio_step(m, batch):
        features, mask = batch
        length = int(mask.sum(1).max())  # drop the columns that are padding for the whole batch
        length += (-length) % config.frames_per_code
        return m(features[..., :length], mask[:, :length])

    unwrapped, history, train_seconds = train_vq(
        model, loader, args, accelerator, output_dir, audio_step, "audio VQ", "log-mel MSE"
    )
    step = len(history)

    accelerator.wait_for_everyone()
    report: dict = {}
    if accelerator.is_main_process:
        final = evaluate(unwrapped, eval_features, eval_mask)
        unwrapped.save_pretrained(output_dir)
        processor.feature_extractor.save_pretrained(output_dir)
        gl_start = time.time()
        spectral = spectral_report(
            unwrapped, processor, eval_features, eval_mask, eval_clips, rate, args.num_griffin_lim_clips, output_dir
        )
        curve = save_vq_loss_curve(history, output_dir / "loss_curve.png", "log-mel MSE (normalised units, real frames)")
        first, last = history[0], history[-1]
        report = {
            "steps": step,
            "train_seconds": round(train_seconds, 1),
            "griffin_lim_seconds": round(time.time() - gl_start, 1),
            "train_log_mel_mse_first_step": first["reconstruction_loss"],
            "train_log_mel_mse_last_step": last["reconstruction_loss"],
            "train_log_mel_mse_last_25_mean": float(np.mean([h["reconstruction_loss"] for h in history[-25:]])),
            "heldout_before": initial,
            "heldout_after": final,
            "griffin_lim": spectral,
            "batch_codebook_usage_pct_last": last["codebook_usage_pct"],
            "window_codes_used_pct_last": last.get("window_codes_used_pct"),
            "num_restarts": last["num_restarts"],
            "loss_curve_png": str((output_dir / "loss_curve.png").resolve()) if curve else None,
            "tokenizer_dir": str(output_dir.resolve()),
            "args": vars(args),
        }
        (output_dir / "report.json").write_text(json.dumps(report, indent=2))
        rt, gl = spectral["roundtrip"], spectral["griffin_lim_of_original"]
        accelerator.print(
            f"\ntrained {step} steps in {train_seconds:.0f} s\n"
            f"train log-mel MSE: first step {first['reconstruction_loss']:.4f} -> last step {last['reconstruction_loss']:.4f}\n"
            f"held-out VQ log-mel MSE (normalised units): {initial['log_mel_mse']:.4f} -> {final['log_mel_mse']:.4f} "
            f"({final['log_mel_mse_nat_log']:.3f} in ln(mel)^2)\n"
            f"held-out codes used: {final['codes_used_pct']:.1f}% of {config.codebook_size} "
            f"(perplexity {final['perplexity']:.1f}); "
            f"dead-code restarts: {last['num_restarts']}\n"
            f"Griffin-Lim ({config.griffin_lim_iters} iterations, {args.num_griffin_lim_clips} held-out clips, "
            f"re-analysed by the feature extractor vs the original features):\n"
            f"  VQ round trip:        spectral convergence {rt['spectral_convergence']:.3f}, "
            f"log-mel MSE {rt['log_mel_mse']:.4f}\n"
            f"  original mel only:    spectral convergence {gl['spectral_convergence']:.3f}, "
            f"log-mel MSE {gl['log_mel_mse']:.4f}\n"
            f"WAVs: {', '.join(spectral['wav_files'])}\ntokenizer: {report['tokenizer_dir']}"
        )
    return report


if __name__ == "__main__":
    main()
