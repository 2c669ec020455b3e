"""push_to_hub / from_pretrained("user/repo") round trip against the local Hub stand-in (no network)."""

import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hub_server import NO_EXTERNAL_NETWORK_SNIPPET, LocalHub, hub_env, no_external_network  # noqa: E402

from transformers import BertConfig, BertModel, BertTokenizerFast  # noqa: E402

REPO = "user/tiny-bert"
TEXT = "the quick brown fox jumps over the lazy dog unknownword 9"

SUBPROCESS_CODE = NO_EXTERNAL_NETWORK_SNIPPET + textwrap.dedent(
    """
    import os, sys, torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import cached_file
    repo, text, out = sys.argv[1], sys.argv[2], sys.argv[3]
    tok = AutoTokenizer.from_pretrained(repo)
    model = AutoModel.from_pretrained(repo).eval()
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    torch.save({"input_ids": enc["input_ids"], "hidden": hidden, "model_cls": type(model).__name__,
                "tok_cls": type(tok).__name__, "commit": os.path.basename(os.path.dirname(cached_file(repo, "config.json")))}, out)
    """
)


def _tiny_tokenizer():
    words = "the quick brown fox jumps over lazy dog hello world cat an of to in is".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + list("abcdefghijklmnopqrstuvwxyz")
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += [f"tok{i}" for i in range(100 - len(vocab))]
    assert len(vocab) == 100
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)})
    assert len(tok) == 100  # not the silent 5-token vocab
    return tok


def _tiny_model():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64)
    return BertModel(config).eval()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with no_external_network() as attempts, LocalHub() as hub:
        hub.patch(monkeypatch, tmp_path / "inproc_cache")
        yield hub
        assert attempts == [], f"something tried to reach the network: {attempts}"
        assert hub.unhandled == [], f"requests the local hub did not understand: {hub.unhandled}"


def test_push_to_hub_and_load_in_fresh_process(hub, tmp_path):
    model, tok = _tiny_model(), _tiny_tokenizer()

    model.push_to_hub(REPO)
    tok.push_to_hub(REPO)

    files = hub.files(REPO)
    assert {"config.json", "model.safetensors", "README.md", ".gitattributes", "tokenizer.json",
            "tokenizer_config.json"} <= set(files), sorted(files)
    commits_after_first = hub.commits(REPO)
    assert len(commits_after_first) == 3  # create_repo's initial commit + model + tokenizer

    # The server keeps exactly the bytes save_pretrained writes.
    local = tmp_path / "local"
    model.save_pretrained(local)
    assert files["model.safetensors"] == (local / "model.safetensors").read_bytes()
    assert files["config.json"] == (local / "config.json").read_bytes()

    # Fresh interpreter, nothing shared but the env: load by repo id over HTTP from the local hub.
    out = tmp_path / "out.pt"
    n_before = len(hub.requests)
    proc = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_CODE, REPO, TEXT, str(out)],
        env=hub_env(hub.endpoint, tmp_path / "subproc_cache"), cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    sub_requests = hub.requests[n_before:]
    assert any(m == "GET" and "/resolve/" in p and p.endswith("/model.safetensors") for m, p in sub_requests), sub_requests

    got = torch.load(out)
    assert got["model_cls"] == "BertModel"
    assert got["commit"] == hub.head(REPO)
    enc = tok(TEXT, return_tensors="pt")
    assert torch.equal(got["input_ids"], enc["input_ids"])
    assert tok.unk_token_id in enc["input_ids"][0].tolist()
    with torch.no_grad():
        expected = model(**enc).last_hidden_state
    assert torch.equal(got["hidden"], expected)  # bit-identical

    # Pushing unchanged files is a no-op (preupload reports the remote oid, as the real Hub does) ...
    model.push_to_hub(REPO)
    assert hub.commits(REPO) == commits_after_first
    # ... while changed weights make a new commit on main, and the old commit stays downloadable.
    with torch.no_grad():
        model.pooler.dense.bias.add_(1.0)
    model.push_to_hub(REPO, commit_message="second push")
    commits = hub.commits(REPO)
    assert len(commits) == len(commits_after_first) + 1 and commits[:-1] == commits_after_first
    assert hub.head(REPO) == commits[-1]
    assert hub.files(REPO)["model.safetensors"] != files["model.safetensors"]
    assert hub.files(REPO, revision=commits_after_first[-1])["model.safetensors"] == files["model.safetensors"]

    from huggingface_hub import HfApi, hf_hub_download

    assert [c.commit_id for c in HfApi().list_repo_commits(REPO)] == commits[::-1]
    old = hf_hub_download(REPO, "model.safetensors", revision=commits_after_first[-1])
    with open(old, "rb") as f:
        assert f.read() == files["model.safetensors"]


def test_missing_file_is_entry_not_found(hub):
    from huggingface_hub import create_repo, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    create_repo(REPO)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "does-not-exist.bin")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, ".gitattributes", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/no-such-repo", "config.json")

    req = urllib.request.Request(f"{hub.endpoint}/{REPO}/resolve/main/does-not-exist.bin", method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 404
    assert info.value.headers["X-Error-Code"] == "EntryNotFound"
    assert info.value.headers["X-Repo-Commit"] == hub.head(REPO)

    with urllib.request.urlopen(f"{hub.endpoint}/{REPO}/resolve/main/.gitattributes", timeout=10) as resp:
        assert resp.headers["X-Repo-Commit"] == hub.head(REPO)
        assert resp.headers["ETag"].strip('"') and resp.read() == hub.files(REPO)[".gitattributes"]
