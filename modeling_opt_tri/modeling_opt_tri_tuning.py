"""
Per-tower training controls of every OPT-Tri model (`OptTriTowerTuningMixin`): the unimodal encoders by name, frozen
towers (no gradient, eval mode), and the projections that LoRA adapters wrap.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

#: the unimodal encoders by the name used on the command line -> the attribute of `OptTriModel` that holds them
TOWER_ATTRIBUTES = {"text": "text_model", "vision": "vision_model", "audio": "audio_model"}

#: leaf names of the `nn.Linear` attention projections LoRA wraps: query / key / value of every family (BERT:
#: `query`, `key`, `value`; ViT, CLIP, wav2vec2, Whisper and ours: `q_proj`, `k_proj`, `v_proj`), plus the output
#: projection where it is called `out_proj` (ours, CLIP, wav2vec2, Whisper)
LORA_PROJECTIONS = frozenset({"query", "key", "value", "q_proj", "k_proj", "v_proj", "out_proj"})


def check_tower_names(names: Iterable[str], available: Iterable[str], what: str) -> tuple[str, ...]:
    """`names` as a tuple, or a `ValueError` naming the unknown ones and the towers this model has."""
    names, available = tuple(names), tuple(available)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"{what}: unknown tower(s) {unknown}; this model has {list(available)}")
    return names


class OptTriTowerTuningMixin:
    """
    Methods training uses to treat the unimodal encoders ("towers") one by one. The towers live on the base model
    (`OptTriModel`, which is `self` or `self.opt_tri`).

    A frozen tower ([`freeze_towers`]) holds no trainable parameter, so an optimizer built from the parameters that
    require a gradient holds no state for it; it stays in eval mode whatever `train()` is called with (so dropout is
    off in training too). Its forward keeps no activations for a backward unless its input needs a gradient (CoOp
    prompt tuning trains context vectors fed through a frozen text tower: their gradient still flows).
    """

    def encoder_modules(self) -> dict[str, nn.Module]:
        """The towers this model builds, by name (`"text"`, `"vision"`, `"audio"`) -> module."""
        base = getattr(self, "base_model", self)
        towers = {name: getattr(base, attribute, None) for name, attribute in TOWER_ATTRIBUTES.items()}
        return {name: module for name, module in towers.items() if isinstance(module, nn.Module)}

    @property
    def frozen_towers(self) -> tuple[str, ...]:
        """The names of the towers frozen by [`freeze_towers`]."""
        return tuple(getattr(getattr(self, "base_model", self), "_opt_tri_frozen_towers", ()))

    def freeze_towers(self, towers: Iterable[str]) -> list[str]:
        """
        Freeze the named towers: `requires_grad=False` on all their parameters and eval mode (kept by `train()`).
        Returns the names of the frozen parameters (relative to `self`).
        """
        modules = self.encoder_modules()
        towers = check_tower_names(towers, modules, "freeze_towers")
        base = getattr(self, "base_model", self)
        frozen = []
        for name in towers:
            module = modules[name]
            module.requires_grad_(False)
            module.eval()
            ids = {id(parameter) for parameter in module.parameters()}
            frozen += [n for n, parameter in self.named_parameters() if id(parameter) in ids]
        base._opt_tri_frozen_towers = tuple(sorted({*self.frozen_towers, *towers}))
        return frozen

    def train(self, mode: bool = True):
        """`nn.Module.train`, except that frozen towers stay in eval mode."""
        super().train(mode)
        modules = self.encoder_modules()
        for name in self.frozen_towers:
            modules[name].train(False)
        return self

    def lora_target_modules(self, towers: Iterable[str], include_fusion: bool = False) -> list[str]:
        """
        Full names (relative to `self`, as PEFT's `target_modules` takes them) of the attention projections
        (`LORA_PROJECTIONS`) of the named towers, and of the cross-modal encoder with `include_fusion`. A tower
        without any such projection is a `ValueError`, not a LoRA run that silently adapts nothing.
        """
        modules = self.encoder_modules()
        towers = check_tower_names(towers, modules, "lora_target_modules")
        base = getattr(self, "base_model", self)
        prefix = "" if base is self else f"{self.base_model_prefix}."
        parts = {name: (TOWER_ATTRIBUTES[name], modules[name]) for name in towers}
        if include_fusion:
            parts["fusion"] = ("fusion_encoder", base.fusion_encoder)
        targets = []
        for name, (attribute, module) in parts.items():
            found = [f"{prefix}{attribute}.{path}" for path, child in module.named_modules()
                     if isinstance(child, nn.Linear) and path.rsplit(".", 1)[-1] in LORA_PROJECTIONS]
            if not found:
                raise ValueError(f"the {name} tower ({type(module).__name__}) has no attention projection named "
                                 f"{sorted(LORA_PROJECTIONS)}: LoRA would adapt nothing")
            targets += found
        return targets


__all__ = ["LORA_PROJECTIONS", "OptTriTowerTuningMixin", "TOWER_ATTRIBUTES", "check_tower_names"]
