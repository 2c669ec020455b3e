"""Shared fixtures: tiny OPT-Tri configs, models and batches built locally (no downloads)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
FSDD_DIR = REPO_ROOT.parent / "shared" / "data" / "fsdd"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def tiny_config(**overrides):
    """A very small OPT-Tri config: vocab 100, 32-px images with 8-px patches, 16 mel bins."""
    from modeling_opt_tri import OptTriConfig

    kwargs = dict(
        text_config=dict(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, pad_token_id=0,
        ),
        vision_config=dict(
            model_type="vit", image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64,
        ),
        audio_config=dict(
            num_mel_bins=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64,
        ),
        cross_modal_config=dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96),
        text_decoder_config=dict(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=40, bos_token_id=2, eos_token_id=3, pad_token_id=0,
        ),
        projection_dim=16,
        mask_token_id=4,
        special_token_ids=[0, 1, 2, 3],
    )
    kwargs.update(overrides)
    return OptTriConfig(**kwargs)


def tiny_batch(batch: int = 4, text_len: int = 10, frames: int = 40, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs for `tiny_config()` with some padding in text and audio."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 100, (batch, text_len), generator=g)
    input_ids[:, 0] = 2
    attention_mask = torch.ones(batch, text_len, dtype=torch.long)
    attention_mask[1 % batch, text_len // 2 :] = 0
    audio_attention_mask = torch.ones(batch, frames, dtype=torch.long)
    audio_attention_mask[2 % batch, frames // 2 :] = 0
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": torch.randn(batch, 3, 32, 32, generator=g),
        "image_mask": torch.ones(batch, dtype=torch.long),
        "input_features": torch.randn(batch, 16, frames, generator=g),
        "audio_attention_mask": audio_attention_mask,
    }


@pytest.fixture
def config():
    return tiny_config()


@pytest.fixture
def batch():
    return tiny_batch()


def require_fsdd():
    if not (FSDD_DIR / "recordings").is_dir():
        pytest.skip(f"{FSDD_DIR} not found: the real-speech (FSDD) tests need ../shared/data/fsdd next to the repo")
    return FSDD_DIR


WITHOUT_OUR_PACKAGE = textwrap.dedent(
    """
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_opt_tri" or name.startswith("modeling_opt_tri."):
                raise ImportError(f"{name} is blocked: this process must work from the saved folders alone")
            return None
    sys.meta_path.insert(0, _Block())
    try:
        import modeling_opt_tri
    except ImportError:
        pass
    else:
        raise SystemExit("modeling_opt_tri is importable: the test would not prove anything")
    """
)


def run_without_our_package(body: str, tmp_path: Path) -> dict:
    """
    Run the Python source `body` in a fresh interpreter (cwd `tmp_path`, offline, its own remote-code cache) where
    `modeling_opt_tri` cannot be imported, so every class must come from saved folders through trust_remote_code.
    `body` saves its results with `torch.save(..., "<tmp_path>/outputs.pt")`; they are returned.
    """
    script = WITHOUT_OUR_PACKAGE + textwrap.dedent(body)
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(tmp_path / "outputs.pt")


def _single_thread():
    """torch on one thread for the test: tiny models run faster so on a shared 2-core machine, and deterministically.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")` (or `"one_thread_module"`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


one_thread = pytest.fixture(_single_thread, name="one_thread")
one_thread_module = pytest.fixture(_single_thread, scope="module", name="one_thread_module")
