"""Column keys: which column an eval entry or an attack summary belongs in (attack, threat model
and every strength parameter, so evaluations of different strength never pool as seeds), the
columns' order, and their titles as the seeds' tables write them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from advcli.compare.model import ColumnKey, Metric
from advcli.formats.results import AttackSummary, Entry, format_number

_NORM_ORDER = {"linf": 0, "l2": 1, None: 2}
_NORM_TEXT = {"linf": "L∞", "l2": "L2"}
_KIND_ORDER = ["clean", "fgsm", "fgsm-rs", "pgd", "autoattack", "stadv", "worst", "transfer"]
_ATTACK_NAMES = {"fgsm": "FGSM", "fgsm-rs": "FGSM-RS", "pgd": "PGD", "stadv": "stAdv",
                 "autoattack": "AA", "worst": "Worst-case", "clean": "Clean"}
# Every parameter that changes how strong an attack is: two evaluations that differ in one
# are different columns.
_STRENGTH: dict[str, tuple[str, ...]] = {
    "pgd": ("steps", "step_size", "restarts", "random_start", "targeted", "keep"),
    "fgsm": ("targeted", "keep"),
    "fgsm-rs": ("step_size", "restarts", "targeted", "keep"),
    "autoattack": ("version", "attacks", "restarts"),
    "stadv": ("tau", "bound", "steps", "step_size", "targeted"),
}
# What advcli ran with when its own file does not record a parameter (older eval files do not
# write random_start, targeted or keep: they judged the last iterate). A published file's
# missing parameter is unknown instead, except `targeted`: a published robust accuracy is
# untargeted unless it says otherwise.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "pgd": {"restarts": 1, "random_start": True, "targeted": False, "keep": "last"},
    "fgsm": {"targeted": False, "keep": "last"},
    "fgsm-rs": {"restarts": 1, "targeted": False, "keep": "last"},
    "stadv": {"targeted": False},
}
_PUBLISHED_DEFAULTS = {"targeted": False}
# Parameters worth naming in the note about a published row's unstated values.
NOTE_NAMES = {"eps": "ε", "steps": "steps", "step_size": "step size", "restarts": "restarts",
               "version": "AutoAttack version", "attacks": "AutoAttack attacks", "tau": "τ",
               "bound": "bound"}
EPS_KINDS = ("fgsm", "fgsm-rs", "pgd", "autoattack", "worst")


def _variant(kind: str, params: dict[str, Any]) -> str:
    """The attack as the papers name it: PGD-10, AA, FGSM, stAdv, ..."""
    name = _ATTACK_NAMES.get(kind, kind)
    if kind == "pgd":
        steps, restarts = params.get("steps"), params.get("restarts") or 1
        name = f"PGD-{steps}" if steps else "PGD"
        if restarts > 1:
            name += f" ×{restarts}"
    elif kind == "autoattack":
        version = params.get("version", "standard")
        if version == "plus":
            name = "AA+"
        elif version == "rand":
            name = "AA-rand"
        elif version == "custom":
            name = f"AA ({', '.join(params.get('attacks') or [])})"
    return name


def hashable(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 7)  # 2/255 written as a fraction or as a decimal: one column
    if isinstance(value, (list, tuple)):
        return tuple(hashable(v) for v in value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _strength(kind: str, params: dict[str, Any], *, published: bool) -> tuple[tuple[str, Any], ...]:
    defaults = _PUBLISHED_DEFAULTS if published else _DEFAULTS.get(kind, {})
    unstated = set(params.get("unstated") or ()) if published else set()
    out = []
    for name in _STRENGTH.get(kind, ()):
        value = None if name in unstated else params.get(name, defaults.get(name))
        out.append((name, hashable(value)))
    return tuple(out)


def entry_key(entry: Entry, *, published: bool = False) -> ColumnKey:
    """The column an eval entry belongs in."""
    if entry.is_clean:
        return ColumnKey("clean", "Clean")
    unstated = set(entry.params.get("unstated") or ()) if published else set()
    eps = None if "eps" in unstated else entry.eps_key()
    eps_text = None if eps is None else entry.eps_text
    if entry.attack == "transfer":
        source = entry.params.get("source") or {}
        attack = source.get("attack") or {}
        kind = str(attack.get("name", "adversarial set"))
        origin = source.get("label") or source.get("checkpoint_label")
        variant = f"{_variant(kind, attack)} transfer"
        if origin:
            variant += f" from {origin}"
        return ColumnKey("transfer", variant, entry.norm, eps, eps_text,
                         _strength(kind, attack, published=published))
    if entry.attack == "worst":
        of = tuple(sorted(str(a) for a in entry.params.get("of") or ()))
        return ColumnKey("worst", _variant("worst", {}), entry.norm, eps, eps_text,
                         (("of", of or None),))
    return ColumnKey(entry.attack, _variant(entry.attack, entry.params), entry.norm, eps,
                     eps_text, _strength(entry.attack, entry.params, published=published))


def summary_key(summary: AttackSummary) -> ColumnKey:
    """The attacked-with column of an attack summary."""
    a = summary.attack
    kind = str(a["name"])
    eps = a.get("eps")
    eps_f = None if eps is None or kind == "stadv" else round(float(eps), 7)
    eps_text = a.get("eps_text") or (None if eps_f is None else format_number(eps_f))
    return ColumnKey(kind, _variant(kind, a), a.get("norm") if eps_f is not None else None,
                     eps_f, eps_text, _strength(kind, a, published=False))


def _kind_rank(kind: str) -> int:
    return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)


def order_threat_first(k: ColumnKey) -> tuple:
    return (k.kind != "clean", _NORM_ORDER.get(k.norm, 2), k.eps if k.eps is not None else -1.0,
            _kind_rank(k.kind), k.variant, repr(k.strength))


def order_attack_first(k: ColumnKey) -> tuple:
    return (_kind_rank(k.kind), k.variant, _NORM_ORDER.get(k.norm, 2),
            k.eps if k.eps is not None else -1.0, repr(k.strength))


def pixel_text(value: float) -> str:
    """A [0, 1]-scale pixel quantity as the papers write it: "2/255" when it is a round
    number of 255ths (to 2 decimals), else a short decimal."""
    scaled = value * 255
    # Keys hold values rounded to 7 decimals: 1/255 comes back as 1.0000080/255.
    if scaled >= 0.01 and abs(scaled - round(scaled, 2)) < 5e-5:
        return f"{round(scaled, 2):g}/255"
    return f"{value:.4g}"


def _param_text(name: str, value: Any) -> str:
    if value is None:
        return "unbounded" if name == "bound" else f"{NOTE_NAMES.get(name, name)} not stated"
    if name == "step_size":
        return f"step {pixel_text(float(value))}"
    if name == "bound":
        return f"bound {value:g} px"
    if name == "tau":
        return f"τ = {value:g}"
    if name in ("steps", "restarts"):
        return f"{value} {name}"
    if name in ("random_start", "targeted"):
        return name.replace("_", " ") if value else f"no {name.replace('_', ' ')}"
    if name == "keep":
        return "robust at every iterate" if value == "first-success" else "last iterate only"
    if name in ("attacks", "of"):
        return ", ".join(value)
    return f"{name} {value}"


def strength_texts(keys: Sequence[ColumnKey]) -> dict[ColumnKey, str]:
    """For columns that share attack, variant and threat model but differ in strength: the
    parameters they differ in, as text ("step 1/255"); nothing for the others."""
    groups: dict[tuple, list[ColumnKey]] = {}
    for k in keys:
        groups.setdefault((k.kind, k.variant, k.norm, k.eps), []).append(k)
    out: dict[ColumnKey, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        names = list(dict.fromkeys(n for k in members for n, _ in k.strength))
        differ = [n for n in names if len({k.param(n) for k in members}) > 1]
        for k in members:
            out[k] = ", ".join(_param_text(n, k.param(n)) for n in differ)
    return out


def _threat_text(k: ColumnKey, with_norm: bool) -> str:
    parts = []
    if with_norm and k.norm:
        parts.append(_NORM_TEXT.get(k.norm, k.norm))
    if k.eps_text is not None:
        parts.append(f"ε = {k.eps_text}")
    return ", ".join(parts)


def _variant_text(k: ColumnKey, extra: dict[ColumnKey, str]) -> str:
    return f"{k.variant} ({extra[k]})" if extra.get(k) else k.variant


def column_title(k: ColumnKey, metric: Metric, with_variant: bool, with_norm: bool,
           extra: dict[ColumnKey, str]) -> str:
    if k.kind == "clean":
        return "Standard Accuracy (%)" if metric is Metric.accuracy else "Test Error (%)"
    base = "Robust Accuracy" if metric is Metric.accuracy else "Robust Test Error"
    if with_variant or k.kind in ("worst", "transfer") or extra.get(k):
        base = f"{_variant_text(k, extra)} {base}"
    threat = _threat_text(k, with_norm)
    return f"{base} ({threat}) (%)" if threat else f"{base} (%)"


def matrix_title(k: ColumnKey, with_norm: bool, extra: dict[ColumnKey, str]) -> str:
    threat = _threat_text(k, with_norm)
    name = _variant_text(k, extra)
    return f"{name} ({threat})" if threat else name


def column_text(k: ColumnKey) -> str:
    """A column for error messages: the attack, every parameter and the threat model."""
    params = ", ".join(_param_text(n, v) for n, v in k.strength)
    threat = _threat_text(k, with_norm=True)
    return ", ".join(p for p in (k.variant, threat, params) if p)


