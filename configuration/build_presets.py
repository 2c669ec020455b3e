"""Write the named presets (`tiny`, `base`, `large`) into `configuration/<name>/`.

Each preset folder holds `config.json` plus the processor and tokenizer files, so that

    OptTriConfig.from_pretrained("configuration/tiny")
    OptTriProcessor.from_pretrained("configuration/tiny")
    AutoConfig.from_pretrained("configuration/tiny")      # once `modeling_opt_tri` is imported

all work. The tokenizer is a lowercase WordPiece vocabulary trained on the captions and questions of the built-in
ShapeWorld dataset (Hub tokenizers cannot be downloaded here). For real data, start the text encoder from a local
BERT/RoBERTa folder with `OptTriForPreTraining.from_unimodal_pretrained(text=...)` and use that tokenizer.

Usage: python configuration/build_presets.py [--presets tiny base large]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from modeling_opt_tri import OptTriConfig, OptTriFeatureExtractor, OptTriImageProcessor, OptTriProcessor
from modeling_opt_tri.data import ShapeWorld
from modeling_opt_tri.tokenizer_training import build_wordpiece_tokenizer

HERE = Path(__file__).resolve().parent


def _encoder(hidden: int, layers: int, heads: int, **extra) -> dict:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * hidden, **extra)


#: Geometry of each preset. `base` follows OPT-base: 12-layer 768-wide encoders, a 6-layer cross-modal encoder, ViT
#: patch 16 at 224 px, audio at 16 kHz. `tiny` trains in minutes on 2 CPU cores.
PRESETS: dict[str, dict] = {
    "tiny": dict(
        text=_encoder(128, 2, 4, max_position_embeddings=64),
        vision=_encoder(128, 2, 4, image_size=64, patch_size=16),
        audio=_encoder(128, 2, 4, num_mel_bins=32, patch_frames=4, max_position_embeddings=64),
        fusion=_encoder(128, 2, 4),
        decoder=_encoder(128, 2, 4, max_position_embeddings=48),
        # the tiny VQ tokenizers of examples/train_{image,audio}_tokenizer.py: 512 image codes (8 x 8 per 64-px image),
        # 256 audio codes (one per 4 frames; 64 codes = the 256 frames the audio encoder reads)
        image_decoder=dict(codebook_size=512, grid_size=8),
        audio_decoder=dict(codebook_size=256, num_codes=64),
        projection_dim=64,
        max_text_length=48,
        max_audio_seconds=2.5,
        # contrastive weight 5: above the full set with weight 1 in every run of docs/RECIPE.md (+4.4 to +6.0 points
        # of mean R@1) and above contrastive only in two of three; the other weights are the defaults
        objectives=dict(contrastive=5.0),
    ),
    "base": dict(
        text=_encoder(768, 12, 12, max_position_embeddings=512),
        vision=_encoder(768, 12, 12, image_size=224, patch_size=16),
        audio=_encoder(768, 12, 12, num_mel_bins=80, patch_frames=4, max_position_embeddings=256),
        fusion=_encoder(768, 6, 12),
        decoder=_encoder(768, 6, 12, max_position_embeddings=128),
        image_decoder=dict(codebook_size=8192, grid_size=28),  # 224 px, 8x downsampling
        audio_decoder=dict(codebook_size=1024, num_codes=256),
        projection_dim=256,
        max_text_length=128,
        max_audio_seconds=10.0,
    ),
    "large": dict(
        text=_encoder(1024, 24, 16, max_position_embeddings=512),
        vision=_encoder(1024, 24, 16, image_size=224, patch_size=16),
        audio=_encoder(1024, 24, 16, num_mel_bins=80, patch_frames=4, max_position_embeddings=256),
        fusion=_encoder(1024, 12, 16),
        decoder=_encoder(1024, 12, 16, max_position_embeddings=128),
        image_decoder=dict(codebook_size=8192, grid_size=28),
        audio_decoder=dict(codebook_size=1024, num_codes=256),
        projection_dim=512,
        max_text_length=128,
        max_audio_seconds=10.0,
    ),
}


def shapeworld_corpus(rows: int = 4000, seed: int = 1234) -> list[str]:
    world = ShapeWorld(seed=seed, image_size=16)
    corpus: list[str] = []
    for index in range(rows):
        row = world.make_text_only(index) if hasattr(world, "make_text_only") else world.sample(index)
        corpus.append(row["text"])
        corpus.extend(row["questions"])
        corpus.extend(row["answers"])
    return corpus


def build_preset(name: str, tokenizer, out_dir: Path) -> None:
    spec = PRESETS[name]
    tokenizer.model_max_length = spec["max_text_length"]
    vocab = tokenizer.get_vocab()
    config = OptTriConfig(
        text_config=dict(model_type="bert", vocab_size=len(vocab), pad_token_id=vocab["[PAD]"], **spec["text"]),
        vision_config=dict(model_type="vit", **spec["vision"]),
        audio_config=spec["audio"],
        cross_modal_config=spec["fusion"],
        text_decoder_config=dict(
            vocab_size=len(vocab), bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"], pad_token_id=vocab["[PAD]"],
            **spec["decoder"],
        ),
        image_decoder_config=dict(spec["image_decoder"]),  # geometry: the cross-modal encoder's
        audio_decoder_config=dict(spec["audio_decoder"]),
        projection_dim=spec["projection_dim"],
        mask_token_id=vocab["[MASK]"],
        special_token_ids=sorted(vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")),
    )
    config.objectives = {**config.objectives, **spec.get("objectives", {})}
    processor = OptTriProcessor(
        image_processor=OptTriImageProcessor(image_size=spec["vision"]["image_size"]),
        feature_extractor=OptTriFeatureExtractor(
            feature_size=spec["audio"]["num_mel_bins"],
            sampling_rate=16000,
            max_length_seconds=spec["max_audio_seconds"],
            pad_to_multiple_of=spec["audio"]["patch_frames"],
        ),
        tokenizer=tokenizer,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    _strip_remote_code(out_dir)
    print(f"wrote {out_dir}")


def _strip_remote_code(folder: Path) -> None:
    """Presets are for installed users: drop the copied Hub files and `auto_map` (real checkpoints keep them)."""
    for path in folder.glob("*.py"):
        path.unlink()
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.exists():
            data = json.loads(path.read_text())
            _drop_auto_map(data)
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _drop_auto_map(node) -> None:
    if isinstance(node, dict):
        node.pop("auto_map", None)
        for value in node.values():
            _drop_auto_map(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    tokenizer = build_wordpiece_tokenizer(shapeworld_corpus(), vocab_size=512, model_max_length=64)
    for name in args.presets:
        build_preset(name, tokenizer, args.out / name)


if __name__ == "__main__":
    main()
