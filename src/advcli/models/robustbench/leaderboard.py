"""RobustBench leaderboard entries (`model_info/<dataset>/<threat model>/<NAME>.json`) as typed rows.

The leaderboard (robustbench.github.io) keeps one JSON file per model in the robustbench
repository's `model_info/`: accuracies as strings in percent (`"83.34"`; `reported` may be
`""` or `"null"` when the paper gave none), `eps` as a fraction string ("8/255", null for the
corruptions track), and the paper's title, authors, venue, link and architecture. advcli ships
the cifar10 Linf/L2, cifar100 Linf and imagenet Linf entries unchanged in the package
(`model_info/` beside this module; see the README there for their source and license); any
other copy of the folder can be read by passing its root.

`LeaderboardEntry.as_result()` turns an entry into a published `EvalResult` (clean and
standard-AutoAttack accuracy on the full test set, the paper's reported number), the row
`compare` shows beside a measured model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advcli.errors import ResultsError

MODEL_INFO = Path(__file__).parent / "model_info"
# The test-set sizes the leaderboard evaluates on (imagenet: robustbench's 5000 validation images).
TEST_SIZE = {"cifar10": 10000, "cifar100": 10000, "imagenet": 5000}
_KNOWN = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
          "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "external", "footnote",
          "unreliable", "corruptions_acc")


@dataclass(frozen=True)
class LeaderboardEntry:
    """One leaderboard entry; accuracies in percent as the leaderboard prints them, None where
    the entry leaves them empty."""

    model: str  # the file's stem: the name robustbench.utils.load_model takes
    dataset: str
    threat_model: str  # Linf, L2 or corruptions (the folder)
    clean_acc: float
    autoattack_acc: float | None
    reported: float | None
    eps: float | None
    eps_text: str | None
    architecture: str
    venue: str
    link: str
    name: str  # the paper's title
    authors: str
    additional_data: bool
    number_forward_passes: int | None
    external: float | None = None  # a stronger attack's number, where one beat AutoAttack
    footnote: str | None = None
    unreliable: bool = False
    corruptions_acc: float | None = None
    other: dict[str, Any] = field(default_factory=dict)  # keys the leaderboard added later

    @property
    def robust_acc(self) -> float | None:
        """The leaderboard's robust accuracy: `external` where given, else AutoAttack's."""
        return self.external if self.external is not None else self.autoattack_acc

    def citation(self) -> str:
        return (f"{self.authors}, \"{self.name}\", {self.venue}, {self.link}; RobustBench leaderboard "
                f"entry {self.dataset}/{self.threat_model}/{self.model}")

    def as_result(self, label: str | None = None) -> Any:
        """A published `EvalResult`: clean and standard-AutoAttack accuracy on the full test set
        (fractions, as result files hold them) and the paper's reported number (attack
        `reported`), labelled `label` (default `robustbench:MODEL`, the label `eval` gives
        the zoo model)."""
        from advcli.formats.results import DataInfo, Entry, EvalResult, ModelInfo

        n = TEST_SIZE.get(self.dataset, 0)
        norm = self.threat_model.lower() if self.threat_model in ("Linf", "L2") else None
        entries = [Entry(attack="clean", accuracy=self.clean_acc / 100, n=n)]
        threat = {"norm": norm, "eps": self.eps, "eps_text": self.eps_text} if norm else {}
        if self.autoattack_acc is not None:
            entries.append(Entry(attack="autoattack", accuracy=self.autoattack_acc / 100, n=n,
                                 params={"version": "standard"}, **threat))
        if self.reported is not None:
            entries.append(Entry(attack="reported", accuracy=self.reported / 100, n=n, **threat))
        return EvalResult(
            label=label or f"robustbench:{self.model}",
            model=ModelInfo(checkpoint=None, sha256=None, arch=self.architecture,
                            trained_with="unknown",
                            threat_model={"norm": norm, "eps": self.eps, "eps_text": self.eps_text}
                            if norm else None),
            data=DataInfo(dataset=self.dataset, split="test", n=n),
            entries=entries,
            published=True,
            citation=self.citation(),
        )


def _percent(value: Any, key: str, source: Path) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none", "-")):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ResultsError(f"{str(source)!r}: {key} {value!r} is not a percentage") from None


def _eps(value: Any, source: Path) -> tuple[float | None, str | None]:
    if value is None:
        return None, None
    from advcli.config import parse_eps
    from advcli.errors import UsageError

    try:
        e = parse_eps(str(value), name="eps")
    except UsageError as exc:
        raise ResultsError(f"{str(source)!r}: eps {value!r} is not a number or fraction") from exc
    return e.value, e.text


def read_entry(path: str | Path) -> LeaderboardEntry:
    """One `model_info` JSON file; dataset and threat model from its two parent folders."""
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"cannot read the leaderboard entry {str(p)!r}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ResultsError(f"{str(p)!r} is not a leaderboard entry (a JSON object)")
    clean = _percent(raw.get("clean_acc"), "clean_acc", p)
    if clean is None:
        raise ResultsError(f"{str(p)!r} has no clean_acc; it is not a leaderboard entry")
    eps, eps_text = _eps(raw.get("eps"), p)
    passes = raw.get("number_forward_passes")
    return LeaderboardEntry(
        model=p.stem,
        dataset=str(raw.get("dataset") or p.parent.parent.name),
        threat_model=p.parent.name,
        clean_acc=clean,
        autoattack_acc=_percent(raw.get("autoattack_acc"), "autoattack_acc", p),
        reported=_percent(raw.get("reported"), "reported", p),
        eps=eps,
        eps_text=eps_text,
        architecture=str(raw.get("architecture", "")),
        venue=str(raw.get("venue", "")),
        link=str(raw.get("link", "")),
        name=str(raw.get("name", "")),
        authors=str(raw.get("authors", "")),
        additional_data=bool(raw.get("additional_data", False)),
        number_forward_passes=None if passes is None else int(passes),
        external=_percent(raw.get("external"), "external", p),
        footnote=raw.get("footnote") or None,
        unreliable=bool(raw.get("unreliable", False)),
        corruptions_acc=_percent(raw.get("corruptions_acc"), "corruptions_acc", p),
        other={k: v for k, v in raw.items() if k not in _KNOWN},
    )


def entry_path(model: str, dataset: str, threat_model: str, root: str | Path | None = None) -> Path:
    return Path(root or MODEL_INFO) / dataset / threat_model / f"{model}.json"


def find_entry(model: str, dataset: str = "cifar10", threat_model: str = "Linf",
               root: str | Path | None = None) -> LeaderboardEntry | None:
    """The entry of `model` under `root` (default: the copy shipped in the package), or None."""
    path = entry_path(model, dataset, threat_model, root)
    return read_entry(path) if path.is_file() else None


def published_row(model: str, dataset: str = "cifar10", threat_model: str = "Linf",
                  root: str | Path | None = None, label: str | None = None) -> Any:
    """The published `EvalResult` of `model`'s leaderboard entry (see `as_result`); a
    ResultsError when `root` holds no such entry."""
    entry = find_entry(model, dataset, threat_model, root)
    if entry is None:
        raise ResultsError(f"no RobustBench leaderboard entry {dataset}/{threat_model}/{model} in "
                           f"{str(Path(root or MODEL_INFO))!r}")
    return entry.as_result(label)


def entries(dataset: str, threat_model: str, root: str | Path | None = None) -> list[LeaderboardEntry]:
    """Every entry of one dataset and threat model, by model name."""
    folder = Path(root or MODEL_INFO) / dataset / threat_model
    return [read_entry(p) for p in sorted(folder.glob("*.json"))]
