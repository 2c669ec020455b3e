"""Generate with OPT-Tri checkpoints: caption an image, transcribe audio, draw an image from text, speak from text.

    python examples/generate.py caption    --model outputs/caption    --image scene.png
    python examples/generate.py transcribe --model outputs/asr        --audio clip.wav
    python examples/generate.py draw       --model outputs/text2image --image_tokenizer outputs/image_tokenizer \
        --text "a red circle" "a blue square" --num_images 2 --top_k 64 --seed 0 --output_dir drawings
    python examples/generate.py speak      --model outputs/text2audio --audio_tokenizer outputs/audio_tokenizer \
        --text "a red circle" --seed 0 --output_dir speech

`--model` is a checkpoint folder (`save_pretrained` output) of the head the command needs:
`OptTriForConditionalGeneration` for `caption`/`transcribe`, `OptTriForTextToImage` for `draw` and
`OptTriForTextToAudio` for `speak` (a pre-training checkpoint loads too; the head's missing weights are then random,
and transformers says so). The processor (tokenizer, image processor, feature extractor) is read from `--processor`,
by default the model folder. `draw` and `speak` also need the VQ tokenizer folder whose codes the decoder writes
(`examples/train_image_tokenizer.py` / `train_audio_tokenizer.py`).

`caption`/`transcribe` print one JSON line per input with the text; `draw` writes `<output_dir>/image_<i>_<j>.png`
and `speak` writes `<output_dir>/audio_<i>_<j>.wav` (float32 WAV at the tokenizer's sampling rate) for prompt `i`,
sample `j`, and print one JSON line per file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from modeling_opt_tri import OptTriProcessor
from modeling_opt_tri.modeling_opt_tri import OptTriForConditionalGeneration, OptTriForTextToAudio, OptTriForTextToImage
from modeling_opt_tri.modeling_opt_tri_vq import OptTriAudioVQModel, OptTriImageVQModel


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder of the head this command uses")
    parser.add_argument("--processor", default=None, help="OptTriProcessor folder (default: --model)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num_threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def _add_sampling(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--text", nargs="+", required=True, help="one or more prompts")
    parser.add_argument("--output_dir", default=f"outputs/generated_{what}")
    parser.add_argument("--num_samples", "--num_images", dest="num_samples", type=int, default=1,
                        help=f"{what} per prompt")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (the same seed gives the same output)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0, help="0: no top-k filtering")
    parser.add_argument("--top_p", type=float, default=1.0, help="1.0: no nucleus filtering")
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per generate() call")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{caption,transcribe,draw,speak}")

    caption = commands.add_parser("caption", help="image(s) -> text", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_common(caption)
    caption.add_argument("--image", nargs="+", required=True, help="image file(s)")
    transcribe = commands.add_parser("transcribe", help="audio file(s) -> text",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_common(transcribe)
    transcribe.add_argument("--audio", nargs="+", required=True, help="audio file(s) readable by soundfile (WAV, FLAC)")
    for command in (caption, transcribe):
        command.add_argument("--max_new_tokens", type=int, default=30)
        command.add_argument("--num_beams", type=int, default=1)

    draw = commands.add_parser("draw", help="text -> image(s) (PNG)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_common(draw)
    draw.add_argument("--image_tokenizer", required=True, help="OptTriImageVQModel folder")
    _add_sampling(draw, "images")
    speak = commands.add_parser("speak", help="text -> audio (WAV)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_common(speak)
    speak.add_argument("--audio_tokenizer", required=True, help="OptTriAudioVQModel folder")
    speak.add_argument("--max_new_codes", type=int, default=None, help="most codes per clip (default: the decoder's)")
    speak.add_argument("--griffin_lim_iters", type=int, default=None, help="default: the tokenizer's")
    _add_sampling(speak, "audio")
    return parser.parse_args(argv)


def _folder(path: str, what: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise SystemExit(f"{what} {path!r} is not a checkpoint folder (no config.json)")
    return folder


def _read_audio(path: str) -> tuple[np.ndarray, int]:
    import soundfile

    waveform, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return waveform.mean(axis=1), int(rate)  # mono


def _text_to_text(args, processor, inputs: dict) -> list[str]:
    model = OptTriForConditionalGeneration.from_pretrained(_folder(args.model, "--model")).to(args.device).eval()
    inputs = {k: v.to(args.device) for k, v in inputs.items() if k in ("pixel_values", "image_mask", "input_features",
                                                                         "audio_attention_mask")}
    ids = model.generate(**inputs, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=False)
    return processor.batch_decode(ids, skip_special_tokens=True)


def _batches(texts: list[str], size: int):
    for start in range(0, len(texts), size):
        yield start, texts[start : start + size]


def _sampling_kwargs(args) -> dict:
    return dict(
        do_sample=not args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        num_return_sequences=args.num_samples,
    )


def run(args: argparse.Namespace) -> list[dict]:
    """Run one command; returns the JSON records it printed."""
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    processor = OptTriProcessor.from_pretrained(_folder(args.processor or args.model, "--processor"))
    records: list[dict] = []
    if args.command == "caption":
        from PIL import Image

        images = [Image.open(path).convert("RGB") for path in args.image]
        texts = _text_to_text(args, processor, processor(images=images, return_tensors="pt"))
        records = [{"image": path, "text": text} for path, text in zip(args.image, texts)]
    elif args.command == "transcribe":
        clips = [_read_audio(path) for path in args.audio]
        rates = {rate for _, rate in clips}
        if len(rates) != 1:
            raise SystemExit(f"transcribe reads files of one sampling rate per call; got {sorted(rates)} Hz")
        batch = processor(audio=[clip for clip, _ in clips], sampling_rate=rates.pop(), return_tensors="pt")
        texts = _text_to_text(args, processor, batch)
        records = [{"audio": path, "text": text} for path, text in zip(args.audio, texts)]
    else:
        out_dir = Path(args.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if args.command == "draw":
            model = OptTriForTextToImage.from_pretrained(_folder(args.model, "--model")).to(args.device).eval()
            tokenizer = OptTriImageVQModel.from_pretrained(_folder(args.image_tokenizer, "--image_tokenizer"))
        else:
            model = OptTriForTextToAudio.from_pretrained(_folder(args.model, "--model")).to(args.device).eval()
            tokenizer = OptTriAudioVQModel.from_pretrained(_folder(args.audio_tokenizer, "--audio_tokenizer"))
        tokenizer = tokenizer.to(args.device).eval()
        for start, prompts in _batches(args.text, args.batch_size):
            batch = processor(text=prompts, return_tensors="pt")
            batch = {k: v.to(args.device) for k, v in batch.items()}
            kwargs = dict(batch, seed=args.seed + start, **_sampling_kwargs(args))
            if args.command == "draw":
                outputs = model.generate_images(image_tokenizer=tokenizer, **kwargs)
            else:
                outputs, rate = model.generate_audio(
                    audio_tokenizer=tokenizer, griffin_lim_iters=args.griffin_lim_iters,
                    max_new_codes=args.max_new_codes, **kwargs,
                )
            for index, output in enumerate(outputs):
                prompt_index, sample = start + index // args.num_samples, index % args.num_samples
                record = {"text": args.text[prompt_index], "sample": sample, "seed": args.seed + start}
                if args.command == "draw":
                    path = out_dir / f"image_{prompt_index}_{sample}.png"
                    output.save(path)
                    record.update(file=str(path), size=list(output.size))
                else:
                    import soundfile

                    path = out_dir / f"audio_{prompt_index}_{sample}.wav"
                    soundfile.write(path, output, rate, subtype="FLOAT")
                    record.update(file=str(path), sampling_rate=rate, seconds=round(len(output) / rate, 3))
                records.append(record)
    for record in records:
        print(json.dumps(record))
    return records


def main(argv=None) -> list[dict]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
