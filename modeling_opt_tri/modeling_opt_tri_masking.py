"""Masking of OPT-Tri pre-training: BERT text masking, masked positions of patches / audio tokens, the choice of the
token-masked modalities of each sample (conditional or joint policy) and modality-level dropping. Every random draw
comes from the `generator` passed (torch's global RNG when it is `None`)."""

from __future__ import annotations

import torch

from .configuration_opt_tri import OptTriConfig
from .modeling_opt_tri_layers import MODALITIES


def mask_text_tokens(config: OptTriConfig, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (`config.mlm_probability`, 80% `[MASK]` / 10% random / 10% kept) of the real, non-special tokens
    of the `rows` `(B,)` bool, at least one token per row that has one: (masked ids, labels with -100 elsewhere)."""
    candidates = attention_mask.bool() & rows[:, None]
    for special in config.special_token_ids:
        candidates &= input_ids != special
    chosen = mask_positions(candidates, torch.ones_like(rows), config.mlm_probability, generator)
    labels = input_ids.masked_fill(~chosen, -100)
    roll = torch.rand(input_ids.shape, device=input_ids.device, generator=generator)
    masked_ids = input_ids.masked_fill(chosen & (roll < 0.8), config.mask_token_id)
    vocab_size = config.text_config.vocab_size
    random_tokens = torch.randint(vocab_size, input_ids.shape, device=input_ids.device, generator=generator)
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    return torch.where(swap, random_tokens, masked_ids), labels  # masks, not boolean indexing: no host sync


def mask_positions(real: torch.Tensor, rows: torch.Tensor, probability: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose ~`probability` of the `real` `(B, n)` positions of the `rows` `(B,)`, at least one per row that has a
    real position: `(B, n)` bool."""
    candidates = real.bool() & rows[:, None]
    chosen = (torch.rand(real.shape, device=real.device, generator=generator) < probability) & candidates
    first = torch.rand(real.shape, device=real.device, generator=generator).masked_fill(~candidates, -1.0).argmax(-1)
    force = candidates.any(-1) & ~chosen.any(-1)
    forced = torch.zeros_like(chosen).scatter_(1, first[:, None], force[:, None])  # fixed shape: no host sync
    return chosen | forced


def choose_masked_modalities(policy: str, present: dict[str, torch.Tensor], wanted: dict[str, bool],
                             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per sample, the modalities that get token-level masking, among those `present` (`(B,)` bool each) whose
    objectives are `wanted`: one at random (`policy="conditional"`, UNITER) or all of them (`"joint"`, OPT)."""
    eligible = {m: present[m] & wanted[m] for m in MODALITIES}
    if policy == "joint":
        return eligible
    stacked = torch.stack([eligible[m].float() for m in MODALITIES], dim=1)  # (B, 3)
    scores = torch.rand(stacked.shape, device=stacked.device, generator=generator).masked_fill(stacked == 0, -1.0)
    pick = scores.argmax(1)
    has_any = stacked.sum(1) > 0
    return {m: (pick == i) & has_any for i, m in enumerate(MODALITIES)}


def drop_modalities(probability: float, present: dict[str, torch.Tensor], keep: dict[str, torch.Tensor],
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Modality-level masking: each present modality not in `keep` is dropped with `probability`; a sample that
    would lose every modality keeps them all. Returns the kept modalities, `(B,)` bool each."""
    kept = {}
    for m in MODALITIES:
        dropped = torch.rand(present[m].shape, device=present[m].device, generator=generator) < probability
        kept[m] = present[m] & (keep[m] | ~dropped)
    any_kept = torch.stack([kept[m] for m in MODALITIES], 1).any(1)
    for m in MODALITIES:  # never drop everything: restore the modalities of rows that lost all of them
        kept[m] = kept[m] | (present[m] & ~any_kept)
    return kept
