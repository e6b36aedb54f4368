"""The audit column of `advcli compare`: audit files (`advcli audit -o FILE.yaml`) given among
compare's inputs put each model's audit verdict beside its accuracies.

An audit belongs to a row when it audited the same thing the row's results measured: the same
checkpoint (sha256) behind the same user code (`--model` / `--wrap`: role, callable, file
sha256 and built weights' sha256). A
checkpoint audited with a wrapper is a different thing from the bare checkpoint, so their
verdicts never mix. A row with several seeds shows the worst verdict and how many of its
checkpoints it covers ("fail 1/3: curve"); an audit that matches no row is named in a table note,
never dropped silently. Where a row's audits ran different checks (a recipe that runs every
check on one seed and the cheaper ones on the others), the cell says which check ran on how many
of them ("pass; black-box on 1/3").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advcli.audit.file import VERDICTS, read_audit

# Worst first: a row's cell shows the worst verdict among its checkpoints' audits.
_SEVERITY = {v: i for i, v in enumerate(reversed(VERDICTS))}  # fail 0, warn 1, pass 2


@dataclass(frozen=True)
class AuditEntry:
    """What the audit column needs from one audit file."""

    path: Path
    label: str
    verdict: str
    checkpoint_sha256: str | None
    code: tuple[str, ...]  # `code_identity` of the --model / --wrap records
    failed: tuple[str, ...]  # checks that failed (or warned, for a warn verdict)
    checks: tuple[str, ...] = ()  # the checks the audit ran, in report order

    @property
    def identity(self) -> tuple[str | None, tuple[str, ...]]:
        return (self.checkpoint_sha256, self.code)


def code_identity(user_code: Sequence[dict[str, Any]] | None) -> tuple[str, ...]:
    """What a result's user code is, one string per record: role, callable, the file's sha256
    and, when recorded, the built weights' sha256 (empty for a plain checkpoint). Two wrappers
    in one file, or one file's module with other weights, are different things."""
    return tuple(sorted(
        ":".join(str(c.get(k) or "") for k in ("role", "callable", "sha256", "weights_sha256"))
        for c in user_code or ()))


def read_audit_entry(path: str | Path) -> AuditEntry:
    """One audit file as an `AuditEntry` (schema and statuses checked by `read_audit`)."""
    p = Path(path)
    doc = read_audit(p)
    model = doc.get("model") or {}
    verdict = str(doc["verdict"])
    flagged = "fail" if verdict == "fail" else "warn"
    failed = tuple(str(c["check"]) for c in doc["checks"] if c.get("status") == flagged)
    return AuditEntry(p, str(doc.get("label") or p.stem), verdict, model.get("sha256"),
                      code_identity(doc.get("user_code")), failed, tuple(str(c["check"]) for c in doc["checks"]))


def cell_text(audits: Sequence[AuditEntry], n_checkpoints: int) -> str:
    """"pass", "fail: curve, gradients", "warn 1/3: precision", "pass 2/3" (one not audited)."""
    if not audits:
        return "—"
    worst = min(audits, key=lambda a: _SEVERITY[a.verdict]).verdict
    hits = [a for a in audits if a.verdict == worst]
    text = worst
    if worst != "pass":
        if len(hits) < n_checkpoints:
            text += f" {len(hits)}/{n_checkpoints}"
        checks = sorted({c for a in hits for c in a.failed})
        if checks:
            text += ": " + ", ".join(checks)
    elif len(audits) < n_checkpoints:
        text += f" {len(audits)}/{n_checkpoints}"
    ran = [c for a in audits for c in a.checks]
    for check in dict.fromkeys(ran):  # first-seen order: the report's
        if ran.count(check) < len(audits):
            text += f"; {check} on {ran.count(check)}/{len(audits)}"
    return text


@dataclass
class AuditColumn:
    """Per row label, the cell text; and the notes for audits that match no row."""

    cells: dict[str, str]
    notes: list[str]


def audit_column(
    rows: Sequence[tuple[str, Sequence[tuple[str | None, tuple[str, ...]]]]],
    audits: Sequence[AuditEntry],
) -> AuditColumn:
    """`rows`: (row label, identities of its checkpoints) for every reproduced row.

    An audit matches a checkpoint with the same (sha256, user-code sha256s); an audit of user
    code without weights (no checkpoint sha256) matches by the row label instead."""
    used: set[int] = set()
    cells: dict[str, str] = {}
    for label, identities in rows:
        ids = set(identities)
        found = []
        for i, a in enumerate(audits):
            if a.identity in ids or (a.checkpoint_sha256 is None and a.label == label
                                     and any(c == a.code for _, c in ids)):
                found.append(a)
                used.add(i)
        cells[label] = cell_text(_one_per_checkpoint(found), max(len(ids), 1))
    notes = [f"audit {str(a.path)!r} ({a.label}: {a.verdict}) matches no row: it audited another "
             "checkpoint or other --model/--wrap code than the results compared"
             for i, a in enumerate(audits) if i not in used]
    return AuditColumn(cells, notes)


def _one_per_checkpoint(audits: list[AuditEntry]) -> list[AuditEntry]:
    """Several audits of one checkpoint (e.g. quick and full): the worst one speaks for it."""
    best: dict[tuple[str | None, tuple[str, ...], str], AuditEntry] = {}
    for a in audits:
        key = (*a.identity, a.label if a.checkpoint_sha256 is None else "")
        if key not in best or _SEVERITY[a.verdict] < _SEVERITY[best[key].verdict]:
            best[key] = a
    return list(best.values())
