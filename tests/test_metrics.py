"""Offline evaluation metrics (modeling_opt_tri/metrics): loading by path without network, known answers,
cross-checks against reference implementations when they happen to be installed, and input validation."""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import random
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402

evaluate = pytest.importorskip("evaluate")

from modeling_opt_tri import metrics as M  # noqa: E402

# --------------------------------------------------------------------------------------------- network guard


def _is_loopback(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def network_blocked():
    """Make every non-loopback name lookup or connection fail (and remember it, in case it gets swallowed)."""
    attempts: list[str] = []
    real_getaddrinfo = socket.getaddrinfo
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            attempts.append(f"getaddrinfo({host!r})")
            raise OSError(f"network access is blocked in this test: lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def _check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            attempts.append(f"connect({address!r})")
            raise OSError(f"network access is blocked in this test: connect to {address!r}")

    def connect(self, address):
        _check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        _check(self, address)
        return real_connect_ex(self, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", getaddrinfo)
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        yield attempts


@pytest.fixture(autouse=True)
def _no_network():
    with network_blocked() as attempts:
        yield
    assert not attempts, f"network was accessed: {attempts}"


@pytest.fixture(scope="module")
def loaded():
    """Every metric loaded by path through `evaluate.load`, with the network blocked."""
    with network_blocked() as attempts:
        out = {name: evaluate.load(M.metric_path(name), keep_in_memory=True) for name in M.AVAILABLE_METRICS}
    assert not attempts, f"network was accessed while loading: {attempts}"
    return out


def test_network_guard_blocks_remote_hosts():
    with network_blocked() as attempts:  # nested, so these deliberate attempts are not charged to the test
        with pytest.raises(OSError, match="blocked"):
            socket.getaddrinfo("huggingface.co", 443)
        with pytest.raises(OSError, match="blocked"):
            socket.create_connection(("203.0.113.1", 443), timeout=0.1)
        with pytest.raises(OSError, match="blocked"), socket.socket() as sock:
            sock.connect(("203.0.113.1", 443))
        socket.getaddrinfo("localhost", 80)  # loopback stays allowed
    assert len(attempts) == 3


# --------------------------------------------------------------------------------------------- loading


def test_metric_path_and_unknown_name():
    for name in M.AVAILABLE_METRICS:
        path = M.metric_path(name)
        assert os.path.isabs(path) and os.path.isfile(os.path.join(path, f"{name}.py"))
    with pytest.raises(ValueError, match="Unknown metric"):
        M.metric_path("rouge")


@pytest.mark.parametrize("name", ["recall_at_k", "vqa_accuracy", "bleu", "cider", "wer"])
def test_loads_offline_by_path(name, loaded):
    metric = loaded[name]
    assert isinstance(metric, evaluate.Metric)
    assert metric.description.strip() and metric.citation.strip() and metric.inputs_description.strip()
    assert metric.features is not None
    # the package helper, with evaluate's default on-disk cache, gives the same module
    via_helper = M.load_metric(name)
    assert type(via_helper).__name__ == type(metric).__name__


def test_load_metric_computes_with_default_cache():
    wer = M.load_metric("wer")
    assert wer.compute(predictions=["a b"], references=["a c"])["wer"] == 0.5


# --------------------------------------------------------------------------------------------- recall@k


def test_recall_perfect_and_hand_computed(loaded):
    recall = loaded["recall_at_k"]
    gallery = [f"img{i}" for i in range(12)]
    perfect = recall.compute(predictions=[gallery] * 3, references=[["img0"], ["img0", "img5"], ["img0"]])
    assert perfect == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "mean_rank": 1.0, "median_rank": 1.0}

    # first-hit ranks 1, 3, 7, 12 -> R@1 1/4, R@5 2/4, R@10 3/4, mean 23/4, median 5
    refs = [["img0"], ["img2", "img9"], ["img6"], ["img11"]]
    out = recall.compute(predictions=[gallery] * 4, references=refs)
    assert out == {"R@1": 0.25, "R@5": 0.5, "R@10": 0.75, "mean_rank": 5.75, "median_rank": 5.0}
    assert M.recall_at_k([gallery] * 4, refs) == out  # plain helper, same numbers
    # integer ids and custom ks
    ints = recall.compute(predictions=[[3, 1, 2], [3, 1, 2]], references=[[1], [3]], ks=[1, 2])
    assert ints == {"R@1": 0.5, "R@2": 1.0, "mean_rank": 1.5, "median_rank": 1.5}
    # a truncated ranking without a correct id: rank len + 1, a miss at every k
    missing = M.recall_at_k([["a", "b"]], [["z"]], ks=[1, 2])
    assert missing == {"R@1": 0.0, "R@2": 0.0, "mean_rank": 3.0, "median_rank": 3.0}


def test_recall_from_similarity_matrix():
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(20, 30))
    sim[:, 7] = sim[:, 3]  # a tie: stable order puts column 3 before 7
    positives = [[i, (i * 7) % 30] for i in range(20)]
    ranked = M.rank_gallery(sim)
    assert ranked[0] == [int(j) for j in np.argsort(-sim[0], kind="stable")]
    expected = M.recall_at_k(ranked, positives, ks=[1, 5, 10])
    assert M.retrieval_metrics_from_similarity(sim, positives, ks=[1, 5, 10]) == expected
    # paired batch, identity similarity -> perfect
    out = M.retrieval_metrics_from_similarity(np.eye(5), [[c] for c in "abcde"], gallery_ids=list("abcde"), ks=[1])
    assert out == {"R@1": 1.0, "mean_rank": 1.0, "median_rank": 1.0}
    torch = pytest.importorskip("torch")
    assert M.retrieval_metrics_from_similarity(torch.tensor(sim), positives, ks=[1, 5, 10]) == expected


def test_recall_bad_inputs(loaded):
    recall = loaded["recall_at_k"]
    with pytest.raises(ValueError, match="Mismatch"):
        recall.compute(predictions=[["a", "b"]], references=[["a"], ["b"]])
    with pytest.raises(ValueError, match="empty references"):
        recall.compute(predictions=[["a", "b"]], references=[[]])
    with pytest.raises(ValueError, match="duplicate"):
        M.recall_at_k([["a", "a"]], [["a"]])
    with pytest.raises(ValueError, match="ks"):
        M.recall_at_k([["a"]], [["a"]], ks=[0])
    with pytest.raises(ValueError, match="2-D"):
        M.rank_gallery([1.0, 2.0])


# --------------------------------------------------------------------------------------------- VQA accuracy


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_official_leave_one_out_formula(loaded, matches, expected):
    # 10 human answers, `matches` of them equal to the prediction: mean over the 10 leave-one-out subsets of
    # min(#matches in subset / 3, 1)  (e.g. 1 match: 9 subsets score 1/3, one scores 0 -> 0.3)
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    out = loaded["vqa_accuracy"].compute(predictions=["cat"], references=[answers])
    assert out["accuracy"] == pytest.approx(expected, abs=1e-12)


def test_vqa_normalisation(loaded):
    norm = M.normalize_vqa_answer
    assert norm("Two") == norm("2") == norm("two.") == "2"
    assert norm("The Dog!") == norm("a dog") == "dog"
    assert norm("dont know") == "don't know"
    assert norm("Yes\n") == "yes"
    assert norm("1,000") == "1000"  # digit,digit: punctuation dropped rather than spaced
    assert norm("3.5") == "3.5"  # a period before a digit stays
    assert norm("red/white") == "red white"
    vqa = loaded["vqa_accuracy"]
    answers = ["2", "2", "two", "Two", "2 ", "3", "three", "2", "2", "2"]
    assert vqa.compute(predictions=["Two"], references=[answers])["accuracy"] == 1.0
    # mean over questions: 1.0 and 0.3
    two_q = vqa.compute(predictions=["yes", "no"], references=[["yes"] * 10, ["no"] + ["yes"] * 9])
    assert two_q["accuracy"] == pytest.approx(0.65)


def test_vqa_strict_official_mode():
    # The official script leaves human answers un-normalised when all agree (the released annotations are
    # already normalised), so a raw "Two" x10 never matches the normalised prediction "2" there.
    assert M.vqa_accuracy(["Two"], [["Two"] * 10], strict_official=True)["accuracy"] == 0.0
    assert M.vqa_accuracy(["Two"], [["Two"] * 10])["accuracy"] == 1.0
    # on normalised annotations both modes agree
    answers = ["2"] * 2 + ["3"] * 8
    assert M.vqa_accuracy(["two"], [answers], strict_official=True) == M.vqa_accuracy(["two"], [answers])
    # a single human answer has no leave-one-out subset: exact match
    assert M.vqa_accuracy(["yes", "no"], [["Yes"], ["yes"]])["accuracy"] == 0.5


def test_vqa_bad_inputs(loaded):
    vqa = loaded["vqa_accuracy"]
    with pytest.raises(ValueError, match="Mismatch"):
        vqa.compute(predictions=["a", "b"], references=[["a"] * 10])
    with pytest.raises(ValueError, match="empty references"):
        vqa.compute(predictions=["a"], references=[[]])
    with pytest.raises(ValueError, match="empty"):
        M.vqa_accuracy([], [])


# --------------------------------------------------------------------------------------------- BLEU


def test_bleu_perfect_and_hand_computed(loaded):
    bleu = loaded["bleu"]
    perfect = bleu.compute(predictions=["The cat is on the mat."], references=[["The cat is on the mat.", "A cat."]])
    assert perfect["bleu"] == 1.0 and perfect["brevity_penalty"] == 1.0
    # p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0/3; same length -> BP = 1
    out = bleu.compute(predictions=["the cat sat on the mat"], references=[["the cat is on the mat"]])
    assert out["precisions"] == pytest.approx([5 / 6, 3 / 5, 1 / 4, 0.0])
    assert out["bleu_1"] == pytest.approx(5 / 6)
    assert out["bleu_2"] == pytest.approx(math.sqrt(0.5))
    assert out["bleu_3"] == pytest.approx(0.5)
    assert out["bleu_4"] == out["bleu"] == 0.0
    smoothed = bleu.compute(predictions=["the cat sat on the mat"], references=[["the cat is on the mat"]], smooth=True)
    assert smoothed["bleu"] == pytest.approx((6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25)  # add-one, all orders
    exp = bleu.compute(predictions=["the cat sat on the mat"], references=[["the cat is on the mat"]], smooth="exp")
    assert exp["bleu"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25)  # zero p4 -> 1 / (2 * 3)
    # clipping: "the" counted at most once (its max count in a reference)
    clipped = M.corpus_bleu(["the the the the"], [["the cat"]], max_order=1)
    assert clipped["precisions"] == [0.25]


def test_bleu_brevity_penalty(loaded):
    bleu = loaded["bleu"]
    short = bleu.compute(predictions=["the cat"], references=[["the cat is on the mat"]], max_order=2)
    assert short["precisions"] == [1.0, 1.0]
    assert short["brevity_penalty"] == pytest.approx(math.exp(1 - 6 / 2))
    assert short["bleu"] == pytest.approx(math.exp(-2.0))
    assert short["translation_length"] == 2 and short["reference_length"] == 6
    # the closest reference length counts (ties -> the shorter one): 4 tokens vs refs of 3 and 5 -> r = 3
    tie = M.corpus_bleu(["a b c d"], [["a b c", "a b c d e"]])
    assert tie["reference_length"] == 3 and tie["brevity_penalty"] == 1.0
    # corpus-level: lengths pooled before the penalty (c = 2 + 6 = 8, r = 6 + 6 = 12)
    pooled = M.corpus_bleu(["the cat", "the cat is on the mat"], [["the cat is on the mat"]] * 2)
    assert pooled["brevity_penalty"] == pytest.approx(math.exp(1 - 12 / 8))
    assert M.corpus_bleu([""], [["a b"]])["bleu"] == 0.0


def test_bleu_tokenisation_and_single_reference_strings(loaded):
    assert M.tokenize_13a("Hello, world! It costs $3.50 (approx.)") == [
        "Hello", ",", "world", "!", "It", "costs", "$", "3.50", "(", "approx", ".", ")"
    ]
    bleu = loaded["bleu"]
    assert bleu.compute(predictions=["Hello, World!"], references=["hello , world !"], lowercase=True)["bleu"] == 1.0
    assert bleu.compute(predictions=["Hello, World!"], references=["hello , world !"])["bleu"] < 1.0


def _random_corpus(seed: int, n: int = 40, min_len: int = 4):
    rng = random.Random(seed)
    vocab = "the a cat dog sat on mat is red blue big small runs over , . 3.5 don't (yes) U.S. x-ray &amp;".split()

    def sentence():
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(min_len, 14)))

    preds = [sentence() for _ in range(n)]
    refs = [[sentence() for _ in range(3)] for _ in range(n)]
    for i in range(0, n, 2):  # some real overlap so that 4-gram precision is not zero
        refs[i][0] = preds[i].replace("cat", "dog", 1)
    return preds, refs


