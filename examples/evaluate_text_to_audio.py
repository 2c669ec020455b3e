"""Measure how often an OPT-Tri text-to-audio model sounds the pitch of the colour its prompt names.

    python examples/evaluate_text_to_audio.py --model outputs/text2audio --audio_tokenizer outputs/audio_tokenizer

ShapeWorld sonifies a scene one tone per shape, and a shape's colour is the tone's fundamental (red 220 Hz, green 330,
blue 495, yellow 742, purple 1114, orange 1670: a fifth apart). The prompts are the captions of held-out
(validation-split) single-shape scenes, so each names one colour. For every generated waveform a plain spectral
statistic (`dominant_pitch_color`) gives the colour whose fundamental band (+/-8%, which covers the star's +/-7%
vibrato) holds the most energy of the clip's power spectrum (none for a silent clip). The figure is the fraction of
waveforms whose colour is the prompt's.

For calibration the same statistic is reported on the real held-out clips (how well the statistic works), on their
round trip through the audio tokenizer (codes -> log-mel -> Griffin-Lim: the best a decoder over these codes can
reach), and the chance level (1/6). The statistic says nothing about timbre (shape), loudness or duration (size);
the generated durations are reported beside the real ones.

Writes `<output_dir>/pitch_report.json` and `<output_dir>/generated_<colour>.wav` (one sample per colour).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from modeling_opt_tri import OptTriProcessor
from modeling_opt_tri.data.synthetic import COLOR_PITCH_HZ, COLORS
from modeling_opt_tri.modeling_opt_tri import OptTriForTextToAudio
from modeling_opt_tri.modeling_opt_tri_vq import OptTriAudioVQModel
from modeling_opt_tri.training import text_to_code
from modeling_opt_tri.training.arguments import CheckedArgumentParser
from modeling_opt_tri.training.text_to_code import accuracy, color_breakdown, heldout_scenes, prompt_color


BAND = 0.08  # relative half-width of each colour's fundamental band
MIN_RMS = 1e-3  # quieter clips count as silent (ShapeWorld's background noise alone has an RMS of 0.004)


def dominant_pitch_color(waveform: np.ndarray, sampling_rate: int) -> str | None:
    """The ShapeWorld colour whose fundamental band holds the most energy of `waveform`, or `None` when it is silent."""
    wave = np.asarray(waveform, dtype=np.float64).reshape(-1)
    if wave.size < 2 or np.sqrt(np.mean(wave**2)) < MIN_RMS:
        return None
    power = np.abs(np.fft.rfft(wave * np.hanning(wave.size))) ** 2
    frequencies = np.fft.rfftfreq(wave.size, d=1.0 / sampling_rate)
    energy = [power[(frequencies >= f0 / (1 + BAND)) & (frequencies <= f0 * (1 + BAND))].sum() for f0 in
              (COLOR_PITCH_HZ[name] for name in COLORS)]
    return COLORS[int(np.argmax(energy))]


@torch.no_grad()
def evaluate(
    model: OptTriForTextToAudio,
    processor: OptTriProcessor,
    audio_tokenizer: OptTriAudioVQModel,
    num_prompts: int = 120,
    seed: int = 0,
    batch_size: int = 24,
    output_dir: str | Path | None = None,
    **sampling,
) -> dict:
    """Generate one clip per held-out prompt and measure the pitch agreement (see the module docstring)."""
    model.eval()
    audio_tokenizer.eval()
    real_rate = int(processor.feature_extractor.sampling_rate)  # the scenes' clips are rendered at this rate
    scenes = heldout_scenes(num_prompts, int(processor.image_processor.image_size), sampling_rate=real_rate)
    prompts = [row["text"] for row in scenes]
    targets = [prompt_color(text) for text in prompts]
    device = next(model.parameters()).device
    generated: list[np.ndarray] = []
    started = time.time()
    for start in range(0, len(prompts), batch_size):
        batch = processor(text=prompts[start : start + batch_size], return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        waves, rate = model.generate_audio(audio_tokenizer=audio_tokenizer, seed=seed + start, **batch, **sampling)
        generated += waves
    seconds = time.time() - started

    real = [np.asarray(row["audio"]["array"], dtype=np.float32) for row in scenes]
    features = processor.feature_extractor(real, sampling_rate=real_rate, return_tensors="pt")
    codes, mask = audio_tokenizer.encode(features["input_features"], features["audio_attention_mask"], return_mask=True)
    round_trip, _ = audio_tokenizer.decode_waveform(codes, mask, seed=seed)

    predicted = [dominant_pitch_color(wave, rate) for wave in generated]
    report = {
        "num_prompts": len(prompts),
        "sampling": {"seed": seed, **sampling},
        "generated_pitch_accuracy": accuracy(predicted, targets),
        "real_audio_pitch_accuracy": accuracy([dominant_pitch_color(w, real_rate) for w in real], targets),
        "tokenizer_round_trip_pitch_accuracy": accuracy([dominant_pitch_color(w, rate) for w in round_trip], targets),
        "chance": 1.0 / len(COLORS),
        "generated_silent": sum(p is None for p in predicted),
        **color_breakdown(predicted, targets),
        "generated_seconds_mean": round(float(np.mean([w.size / rate for w in generated])), 3),
        "real_seconds_mean": round(float(np.mean([w.size / real_rate for w in real])), 3),
        "generation_seconds": round(seconds, 1),
    }
    if output_dir is not None:
        import soundfile

        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        for name in COLORS:
            first = targets.index(name)
            soundfile.write(output_dir / f"generated_{name}.wav", generated[first], rate, subtype="FLOAT")
        (output_dir / "pitch_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def build_parser() -> CheckedArgumentParser:
    parser = CheckedArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    text_to_code.add_evaluation_arguments(parser, "OptTriForTextToAudio", "--audio_tokenizer", "OptTriAudioVQModel")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    tokenizer = OptTriAudioVQModel.from_pretrained(args.audio_tokenizer)
    return text_to_code.run_evaluation(args, OptTriForTextToAudio, tokenizer, evaluate)


if __name__ == "__main__":
    main()
