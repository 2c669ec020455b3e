"""Declarative argument checks: every flag declares the values it accepts, and all of them are checked before work starts.

A `Rule` says what one flag accepts (a type, a range, choices, `None` or not, and an optional extra check). It is
declared next to the flag:

- on a dataclass field (`PretrainArguments`): `arg(default, rule, help=...)`, which stores the rule in the field's
  metadata; `dataclass_problems(args)` checks every field. Parse such a dataclass with `DataclassArgumentParser`
  (an `HfArgumentParser` that keeps these metadata keys away from `argparse`);
- on an `argparse` flag (the fine-tuning scripts): `CheckedArgumentParser.add_argument(..., rule=...)`; its
  `parse_args` checks every flag and exits with `error:` listing the bad values.

Each bad value gives one message that names the flag, the value and what is allowed, e.g.
`--max_grad_norm must be a finite number >= 0 (0: no clipping), got -1.0`. The tests walk every field of
`PretrainArguments` and every flag of the fine-tuning parsers and fail when one declares no rule, so a flag added
later is covered by declaring its rule.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import HfArgumentParser

_KIND_NAMES = {int: "an integer", float: "a finite number", str: "a non-empty string", bool: "true or false"}


@dataclass(frozen=True)
class Rule:
    """
    The values one flag accepts.

    Args:
        kind: `int`, `float` (finite; an int is accepted), `str` (non-empty) or `bool`.
        low / high: inclusive bounds (`low_open=True`: `low` itself is excluded).
        choices: the only values allowed.
        optional: whether `None` (the flag left unset) is allowed.
        check: `(flag, value) -> message or None`, run after the checks above, for what they cannot say (e.g. a
            weight list); its message is used as is.
        text: how to describe the allowed values in the message (default: from the fields above).
    """

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[Any, ...] = ()
    optional: bool = False
    check: Callable[[str, Any], str | None] | None = None
    text: str | None = None

    def allowed(self) -> str:
        if self.text:
            described = self.text
        elif self.choices:
            names = [repr(c) for c in self.choices]
            described = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        else:
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
            if self.high is not None:
                bounds.append(f"<= {self.high:g}")
            described = _KIND_NAMES[self.kind] + (" " + " and ".join(bounds) if bounds else "")
        return described + (" (or unset)" if self.optional and not self.text else "")

    def _accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if self.kind is bool:
            return isinstance(value, (bool, np.bool_))
        if self.kind is int:
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        elif self.kind is float:
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            ok = ok and math.isfinite(float(value))
        else:
            ok = isinstance(value, str) and bool(value.strip())
        if not ok or (self.choices and value not in self.choices):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def message(self, flag: str, value: Any) -> str | None:
        """`None` when `value` is allowed; otherwise the one message for it."""
        if not self._accepts(value):
            return f"--{flag} must be {self.allowed()}, got {value!r}"
        if self.check is not None and value is not None:
            return self.check(flag, value)
        return None


# ----------------------------------------------------------------------------------------------------------------------
# The usual rules
# ----------------------------------------------------------------------------------------------------------------------


def integer(low: int | None = None, high: int | None = None, optional: bool = False, text: str | None = None) -> Rule:
    return Rule(int, low=low, high=high, optional=optional, text=text)


def number(low: float | None = None, high: float | None = None, *, positive: bool = False, optional: bool = False,
           text: str | None = None) -> Rule:
    """A finite float; `positive=True`: strictly above `low` (default 0)."""
    if positive:
        return Rule(float, low=0.0 if low is None else low, high=high, low_open=True, optional=optional, text=text)
    return Rule(float, low=low, high=high, optional=optional, text=text)


def choice(*values: Any, optional: bool = False, text: str | None = None) -> Rule:
    return Rule(type(values[0]), choices=tuple(values), optional=optional, text=text)


def string(optional: bool = False, check: Callable[[str, Any], str | None] | None = None) -> Rule:
    return Rule(str, optional=optional, check=check)


def flag() -> Rule:
    return Rule(bool)


SEED = integer(0, 2**32 - 1, text="an integer from 0 to 2**32 - 1 (NumPy's seed range)")

#: `Trainer`'s `max_steps`: -1 trains for the given epochs, a positive count overrides them (0 would be ambiguous)
MAX_STEPS_OR_EPOCHS = Rule(int, low=-1, text="-1 (train for --epochs) or an integer >= 1",
                           check=lambda flag, value: None if value != 0 else
                           f"--{flag} must be -1 (train for --epochs) or an integer >= 1, got 0")

#: a dropout probability: 1 would drop everything
PROBABILITY_BELOW_ONE = Rule(float, low=0.0, text="a number >= 0 and < 1",
                             check=lambda flag, value: None if value < 1 else
                             f"--{flag} must be a number >= 0 and < 1, got {value!r}")

#: the fraction of the training rows held out for evaluation (fine-tuning: unset picks its default)
HOLDOUT_FRACTION = Rule(float, low=0.0, optional=True, text="a number >= 0 and < 1 (0: no hold-out)",
                        check=lambda flag, value: None if value < 1 else
                        f"--{flag} must be a number >= 0 and < 1 (0: no hold-out), got {value!r}")


def _device_check(flag: str, value: str) -> str | None:
    import torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError) as error:
        return f"--{flag} must be a torch device such as cpu, cuda or cuda:1, got {value!r} ({error})"
    return None


DEVICE = Rule(str, check=_device_check, text="a torch device such as cpu, cuda or cuda:1")


def subset_of(*names: str) -> Rule:
    """A comma-separated, non-empty subset of `names` (e.g. '--modalities image,audio')."""

    def check(flag: str, value: str) -> str | None:
        parts = [part.strip() for part in value.split(",")]
        if not all(parts) or set(parts) - set(names) or len(set(parts)) != len(parts):
            return f"--{flag} must be a comma-separated subset of {','.join(names)} without repeats, got {value!r}"
        return None

    return Rule(str, check=check, text=f"a comma-separated subset of {','.join(names)}")


# ----------------------------------------------------------------------------------------------------------------------
# Dataclass fields
# ----------------------------------------------------------------------------------------------------------------------


#: field metadata of ours, which `argparse.add_argument` must not see: the rule and the resume policy (see
#: `pretrain.resume_changes`)
OWN_METADATA = ("rule", "resume")


def arg(default: Any, rule: Rule, help: str | None = None, **metadata: Any):
    """A dataclass field with its `Rule` (and `--help` text) in its metadata (extra keys: see `OWN_METADATA`)."""
    unknown = set(metadata) - set(OWN_METADATA)
    if unknown:
        raise TypeError(f"arg(): unknown metadata {sorted(unknown)}; known: {OWN_METADATA}")
    info = {"rule": rule, **metadata}
    if help:
        info["help"] = help
    return dataclasses.field(default=default, metadata=info)


def field_rule(field: dataclasses.Field) -> Rule | None:
    return field.metadata.get("rule")


def dataclass_problems(args: Any) -> list[str]:
    """One message per field of the dataclass instance `args` whose value its rule refuses."""
    problems = []
    for field in dataclasses.fields(args):
        rule = field_rule(field)
        if rule is not None:
            message = rule.message(field.name, getattr(args, field.name))
            if message:
                problems.append(message)
    return problems


def raise_problems(problems: Sequence[str]) -> None:
    """Raise one `ValueError` that lists every message (a single message stays on one line)."""
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:
        raise ValueError(f"{len(problems)} invalid arguments:\n" + "\n".join(f"  {p}" for p in problems))


class DataclassArgumentParser(HfArgumentParser):
    """`HfArgumentParser` for dataclasses declared with `arg()`: their own metadata never reaches `add_argument`."""

    def add_argument(self, *args, **kwargs):
        for key in OWN_METADATA:
            kwargs.pop(key, None)
        return super().add_argument(*args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# argparse flags
# ----------------------------------------------------------------------------------------------------------------------


class CheckedArgumentParser(argparse.ArgumentParser):
    """
    An `ArgumentParser` whose flags declare a `Rule` (`add_argument(..., rule=...)`). Parsing checks every flag and
    exits with one `error:` that lists each bad value. `unruled_flags()` lists flags declared without a rule (a test
    asserts that there are none).
    """

    def add_argument(self, *args, rule: Rule | None = None, **kwargs):
        action = super().add_argument(*args, **kwargs)
        action.rule = rule
        return action

    def unruled_flags(self) -> list[str]:
        return [action.option_strings[0] if action.option_strings else action.dest for action in self._actions
                if not isinstance(action, argparse._HelpAction) and getattr(action, "rule", None) is None]

    def problems(self, namespace: argparse.Namespace) -> list[str]:
        problems = []
        for action in self._actions:
            rule = getattr(action, "rule", None)
            if rule is not None and hasattr(namespace, action.dest):
                message = rule.message(action.dest, getattr(namespace, action.dest))
                if message:
                    problems.append(message)
        return problems

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        problems = self.problems(namespace)
        if problems:
            self.error("\n".join(problems))
        return namespace, extras
