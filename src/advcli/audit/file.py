"""The audit file format (`advcli audit -o audit.yaml`, `schema: advcli.audit/1`), written and
read only here.

One YAML mapping: the verdict (pass | warn | fail), what was audited (model, user code with
sha256, data with the index hash, threat model), and one entry per check run, in report
order: its status, one line of what was measured, one line of what to do, every judged count
with the limits applied to it (`findings`), and the evidence behind them (`numbers`: accuracies
per attack, the curve's points, the packages' own messages). Numbers are typed, never strings;
provenance is recorded like in every advcli result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from advcli.formats.results import DataInfo, ModelInfo
from advcli.io import atomic_write_text, plain, read_yaml_document

SCHEMA = "advcli.audit/1"
VERDICTS = ("pass", "warn", "fail")


@dataclass
class Finding:
    """One judged count: its value, over which population, its status and the rule applied."""

    metric: str
    what: str
    value: int
    of: int
    status: str
    limits: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "what": self.what, "value": int(self.value), "of": int(self.of),
                "status": self.status, "limits": dict(self.limits)}


@dataclass
class CheckResult:
    """The outcome of one check."""

    check: str
    title: str
    status: str
    measured: str
    advice: str
    findings: list[Finding] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    time_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"check": self.check, "title": self.title, "status": self.status,
                             "measured": self.measured, "advice": self.advice,
                             "findings": [f.to_dict() for f in self.findings],
                             "numbers": plain(self.numbers)}
        if self.notes:
            d["notes"] = [str(n) for n in self.notes]
        if self.time_s is not None:
            d["time_s"] = round(float(self.time_s), 3)
        return d


@dataclass
class AuditResult:
    """The content of one `advcli.audit/1` file."""

    label: str
    verdict: str
    model: ModelInfo
    data: DataInfo
    threat_model: dict[str, Any]
    clean_accuracy: float
    checks: list[CheckResult]
    user_code: list[dict[str, str]] = field(default_factory=list)  # --model / --wrap files
    seed: int | None = None
    time_s: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.check == name:
                return c
        raise KeyError(f"no check {name!r} in this audit")

    @property
    def statuses(self) -> dict[str, str]:
        """check -> status, for every check run."""
        return {c.check: c.status for c in self.checks}

    def curve_points(self) -> list[dict[str, Any]]:
        try:
            return list(self.check("curve").numbers.get("points", []))
        except KeyError:
            return []

    def to_dict(self) -> dict[str, Any]:
        m, d = self.model, self.data
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "label": self.label,
            "verdict": self.verdict,
            "seed": self.seed,
            "model": plain({"checkpoint": m.checkpoint, "sha256": m.sha256, "arch": m.arch,
                            "trained_with": m.trained_with, "seed": m.seed,
                            "threat_model": m.threat_model}),
            "user_code": plain(self.user_code),
            "data": plain({"dataset": d.dataset, "split": d.split, "n": d.n, "seed": d.seed,
                           "subset": d.subset, **d.subset_fields(), "index_sha256": d.index_sha256,
                           "examples_sha256": d.examples_sha256, **d.view_fields()}),
            "threat_model": plain(self.threat_model),
            "clean_accuracy": float(self.clean_accuracy),
            "checks": [c.to_dict() for c in self.checks],
        }
        if self.time_s is not None:
            out["time_s"] = round(float(self.time_s), 3)
        out["provenance"] = plain(self.provenance)
        return out


def dump_audit(result: AuditResult) -> str:
    return yaml.safe_dump(result.to_dict(), sort_keys=False, allow_unicode=True)


def save_audit(path: str | Path, result: AuditResult) -> Path:
    """Write the audit file atomically."""
    return atomic_write_text(path, dump_audit(result))


def read_audit(path: str | Path) -> dict[str, Any]:
    """An audit file as a mapping, checked for its schema, verdict and per-check statuses
    (what `compare` needs for an audit column); every problem is one ResultsError line."""
    from advcli.errors import ResultsError

    hint = "re-create it with `advcli audit CKPT -o FILE.yaml`"
    data = read_yaml_document(path, what="audit file", schema=SCHEMA, make_hint=hint)
    if data.get("verdict") not in VERDICTS:
        raise ResultsError(f"audit file {str(path)!r}: `verdict` must be one of {', '.join(VERDICTS)}, "
                           f"got {data.get('verdict')!r}; {hint}")
    checks = data.get("checks")
    if not isinstance(checks, list) or not all(isinstance(c, dict) and "check" in c and "status" in c
                                               for c in checks):
        raise ResultsError(f"audit file {str(path)!r}: `checks` must be a list of mappings with "
                           f"`check` and `status`; {hint}")
    return data