def test_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    preds, refs = _random_corpus(0)
    ref_streams = [list(stream) for stream in zip(*refs)]
    for ours_smooth, sb_smooth in (("none", "none"), ("exp", "exp")):
        ours = M.corpus_bleu(preds, refs, smooth=ours_smooth)
        ref = sacrebleu.corpus_bleu(preds, ref_streams, smooth_method=sb_smooth, tokenize="13a")
        assert 100 * ours["bleu"] == pytest.approx(ref.score, abs=1e-9)
        assert ours["brevity_penalty"] == pytest.approx(ref.bp)
    upper = [p.upper() for p in preds]
    ref = sacrebleu.corpus_bleu(upper, ref_streams, smooth_method="none", lowercase=True)
    assert 100 * M.corpus_bleu(upper, refs, lowercase=True)["bleu"] == pytest.approx(ref.score, abs=1e-9)
    tokenizer = sacrebleu.tokenizers.tokenizer_13a.Tokenizer13a()
    for text in preds:
        assert M.tokenize_13a(text) == tokenizer(text).split()


def test_bleu_matches_nltk():
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    # NLTK divides by max(1, #candidate n-grams), so keep candidates >= 4 tokens where that makes no difference
    preds, refs = _random_corpus(1, min_len=4)
    ours = M.corpus_bleu(preds, refs, tokenize="none")
    for n in range(1, 5):
        expected = bleu_score.corpus_bleu(
            [[r.split() for r in rs] for rs in refs], [p.split() for p in preds], weights=(1 / n,) * n
        )
        assert ours[f"bleu_{n}"] == pytest.approx(expected, abs=1e-12)


