"""The RobustBench leaderboard row beside a measured zoo model.

A result measured on a RobustBench model records it: `robustbench:NAME` by name and an
imported checkpoint both give the arch `robustbench:DATASET/THREAT/NAME`, and a zoo model's
user code carries `robustbench_entry`. For each such label, compare adds that entry's
published row (`LeaderboardEntry.as_result`, under the measured label so that it sits right
before the measured row and is cited as published rows are), unless a published row of the
label was given already.

The leaderboard's numbers are for one threat model (e.g. L∞ ε = 8/255); set beside
measurements at another they would read as a comparison they are not. The row is added only
when one of the label's measured robust entries has the entry's norm and eps, and a note
says why it is missing otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from advcli.errors import UsageError
from advcli.formats.results import EvalResult, format_number
from advcli.models.robustbench.leaderboard import MODEL_INFO, TEST_SIZE, LeaderboardEntry, find_entry

PREFIX = "robustbench:"
_THREATS = {"linf": "Linf", "l2": "L2"}
_NORM_TEXT = {"linf": "L∞", "l2": "L2"}


def zoo_entry(result: EvalResult) -> tuple[str, str, str] | None:
    """(dataset, threat model, name) of the RobustBench model `result` measured, or None.
    The arch names it outright; a bare `robustbench:NAME` label takes the dataset and threat
    model as `eval` resolves them (the evaluated dataset if the leaderboard has it, the
    recorded norm; else cifar10, Linf)."""
    codes = [c.get("robustbench_entry") for c in result.user_code if c.get("robustbench_entry")]
    for spec in (result.model.arch, *(f"{PREFIX}{c}" for c in codes), result.label):
        text = str(spec or "")
        if not text.startswith(PREFIX):
            continue
        parts = text.removeprefix(PREFIX).strip().split("/")
        if len(parts) == 3 and parts[1].lower() in _THREATS and parts[2]:
            return parts[0].lower(), _THREATS[parts[1].lower()], parts[2]
        if len(parts) == 1 and parts[0]:
            dataset = str(result.data.dataset or "").lower()
            norm = str((result.model.threat_model or {}).get("norm") or "linf").lower()
            return (dataset if dataset in TEST_SIZE else "cifar10", _THREATS.get(norm, "Linf"),
                    parts[0])
    return None


def _threat_text(norm: str | None, eps_text: str | None) -> str:
    return f"{_NORM_TEXT.get(str(norm), norm)} ε = {eps_text}"


def _measured_threats(results: Sequence[EvalResult]) -> dict[tuple[str | None, float], str]:
    """The (norm, eps) of every measured robust entry, with its eps as written."""
    found: dict[tuple[str | None, float], str] = {}
    for r in results:
        for e in r.entries:
            eps = e.eps_key()
            if not e.is_clean and eps is not None:
                found.setdefault((e.norm, eps), e.eps_text or format_number(eps))
    return found


def _row_or_note(label: str, where: tuple[str, str, str], measured: Sequence[EvalResult],
                 root: Path | None) -> EvalResult | str:
    dataset, threat_model, name = where
    entry: LeaderboardEntry | None = find_entry(name, dataset, threat_model, root)
    spelled = f"{dataset}/{threat_model}/{name}"
    if entry is None:
        return (f"{label}: no RobustBench leaderboard entry {spelled} in "
                f"{'the copy shipped with advcli' if root is None else repr(str(root))}; no "
                "leaderboard row")
    norm = threat_model.lower()
    threats = _measured_threats(measured)
    if entry.eps is not None and (norm, round(entry.eps, 7)) in threats:
        return entry.as_result(label)
    theirs = "no eps" if entry.eps is None else _threat_text(norm, entry.eps_text)
    ours = ", ".join(_threat_text(n, t) for (n, _), t in threats.items()) or "only clean accuracy"
    return (f"{label}: RobustBench leaderboard row {spelled} not shown: the leaderboard "
            f"measures {theirs}, this row {ours}; evaluate at the leaderboard's threat model "
            "to set them side by side")


def leaderboard_rows(results: Sequence[EvalResult],
                     root: str | Path | None = None) -> tuple[list[EvalResult], list[str]]:
    """The published leaderboard rows for the measured RobustBench models among `results`,
    and the notes on those left out. `root`: a `model_info` folder (default: the package's)."""
    if root is not None and not Path(root).is_dir():
        raise UsageError(f"--leaderboard-dir {str(root)!r} is not a folder; pass a copy of "
                         f"robustbench's model_info/ (DATASET/THREAT/NAME.json), default {MODEL_INFO.name}/ "
                         "shipped with advcli")
    published = {r.label for r in results if r.published}
    by_label: dict[str, list[EvalResult]] = {}
    for r in results:
        if not r.published and r.label not in published:
            by_label.setdefault(r.label, []).append(r)
    rows: list[EvalResult] = []
    notes: list[str] = []
    for label, measured in by_label.items():
        where = next((w for w in map(zoo_entry, measured) if w is not None), None)
        if where is None:
            continue
        found = _row_or_note(label, where, measured, None if root is None else Path(root))
        if isinstance(found, str):
            notes.append(found)
        else:
            rows.append(found)
    return rows, notes
