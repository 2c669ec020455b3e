"""Deprecated name of [`modeling_opt_tri.tokenizer_training`] (the module trains a tokenizer; it tokenizes nothing),
kept for one release: importing it warns (`FutureWarning`) and gives the same functions."""

from __future__ import annotations

import warnings

from .tokenizer_training import SPECIAL_TOKENS, adapt_config_to_tokenizer, build_wordpiece_tokenizer, check_unk_share, unk_share

warnings.warn(
    "modeling_opt_tri.tokenization is deprecated and will be removed in the next release: import from "
    "modeling_opt_tri.tokenizer_training",
    FutureWarning,
    stacklevel=2,
)

__all__ = ["SPECIAL_TOKENS", "adapt_config_to_tokenizer", "build_wordpiece_tokenizer", "check_unk_share", "unk_share"]