def test_bleu_bad_inputs(loaded):
    bleu = loaded["bleu"]
    with pytest.raises(ValueError, match="Mismatch"):
        bleu.compute(predictions=["a b", "c"], references=[["a b"]])
    with pytest.raises(ValueError, match="empty references"):
        bleu.compute(predictions=["a b"], references=[[]])
    with pytest.raises(ValueError, match="smooth"):
        M.corpus_bleu(["a"], [["a"]], smooth="floor")
    with pytest.raises(ValueError, match="empty"):
        M.corpus_bleu([], [])


# --------------------------------------------------------------------------------------------- CIDEr-D


def test_cider_hand_computed_tiny_corpus(loaded):
    # 2 images -> idf = log 2 - log df. "a" occurs in both images' references: idf 0; every other n-gram: log 2.
    # Image 1, candidate "a b c":
    #   vs "a b c" (identical): cosine 1 for n = 1, 2, 3; no 4-grams -> 0; length penalty 1      -> [1, 1, 1, 0]
    #   vs "a b d": unigrams share b only: (log2)^2 / (sqrt2 log2)^2 = 0.5; bigrams share "a b": 0.5;
    #               trigrams none -> 0                                                              -> [.5, .5, 0, 0]
    #   mean over n of the sum, / 2 references, x 10 = (4 / 4) / 2 * 10 = 5
    # Image 2, candidate "e" vs "a e": unigram cosine 1 (the "a" term has weight 0); no bigrams; the length
    #   (bigram count) differs by 1 -> penalty exp(-1 / 72): score = exp(-1/72) / 4 * 10
    out = loaded["cider"].compute(predictions=["a b c", "e"], references=[["a b c", "a b d"], ["a e"]])
    assert out["scores"] == pytest.approx([5.0, 2.5 * math.exp(-1 / 72)], abs=1e-12)
    assert out["cider"] == pytest.approx((5.0 + 2.5 * math.exp(-1 / 72)) / 2, abs=1e-12)


