"""
Per-tower training options shared by pre-training (`examples/pretrain.py`) and fine-tuning (`examples/finetune_*.py`):

- `--freeze vision,audio`: the towers get no gradient, stay in eval mode, run under `no_grad` and hold no optimizer
  state (`OptTriTowerTuningMixin.freeze_towers`);
- `--lora text`: PEFT LoRA adapters on the towers' attention projections; only the adapters of those towers train
  (all their own weights stay fixed), every weight outside them trains as it would without the option;
- `--tower_lr_scale vision=0.1,audio=0.5`: a tower's parameters at that multiple of the learning rate of their
  parameter group.

A tower is in at most one of `--freeze` and `--lora`, and a frozen tower has no learning rate to scale.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from ..modeling_opt_tri_tuning import TOWER_ATTRIBUTES

#: the tower names the options take
TOWER_NAMES = tuple(TOWER_ATTRIBUTES)


def parse_tower_list(text: str | None, option: str) -> tuple[str, ...]:
    """'vision,audio' -> ('vision', 'audio'); `None` or '' -> (). Unknown or repeated names are a `ValueError`."""
    if not text:
        return ()
    names = tuple(part.strip() for part in text.split(","))
    unknown = [name for name in names if name not in TOWER_NAMES]
    if unknown:
        raise ValueError(f"--{option} {text!r}: unknown tower(s) {unknown}; the towers are {', '.join(TOWER_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--{option} {text!r} names a tower twice")
    return names


def parse_tower_scales(text: str | None, option: str) -> dict[str, float]:
    """'vision=0.1,audio=0.5' -> {'vision': 0.1, 'audio': 0.5}: known towers, each once, finite scales >= 0."""
    if not text:
        return {}
    scales: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            scale = float(value) if sep else float("nan")
        except ValueError:
            scale = float("nan")
        if not scale >= 0 or scale == float("inf"):
            raise ValueError(f"--{option} {text!r}: {part!r} is not TOWER=SCALE with a finite scale >= 0")
        if name not in TOWER_NAMES:
            raise ValueError(f"--{option} {text!r}: unknown tower {name!r}; the towers are {', '.join(TOWER_NAMES)}")
        if name in scales:
            raise ValueError(f"--{option} {text!r} names the tower {name!r} twice")
        scales[name] = scale
    return scales


def check_tower_options(freeze: str | None, lora: str | None, scales: str | None) -> None:
    """Each option parses, no tower is both frozen and LoRA-adapted, and no frozen tower has a learning-rate scale."""
    frozen, adapted = parse_tower_list(freeze, "freeze"), parse_tower_list(lora, "lora")
    both = [name for name in frozen if name in adapted]
    if both:
        raise ValueError(f"--freeze {freeze} and --lora {lora}: the tower(s) {both} cannot be both frozen and trained "
                         "through LoRA adapters; pick one")
    scaled = [name for name in parse_tower_scales(scales, "tower_lr_scale") if name in frozen]
    if scaled:
        raise ValueError(f"--tower_lr_scale {scales}: the tower(s) {scaled} are frozen (--freeze) and have no "
                         "learning rate")


def rule_check(parse):
    """A `Rule.check` (`(flag, value) -> message or None`) from a parser above."""

    def check(option: str, value: Any) -> str | None:
        try:
            parse(value, option)
        except ValueError as error:
            return str(error)
        return None

    return check


def inject_lora(model: nn.Module, targets: Sequence[str], rank: int, alpha: int, dropout: float) -> nn.Module:
    """
    PEFT LoRA adapters on the modules `targets` of `model`, in place (the model keeps its class, so it saves, resumes
    and runs as before). The wrapped base weights are frozen; every other parameter keeps its `requires_grad`.
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:  # peft is an optional extra
        raise ImportError("--lora needs PEFT: pip install 'opt-tri[peft]' (or pip install peft)") from error
    wrapped = {id(parameter) for name in targets for parameter in model.get_submodule(name).parameters()}
    trainable = {id(parameter): parameter.requires_grad for parameter in model.parameters()}
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    model = inject_adapter_in_model(config, model)
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            parameter.requires_grad_(True)
        elif id(parameter) in trainable:
            parameter.requires_grad_(trainable[id(parameter)] and id(parameter) not in wrapped)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge adapters injected by `inject_lora` into their base weights and put the base layers back, so that `model`
    saves as a plain checkpoint. A model without adapters is returned as it is."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # without PEFT there are no adapters to merge
        return model
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer) and name:
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    return model


def apply_tower_options(model: nn.Module, freeze: str | None, lora: str | None, rank: int = 8, alpha: int = 16,
                        dropout: float = 0.0) -> nn.Module:
    """Freeze the towers of `freeze` and put LoRA adapters on those of `lora` (checked by `check_tower_options`).
    Returns the model (the same object: the adapters are injected in place)."""
    check_tower_options(freeze, lora, None)
    frozen, adapted = parse_tower_list(freeze, "freeze"), parse_tower_list(lora, "lora")
    missing = [name for name in (*frozen, *adapted) if name not in model.encoder_modules()]
    if missing:
        raise ValueError(f"--freeze / --lora name the tower(s) {missing}, which this model does not build "
                         f"(it has {list(model.encoder_modules())})")
    if frozen:
        model.freeze_towers(frozen)
    if adapted:  # only the adapters of a LoRA tower train: its own weights (embeddings, MLPs, norms too) stay fixed
        for name in adapted:
            model.encoder_modules()[name].requires_grad_(False)
        model = inject_lora(model, model.lora_target_modules(adapted), rank, alpha, dropout)
    return model


def split_groups_by_tower(model: nn.Module, groups: Iterable[dict[str, Any]], learning_rate: float,
                          scales: dict[str, float]) -> list[dict[str, Any]]:
    """
    `groups` (optimizer parameter groups) with the parameters of each tower in `scales` moved to a group of their own
    at `scale *` the group's learning rate (`learning_rate` when the group sets none), named `<group>/<tower>` (or
    `<tower>`). Empty groups are dropped. With no scales the groups are returned as they are.
    """
    groups = list(groups)
    if not scales:
        return groups
    towers = model.encoder_modules()
    owner = {id(p): name for name, module in towers.items() if name in scales for p in module.parameters()}
    result = []
    for group in groups:
        base_lr = group.get("lr", learning_rate)
        parts: dict[str | None, list[nn.Parameter]] = {}
        for parameter in group["params"]:
            parts.setdefault(owner.get(id(parameter)), []).append(parameter)
        for tower, params in parts.items():
            entry = {**group, "params": params}
            if tower is not None:
                label = group.get("name")
                entry.update(lr=base_lr * scales[tower], name=f"{label}/{tower}" if label else tower)
            result.append(entry)
    return result


__all__ = [
    "TOWER_NAMES",
    "apply_tower_options",
    "check_tower_options",
    "inject_lora",
    "merge_lora",
    "parse_tower_list",
    "parse_tower_scales",
    "rule_check",
    "split_groups_by_tower",
]
