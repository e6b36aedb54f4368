"""Option values shared by every stage: eps parsing, closed sets, and `--config FILE.yaml` files.

eps and step sizes are written the way papers write them ("8/255", "0.5", "2/255"); they are
stored both as a float and as the original text (`Eps`).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import yaml

from advcli.errors import ConfigError, UsageError


@dataclass(frozen=True)
class Eps:
    """A perturbation size: the float value and the text it was written as."""

    value: float
    text: str

    def __str__(self) -> str:
        return self.text


_EPS_RE = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:/\s*([0-9]*\.?[0-9]+))?\s*$")


def parse_eps(text: str | float | int | Eps, *, name: str = "eps", allow_zero: bool = True) -> Eps:
    """Parse "8/255", "0.5", "2e-3" into an `Eps`; reject negatives, "x/0", nan and junk."""
    if isinstance(text, Eps):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
        raw = repr(text) if isinstance(text, float) else str(text)
    else:
        raw = str(text).strip()
        m = _EPS_RE.match(raw)
        if not m:
            raise UsageError(
                f"{name} {raw!r} is not a number: write it like 8/255, 0.5 or 2e-3"
            )
        num, den = m.group(1), m.group(2)
        if den is not None and float(den) == 0:
            raise UsageError(f"{name} {raw!r} divides by zero: write it like 8/255")
        value = float(Fraction(num) / Fraction(den)) if den is not None else float(num)
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise UsageError(f"{name} must be a finite number >= 0, got {raw!r}")
    if not allow_zero and value == 0:
        raise UsageError(f"{name} must be > 0, got {raw!r}")
    return Eps(value=value, text=raw)


def parse_eps_list(text: str, *, name: str = "eps") -> list[Eps]:
    """Parse a comma-separated list such as "8/255,16/255"."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UsageError(f"{name} list is empty: write it like 8/255,16/255")
    return [parse_eps(p, name=name) for p in parts]


class Norm(str, enum.Enum):
    linf = "linf"
    l2 = "l2"


# The threat model a command assumes when neither the flags nor the checkpoint name an eps.
DEFAULT_EPS = {Norm.linf: "8/255", Norm.l2: "0.5"}


class Augment(str, enum.Enum):
    none = "none"
    buggy = "buggy"
    fixed = "fixed"
    device = "device"


class Schedule(str, enum.Enum):
    cosine = "cosine"
    step = "step"
    onecycle = "onecycle"
    constant = "constant"


E = TypeVar("E", bound=enum.Enum)


def parse_choice(enum_cls: type[E], value: str | E, *, name: str, listed: Sequence[E] | None = None) -> E:
    """Normalise a closed-set value at the boundary; the error lists the valid values (`listed`,
    when only some members are valid where the value was given: a member left out still parses,
    so its own, more helpful refusal can follow)."""
    if isinstance(value, enum_cls):
        return value
    key = str(value).strip().lower().replace("_", "-")
    for member in enum_cls:
        if member.value == key:
            return member
    valid = ", ".join(m.value for m in (enum_cls if listed is None else listed))
    raise UsageError(f"unknown {name} {value!r}; valid values: {valid}")


def parse_fraction(text: str | float, *, name: str) -> float:
    """A number in [0, 1], also accepting "1/2"."""
    v = parse_eps(text, name=name).value
    if v > 1:
        raise UsageError(f"{name} must be between 0 and 1, got {text!r}")
    return v


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a stage's `--config` YAML: a mapping of option names to values."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}: fix the syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(p)!r} must be a mapping of option names to values, "
            f"got a {type(data).__name__}"
        )
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def merge_config(
    file_values: dict[str, Any],
    given: dict[str, Any],
    explicit: set[str],
    *,
    stage: str,
    path: str | Path,
) -> dict[str, Any]:
    """Overlay a config file's values on the defaults; flags given explicitly win.

    `given` holds every option of the stage (defaults included), `explicit` the names that were
    typed on the command line. Unknown keys are an error that lists the valid ones.
    """
    unknown = sorted(set(file_values) - set(given) - {"config"})
    if unknown:
        valid = ", ".join(sorted(k.replace("_", "-") for k in given if k != "config"))
        names = ", ".join(k.replace("_", "-") for k in unknown)
        raise ConfigError(
            f"config file {str(path)!r} has unknown key(s) for `{stage}`: {names}; valid keys: {valid}"
        )
    merged = dict(given)
    for key, value in file_values.items():
        if key not in explicit:
            merged[key] = value
    return merged