def test_cider_matching_candidate_beats_unrelated(loaded):
    refs = [
        ["a man riding a horse on a beach", "a person rides a horse along the beach"],
        ["two dogs playing with a red ball", "a pair of dogs play with a ball"],
        ["a plate of pasta with tomato sauce", "spaghetti with red sauce on a plate"],
    ]
    cider = loaded["cider"]
    good = cider.compute(predictions=[r[0] for r in refs], references=refs)
    unrelated = ["a bowl of soup", "an airplane in the sky", "a man riding a horse"]
    bad = cider.compute(predictions=unrelated, references=refs)
    assert good["cider"] > 3 * bad["cider"]
    for g, b in zip(good["scores"], bad["scores"]):
        assert g > b
    # clipping: repeating a matching word does not raise the score
    rep = M.cider_d(["man man man man horse", "dogs", "pasta"], refs)["scores"][0]
    once = M.cider_d(["man horse", "dogs", "pasta"], refs)["scores"][0]
    assert rep < once
    # the simple tokenizer lowercases and drops punctuation like coco-caption's PTBTokenizer step
    assert M.cider_d(["A man, riding a horse on a beach!"], [refs[0]])["cider"] == pytest.approx(
        M.cider_d(["a man riding a horse on a beach"], [refs[0]])["cider"]
    )


