"""An `advcli eval` result as a RobustBench leaderboard entry (`model_info` JSON).

The leaderboard's Linf/L2 numbers are standard AutoAttack on the full test set (10000 CIFAR
images, 5000 ImageNet ones) at the track's eps, so only such a result is exported: a subset, a
custom or non-standard AutoAttack run (other attacks, other restarts), another eps or dataset
is refused with the reason. Numbers are written as the leaderboard writes them (strings in
percent, two decimals; eps as its fraction), keys in the order robustbench's own `ModelInfo`
has them. What a result file cannot know (the paper's title, authors, venue and link, whether
extra training data was used) comes from flags, or from the shipped leaderboard entry when the
result measured that zoo model; nothing is invented: a missing field is refused, naming the
flag to give. The paper's `reported` number and a `footnote` are written only when known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from advcli.errors import AdvcliError
from advcli.formats.results import EvalResult
from advcli.models.robustbench.leaderboard import TEST_SIZE, LeaderboardEntry, find_entry
from advcli.models.robustbench.zoo import PREFIX

# The leaderboard tracks' threat models.
TRACK_EPS = {("cifar10", "Linf"): "8/255", ("cifar100", "Linf"): "8/255", ("imagenet", "Linf"): "4/255",
             ("cifar10", "L2"): "0.5"}
STANDARD_ATTACKS = ["apgd-ce", "apgd-t", "fab-t", "square"]
# How advcli's own architectures are spelled on the leaderboard.
ARCHITECTURES = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "preact-resnet18": "PreActResNet-18",
                 "wrn-28-10": "WideResNet-28-10", "wrn-34-10": "WideResNet-34-10", "resnet32": "ResNet-32"}
_TEXT_FIELDS = ("name", "authors", "venue", "link")


class ExportRefused(AdvcliError):
    """The result cannot be a leaderboard entry (the message says why)."""


@dataclass
class EntryFields:
    """What the result file cannot know, from the command line (None = not given)."""

    name: str | None = None  # the paper's title
    authors: str | None = None
    venue: str | None = None
    link: str | None = None
    architecture: str | None = None
    additional_data: bool | None = None
    number_forward_passes: int | None = None
    reported: float | None = None  # percent
    footnote: str | None = None


def _percent(fraction: float) -> str:
    return str(round(100 * float(fraction), 2))


def _shipped(result: EvalResult, dataset: str, threat: str) -> LeaderboardEntry | None:
    """The shipped leaderboard entry of the zoo model the result measured (its arch, recorded by
    `robustbench:NAME` and by imported zoo checkpoints, names it), if any."""
    parts = str(result.model.arch or "").removeprefix(PREFIX).split("/")
    if not str(result.model.arch or "").startswith(PREFIX) or len(parts) != 3:
        return None
    if (parts[0], parts[1]) != (dataset, threat):
        return None
    return find_entry(parts[2], dataset, threat)


def _autoattack(result: EvalResult, dataset: str) -> tuple[Any, str]:
    runs = [e for e in result.entries if e.attack == "autoattack"]
    if not runs:
        raise ExportRefused(f"{result.label}: the result has no AutoAttack entry; the leaderboard's number is "
                            "standard AutoAttack (run advcli eval --autoattack)")
    for e in runs:
        threat = {"linf": "Linf", "l2": "L2"}.get(str(e.norm))
        track = TRACK_EPS.get((dataset, threat or ""))
        if track is not None and e.eps_text is not None and abs(float(e.eps or 0) - _eps_value(track)) < 1e-7:
            return e, str(threat)
    shown = ", ".join(f"{e.norm} {e.eps_text}" for e in runs)
    tracks = ", ".join(f"{t} {eps}" for (d, t), eps in TRACK_EPS.items() if d == dataset)
    raise ExportRefused(f"{result.label}: AutoAttack ran at {shown}; the {dataset} leaderboard tracks are "
                        f"{tracks or 'none'}")


def _eps_value(text: str) -> float:
    from advcli.config import parse_eps

    return parse_eps(text).value


def _check_standard(result: EvalResult, aa: Any) -> None:
    version = aa.params.get("version")
    if version != "standard":
        raise ExportRefused(f"{result.label}: AutoAttack version {version!r}; the leaderboard takes the "
                            "standard version only (advcli eval --autoattack --aa-version standard)")
    attacks = list(aa.params.get("attacks") or [])
    options = result.provenance.get("options") if isinstance(result.provenance, dict) else None
    restarts = options.get("aa_restarts") if isinstance(options, dict) else None
    if attacks != STANDARD_ATTACKS or restarts is not None:
        what = f"attacks {', '.join(attacks)}" if attacks != STANDARD_ATTACKS else f"--aa-restarts {restarts}"
        raise ExportRefused(f"{result.label}: AutoAttack was customised ({what}); the leaderboard takes "
                            "standard AutoAttack as it is")


def export_entry(result: EvalResult, fields: EntryFields | None = None) -> dict[str, Any]:
    """The `model_info` entry of `result` (an ordered dict, ready for json.dumps); ExportRefused
    for anything the leaderboard would not take or a field neither the result, the shipped
    leaderboard entry nor `fields` gives."""
    fields = fields or EntryFields()
    if result.published:
        raise ExportRefused(f"{result.label}: a published result, not a measurement; export what "
                            "advcli eval measured")
    dataset = str(result.data.dataset)
    if dataset not in TEST_SIZE:
        raise ExportRefused(f"{result.label}: evaluated on {dataset}; the leaderboard's datasets are "
                            f"{', '.join(TEST_SIZE)} (evaluate with --dataset cifar10, cifar100 or imagenet)")
    full = TEST_SIZE[dataset]
    if result.data.split != "test" or int(result.data.n or 0) != full:
        raise ExportRefused(f"{result.label}: evaluated on {result.data.n} {result.data.split} images, a "
                            f"subset; the leaderboard's numbers are on the full {dataset} test set "
                            f"({full} images): run advcli eval without --n")
    aa, threat = _autoattack(result, dataset)
    _check_standard(result, aa)
    if aa.n != full:
        raise ExportRefused(f"{result.label}: AutoAttack ran on {aa.n} images, not the full test set ({full})")
    clean = next((e for e in result.entries if e.attack == "clean"), None)
    if clean is None:
        raise ExportRefused(f"{result.label}: the result has no clean accuracy")
    # A wrapped model is another defence than the leaderboard entry of the model inside it.
    wrapped = any(c.get("role") == "wrap" for c in result.user_code)
    known = None if wrapped else _shipped(result, dataset, threat)
    passes = 1 if not result.user_code else None  # an advcli architecture: one deterministic pass

    def pick(flag: str, given: Any, default: Any) -> Any:
        value = given if given is not None else default
        if value is None or value == "":
            raise ExportRefused(f"{result.label}: the result cannot say the entry's "
                                f"{flag.removeprefix('--').split('/')[0]}; give {flag}")
        return value

    def of_entry(key: str) -> Any:
        return None if known is None else getattr(known, key)

    text = {key: pick(f"--{key}", getattr(fields, key), of_entry(key)) for key in _TEXT_FIELDS}
    entry: dict[str, Any] = {
        "link": text["link"],
        "name": text["name"],
        "authors": text["authors"],
        "additional_data": bool(pick("--additional-data/--no-additional-data", fields.additional_data,
                                     of_entry("additional_data"))),
        "number_forward_passes": int(pick("--number-forward-passes", fields.number_forward_passes,
                                          of_entry("number_forward_passes") or passes)),
        "dataset": dataset,
        "venue": text["venue"],
        "architecture": pick("--architecture", fields.architecture,
                             of_entry("architecture") or ARCHITECTURES.get(str(result.model.arch))),
        "eps": TRACK_EPS[(dataset, threat)],
        "clean_acc": _percent(clean.accuracy),
    }
    reported = fields.reported if fields.reported is not None else of_entry("reported")
    if reported is not None:
        entry["reported"] = str(round(float(reported), 2))
    entry["autoattack_acc"] = _percent(aa.accuracy)
    footnote = fields.footnote or of_entry("footnote")
    if footnote:
        entry["footnote"] = footnote
    return entry
