"""The parameter groups of every OPT-Tri optimizer (pre-training and fine-tuning): one weight-decay rule.

Biases and other 1-D tensors, normalisation layers, embeddings and learned tokens (`[CLS]`, `[MASK]`, prompt
context) are not decayed; every other weight is. `parameter_groups` applies that rule to the trainable parameters,
optionally split further into named parts (fine-tuning: pre-trained weights and new ones at different learning
rates).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def is_decayed(name: str, parameter: nn.Parameter) -> bool:
    """Whether weight decay applies to the parameter `name`: not to 1-D tensors (biases, norm scales), nor to norm
    layers, embeddings or learned tokens (by name)."""
    lowered = name.lower()
    return not (parameter.ndim < 2 or "norm" in lowered or "embedding" in lowered or "token" in name)


def parameter_groups(
    model: nn.Module, weight_decay: float, part: Callable[[str], str] | None = None
) -> list[dict]:
    """
    Optimizer parameter groups of the trainable parameters of `model` (frozen ones are left out).

    Without `part`: two groups, `"decay"` (at `weight_decay`) then `"no_decay"` (at 0), both present even when one is
    empty, so that the optimizer state of every pre-training checkpoint has the same layout. With `part` (parameter
    name -> part name): for each part in sorted order, `"<part>"` (decayed) then `"<part>_no_decay"`, only the
    non-empty ones. Each group is `{"params", "weight_decay", "name"}`; callers add their own settings (e.g. `lr`).
    """
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    if part is None:
        groups = {("decay", False): [], ("decay", True): []}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            key = ("decay" if part is None else part(name), not is_decayed(name, parameter))
            groups.setdefault(key, []).append(parameter)
    named = []
    for (label, no_decay), params in sorted(groups.items()):
        if part is None:
            group_name = "no_decay" if no_decay else "decay"
        else:
            group_name = f"{label}_no_decay" if no_decay else label
        named.append({"params": params, "weight_decay": 0.0 if no_decay else weight_decay, "name": group_name})
    return named


__all__ = ["is_decayed", "parameter_groups"]