def test_cider_matches_pycocoevalcap():
    cider_module = pytest.importorskip("pycocoevalcap.cider.cider")
    preds, refs = _random_corpus(2, n=30, min_len=1)
    expected_mean, expected_scores = cider_module.Cider().compute_score(
        {i: refs[i] for i in range(len(refs))}, {i: [preds[i]] for i in range(len(preds))}
    )
    ours = M.cider_d(preds, refs, tokenize="none")
    assert ours["cider"] == pytest.approx(float(expected_mean), abs=1e-12)
    assert ours["scores"] == pytest.approx([float(s) for s in expected_scores], abs=1e-12)


def test_cider_bad_inputs(loaded):
    cider = loaded["cider"]
    with pytest.raises(ValueError, match="Mismatch"):
        cider.compute(predictions=["a"], references=[["a"], ["b"]])
    with pytest.raises(ValueError, match="empty references"):
        cider.compute(predictions=["a", "b"], references=[["a"], []])


# --------------------------------------------------------------------------------------------- WER / CER


def test_wer_known_answers(loaded):
    wer = loaded["wer"]
    perfect = wer.compute(predictions=["hello world", "a b c"], references=["hello world", "a b c"])
    assert perfect["wer"] == 0.0 and perfect["hits"] == 5
    # 1 deletion / 4 reference words
    assert wer.compute(predictions=["the cat sat"], references=["the cat sat down"])["wer"] == 0.25
    # ref "the cat sat on the mat" (6) vs "the bat sat on mat today": bat/cat sub, "the" deleted, "today" inserted
    out = wer.compute(predictions=["the bat sat on mat today"], references=["the cat sat on the mat"])
    assert (out["substitutions"], out["deletions"], out["insertions"], out["hits"]) == (1, 1, 1, 4)
    assert out["wer"] == pytest.approx(3 / 6)
    # corpus-level pooling: (1 + 0) edits / (1 + 3) words, not the mean of 1.0 and 0.0
    pooled = wer.compute(predictions=["b", "x y z"], references=["a", "x y z"])
    assert pooled["wer"] == 0.25 and pooled["reference_length"] == 4
    # many insertions: WER above 1; an empty reference sentence is fine when the corpus has words
    assert wer.compute(predictions=["a b c d", "x"], references=["a", ""])["wer"] == 4.0
    # characters
    cer = wer.compute(predictions=["kitten"], references=["sitting"], cer=True)
    assert cer["cer"] == pytest.approx(3 / 7) and "wer" not in cer
    assert M.word_error_rate(["Hello  World"], ["hello world"], lowercase=True)["wer"] == 0.0


def test_wer_matches_jiwer():
    jiwer = pytest.importorskip("jiwer")
    preds, refs = _random_corpus(3, n=50, min_len=0)
    refs = [r[1] for r in refs]
    assert M.word_error_rate(preds, refs)["wer"] == pytest.approx(jiwer.wer(refs, preds), abs=1e-12)
    assert M.word_error_rate(preds, refs, cer=True)["cer"] == pytest.approx(jiwer.cer(refs, preds), abs=1e-12)


def test_wer_bad_inputs(loaded):
    wer = loaded["wer"]
    with pytest.raises(ValueError, match="Mismatch"):
        wer.compute(predictions=["a"], references=["a", "b"])
    with pytest.raises(ValueError, match="empty references"):
        wer.compute(predictions=["a"], references=[""])
    with pytest.raises(ValueError, match="empty"):
        wer.compute(predictions=[], references=[])
