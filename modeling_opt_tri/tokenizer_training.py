"""Train a small lowercase WordPiece (BERT-style) tokenizer for OPT-Tri, and fit a config to a tokenizer.

(Formerly `modeling_opt_tri.tokenization`, which still imports with a `FutureWarning` for one release.)

This module is *not* a Hub file: it is only needed to build a tokenizer, never to load one. A tokenizer
built here is an ordinary `transformers.BertTokenizerFast`; once saved, it reloads with
`AutoTokenizer.from_pretrained(directory)` without this package.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizerFast

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""Special tokens, in id order: `[PAD]` is 0, `[UNK]` 1, `[CLS]` 2, `[SEP]` 3, `[MASK]` 4."""


def _non_empty(corpus: Iterable[str]) -> Iterator[str]:
    """Yield the non-empty strings of `corpus`; raise `TypeError` on a non-string entry."""
    for index, text in enumerate(corpus):
        if not isinstance(text, str):
            raise TypeError(f"corpus entry {index} is a {type(text).__name__}, expected str")
        if text.strip():
            yield text


def build_wordpiece_tokenizer(
    corpus: Iterable[str],
    vocab_size: int = 8192,
    min_frequency: int = 1,
    model_max_length: int = 64,
    save_directory: str | os.PathLike | None = None,
) -> BertTokenizerFast:
    """Train a lowercase WordPiece tokenizer on `corpus` and wrap it as a `BertTokenizerFast`.

    The pipeline is BERT's: `BertNormalizer` (lowercase, strip accents, clean text), `BertPreTokenizer`,
    WordPiece with `##` continuation prefix, and a post-processor that builds `[CLS] A [SEP]` and
    `[CLS] A [SEP] B [SEP]` (token type ids 0 / 1).

    Args:
        corpus: Texts to train on (any iterable, consumed once). Empty strings are skipped.
        vocab_size: Upper bound on the vocabulary size, special tokens included. The trained vocabulary is
            smaller when the corpus does not have enough distinct pieces.
        min_frequency: Minimum count for a merged piece to enter the vocabulary.
        model_max_length: The tokenizer's `model_max_length` (longest sequence, special tokens included).
        save_directory: When given, the tokenizer is saved there with `save_pretrained`.

    Returns:
        A `BertTokenizerFast` with `[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3, `[MASK]`=4.

    Raises:
        ValueError: if `vocab_size` is too small for the special tokens, `min_frequency < 1`,
            `model_max_length < 2`, or the corpus holds no text.
        TypeError: if a corpus entry is not a string.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    if model_max_length < 2:
        raise ValueError(f"model_max_length must be >= 2 ([CLS] and [SEP]), got {model_max_length}")
    texts = list(_non_empty(corpus))
    if not texts:
        raise ValueError("corpus holds no non-empty text to train the tokenizer on")
    backend = _trained_wordpiece(texts, vocab_size, min_frequency)
    tokenizer = BertTokenizerFast(
        tokenizer_object=backend,
        do_lower_case=True,  # transformers 5.0 defaults to False; be explicit
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )
    if len(tokenizer) != backend.get_vocab_size():
        raise RuntimeError(
            f"wrapped tokenizer has {len(tokenizer)} tokens but the trained one has {backend.get_vocab_size()}"
        )
    if save_directory is not None:
        tokenizer.save_pretrained(os.fspath(save_directory))
    return tokenizer


def _trained_wordpiece(texts: list[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    """BERT's pipeline (normaliser, pre-tokenizer, `##` WordPiece, `[CLS] A [SEP] (B [SEP])` template) trained on
    `texts`, with the special tokens first and the learned pieces numbered in sorted order."""
    unk, cls, sep = "[UNK]", "[CLS]", "[SEP]"
    backend = Tokenizer(models.WordPiece(unk_token=unk, continuing_subword_prefix="##"))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # The trainer numbers tokens in hash-map order, which changes from run to run: renumber them (special tokens
    # first, then the rest sorted) so that the same corpus always gives the same ids.
    learned = sorted(token for token in backend.get_vocab() if token not in SPECIAL_TOKENS)
    backend.model = models.WordPiece(
        {token: i for i, token in enumerate([*SPECIAL_TOKENS, *learned])}, unk_token=unk, continuing_subword_prefix="##"
    )
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        actual_id = backend.token_to_id(token)
        if actual_id != expected_id:  # the trainer puts special tokens first; make sure of it
            raise RuntimeError(f"special token {token} got id {actual_id}, expected {expected_id}")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))],
    )
    return backend


# ---------------------------------------------------------------------------------------- using a tokenizer
def adapt_config_to_tokenizer(config, tokenizer) -> None:
    """
    Size an `OptTriConfig`'s text side to `tokenizer`: the text encoder's embeddings (and so the MLM head) and the text
    decoder get `len(tokenizer)` entries; padding, start (`[CLS]`), end (`[SEP]`) and mask ids are the tokenizer's,
    and its special tokens are never masked. `tokenizer.model_max_length` is capped at the text encoder's positions.

    Raises:
        ValueError: the tokenizer lacks a pad, mask, CLS or SEP token.
    """
    ids = {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("pad", "mask", "cls", "sep")}
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise ValueError(f"--tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no {missing} token(s); OPT-Tri "
                         "needs [PAD], [MASK], [CLS] and [SEP] (a BERT-style tokenizer, e.g. from "
                         "processing/build_tokenizer.py)")
    vocab = len(tokenizer)
    config.text_config.vocab_size = vocab
    config.text_config.pad_token_id = ids["pad"]
    decoder = config.text_decoder_config
    decoder.vocab_size = vocab
    decoder.pad_token_id, decoder.bos_token_id, decoder.eos_token_id = ids["pad"], ids["cls"], ids["sep"]
    config.mask_token_id = ids["mask"]
    config.special_token_ids = sorted(set(tokenizer.all_special_ids))
    positions = getattr(config.text_config, "max_position_embeddings", None)
    if positions and (tokenizer.model_max_length is None or tokenizer.model_max_length > positions):
        tokenizer.model_max_length = positions


def unk_share(tokenizer, texts: list[str], examples: int = 8) -> tuple[float, list[str]]:
    """
    The share of `[UNK]` among the (non-special) tokens of `texts`, and up to `examples` words that became `[UNK]`.
    A tokenizer without an unknown token (byte-level BPE) gives 0.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not texts:
        return 0.0, []
    encoded = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    total = sum(len(ids) for ids in encoded)
    unknown = sum(ids.count(unk) for ids in encoded)
    words: list[str] = []
    if unknown:
        for text, ids in zip(texts, encoded):
            if unk not in ids:
                continue
            for word in text.split():
                if len(words) < examples and word not in words:
                    if unk in tokenizer(word, add_special_tokens=False)["input_ids"]:
                        words.append(word)
            if len(words) >= examples:
                break
    return unknown / max(total, 1), words


def check_unk_share(tokenizer, texts: list[str], limit: float, tokenizer_name: str, dataset: str) -> float:
    """
    Stop before training when more than `limit` of the tokens of `texts` (a sample of the training text) are
    `[UNK]`: the model would learn nothing about those words. Returns the share.

    Raises:
        ValueError: naming the share, example words and the fix (build a tokenizer, pass `--tokenizer`).
    """
    share, words = unk_share(tokenizer, texts)
    if share > limit:
        raise ValueError(
            f"{100 * share:.1f}% of the text tokens of {len(texts)} training rows are [UNK] with the tokenizer of "
            f"{tokenizer_name!r} (for example {words}), above --max_unk_fraction={limit}. Build a tokenizer for this "
            f"text: python processing/build_tokenizer.py --dataset {dataset} --vocab_size 8000 --output_dir "
            "my_tokenizer, then pass --tokenizer my_tokenizer (or a BERT checkpoint's folder that covers it)"
        )
    return share
