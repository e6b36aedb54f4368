"""The progress file of `advcli eval` (schema `advcli.eval-progress/1`), kept beside `-o`.

A long evaluation (AutoAttack on thousands of examples) can be killed at any moment. `eval`
therefore records, after every finished chunk of examples of every (attack, eps), that chunk's
per-example flags and worst perturbation in this file, written atomically (`advcli.io`), so a
kill leaves either the previous or the next version, never half of one. `eval --resume` reads
it, skips the finished chunks and, because every chunk is seeded by its own number (see
`advcli.evaluate.run`), ends with the result an uninterrupted run writes.

What is in the file:
- `fingerprint`: what the numbers depend on (checkpoint sha256; when there is user code, the
  `--model`/`--wrap` callables, their files' sha256s and the sha256s of the weights they built,
  `{role}_callable`, `{role}_sha256`, `{role}_weights_sha256`; the examples and the `--subset` that chose
  them, the options that change results, the advcli / torch / pyautoattack versions). A resume with any of them
  different is refused with one line naming the first difference: mixing chunks of two setups
  would give a result file that no single run could have produced.
- `clean`: the clean flags, reused on resume (PGD's chunks are cut from the clean-correct
  examples, so they must be the same examples).
- `chunks`: per attack key (`pgd linf 8/255`), the finished chunks: `chunk` number, `n`,
  `flags` (base64 bitset, as in result files), `max_perturbation`, `time_s` and the attack's
  extra fields (AutoAttack's warnings, attacks run and restarts).

The file is deleted once the result file is written. `ADVCLI_TEST_STOP_AFTER=N` (tests only)
makes a run stop as a kill would, with KeyboardInterrupt, right after the N-th chunk is
recorded; it is read in `EvalProgress.commit` and nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from advcli.errors import ResultsError, UsageError
from advcli.formats.results import decode_flags, encode_flags
from advcli.io import atomic_write_text, plain, read_yaml_document

SCHEMA = "advcli.eval-progress/1"
STOP_AFTER_ENV = "ADVCLI_TEST_STOP_AFTER"
_HINT = "delete it to start the evaluation over"


def progress_path_for(out: str | Path) -> Path:
    """`results/robust.yaml` -> `results/robust.progress.yaml` (beside the result file)."""
    p = Path(out)
    stem = p.name.removesuffix(".yaml").removesuffix(".yml")
    return p.with_name(f"{stem}.progress.yaml")


@dataclass
class ChunkRecord:
    """One finished chunk: its per-example flags (True = still correct), in example order."""

    flags: np.ndarray
    max_perturbation: float
    time_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, chunk: int) -> dict[str, Any]:
        d: dict[str, Any] = {"chunk": int(chunk), "n": int(len(self.flags)),
                             "flags": encode_flags(self.flags),
                             "max_perturbation": float(self.max_perturbation),
                             "time_s": round(float(self.time_s), 3)}
        d.update(plain(self.extra))
        return d


@dataclass
class EvalProgress:
    """The finished work of one evaluation; `path` None keeps it in memory only (no `-o`).

    `writer` False (torchrun ranks other than 0) keeps the bookkeeping but never writes."""

    path: Path | None
    fingerprint: dict[str, Any]
    clean: np.ndarray | None = None
    clean_time_s: float = 0.0
    chunks: dict[str, dict[int, ChunkRecord]] = field(default_factory=dict)
    writer: bool = True
    commits: int = 0
    reused: int = 0  # chunks found in the file when the run started

    def done(self, key: str) -> dict[int, ChunkRecord]:
        return self.chunks.setdefault(key, {})

    def add(self, key: str, chunk: int, record: ChunkRecord) -> None:
        self.done(key)[int(chunk)] = record

    def n_done(self) -> int:
        return sum(len(v) for v in self.chunks.values())

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": SCHEMA, "fingerprint": plain(self.fingerprint)}
        if self.clean is not None:
            d["clean"] = {"n": int(len(self.clean)), "flags": encode_flags(self.clean),
                          "time_s": round(float(self.clean_time_s), 3)}
        d["chunks"] = {key: [rec.to_dict(c) for c, rec in sorted(done.items())]
                       for key, done in self.chunks.items() if done}
        return d

    def save(self) -> None:
        if self.path is not None and self.writer:
            atomic_write_text(self.path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def commit(self) -> None:
        """Save after a finished chunk. The test hook stops the run here, after the write, as
        a kill between two chunks would."""
        self.save()
        self.commits += 1
        stop = os.environ.get(STOP_AFTER_ENV)
        if stop and self.commits >= int(stop):
            raise KeyboardInterrupt(f"{STOP_AFTER_ENV}={stop}")


def start_progress(path: Path | None, fingerprint: dict[str, Any], *, resume: bool,
                   writer: bool = True) -> EvalProgress:
    """The progress of a new run, or of the run being resumed (checked to be the same run).

    Without `resume`, an existing file is refused rather than overwritten: it may hold hours of
    finished chunks. With `resume` and no file, the run starts from the beginning, so that a
    script can always pass --resume."""
    fingerprint = _yaml_roundtrip(fingerprint)
    if path is None or not path.is_file():
        return EvalProgress(path, fingerprint, writer=writer)
    if not resume:
        raise UsageError(f"{str(path)!r} holds the progress of an interrupted evaluation; add "
                         f"--resume to continue it, or {_HINT}")
    progress = load_progress(path)
    saved_data, data = progress.fingerprint.get("data"), fingerprint.get("data")
    if isinstance(saved_data, dict) and isinstance(data, dict) and "subset" in data:
        # Files written before --subset existed all took the stratified order.
        saved_data.setdefault("subset", "stratified")
    check_same_run(progress.fingerprint, fingerprint, path)
    progress.writer = writer
    progress.reused = progress.n_done()
    return progress


def load_progress(path: str | Path) -> EvalProgress:
    """Read a progress file; every problem is one ResultsError naming it."""
    p = Path(path)
    data = read_yaml_document(p, what="eval progress file", schema=SCHEMA, make_hint=_HINT)
    try:
        fingerprint = data["fingerprint"]
        if not isinstance(fingerprint, dict):
            raise TypeError("fingerprint is not a mapping")
        progress = EvalProgress(p, fingerprint)
        clean = data.get("clean")
        if clean is not None:
            progress.clean = decode_flags(clean["flags"], int(clean["n"]))
            progress.clean_time_s = float(clean.get("time_s") or 0.0)
        for key, records in (data.get("chunks") or {}).items():
            for rec in records:
                extra = {k: v for k, v in rec.items()
                         if k not in ("chunk", "n", "flags", "max_perturbation", "time_s")}
                progress.add(str(key), int(rec["chunk"]), ChunkRecord(
                    flags=decode_flags(rec["flags"], int(rec["n"])),
                    max_perturbation=float(rec["max_perturbation"]),
                    time_s=float(rec.get("time_s") or 0.0), extra=extra))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ResultsError(f"eval progress file {str(p)!r} is malformed ({exc}); {_HINT}") from exc
    return progress


def check_same_run(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse, in one line, to continue a run whose numbers would depend on other inputs."""
    saved, current = _yaml_roundtrip(saved), _yaml_roundtrip(current)
    if saved == current:
        return
    what = {"checkpoint": "another checkpoint", "user_code": "other user code (--model/--wrap)",
            "data": "other examples", "options": "other options", "versions": "other versions"}
    for section in (*what, *sorted(set(saved) | set(current))):
        a, b = saved.get(section), current.get(section)
        if a == b:
            continue
        label = what.get(section, section)
        diff = _user_code_difference(a, b) if section == "user_code" else _first_difference(a, b, section)
        raise UsageError(f"cannot resume from {str(path)!r}: it was made with {label} ({diff}); "
                         f"rerun with the original ones to continue, or {_HINT}")


def _first_difference(a: Any, b: Any, section: str) -> str:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return f"{_show(a)} there, {_show(b)} here"
    # In the fingerprint's own order (what chose the examples before their hashes), then any
    # key only the file has.
    for key in [*b, *(k for k in a if k not in b)]:
        if a.get(key) != b.get(key):
            name = f"--{str(key).replace('_', '-')}" if section == "options" else str(key)
            return f"{name}: {_show(a.get(key))} there, {_show(b.get(key))} here"
    return "they differ"


_CODE_FIELDS = (("callable", "callable"), ("sha256", "file sha256"), ("weights_sha256", "weights sha256"))


def _user_code_difference(a: Any, b: Any) -> str:
    """The first difference of two `user_code` identities, as text: "--wrap shift: weights
    sha256 1a2b… there, 9f8e… here" or "--wrap shift with file sha256 …, weights sha256 …
    there, none here" or "no --wrap there, --wrap shift with … here"."""
    a, b = (v if isinstance(v, dict) else {} for v in (a, b))
    roles = list(dict.fromkeys(str(k).split("_", 1)[0] for k in [*b, *a]))
    for role in roles:
        there, here = _code_text(a, role), _code_text(b, role)
        if there == "none" or here == "none":
            if there == here:
                continue
            if not a or not b:  # no user code at all on one side
                return f"{_codes_text(a, roles)} there, {_codes_text(b, roles)} here"
            there, here = (t if t != "none" else f"no --{role}" for t in (there, here))
            return f"{there} there, {here} here"
        for key, name in _CODE_FIELDS:
            x, y = a.get(f"{role}_{key}"), b.get(f"{role}_{key}")
            if x == y:
                continue
            if key == "weights_sha256" and x is None:
                return (f"--{role} {b.get(f'{role}_callable')}: weights sha256 not recorded there "
                        f"(an older advcli), {_show(y)} here")
            why = "; the same code built other weights" if key == "weights_sha256" else ""
            return f"--{role} {b.get(f'{role}_callable')}: {name} {_show(x)} there, {_show(y)} here{why}"
    return "they differ"


def _codes_text(ident: dict[str, Any], roles: list[str]) -> str:
    return " + ".join(t for t in (_code_text(ident, r) for r in roles) if t != "none") or "none"


def _code_text(ident: dict[str, Any], role: str) -> str:
    if f"{role}_callable" not in ident and f"{role}_sha256" not in ident:
        return "none"
    shas = [f"{name} {_show(ident[f'{role}_{key}'])}" for key, name in _CODE_FIELDS[1:]
            if f"{role}_{key}" in ident]
    return f"--{role} {ident.get(f'{role}_callable')} with {', '.join(shas)}"


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"  # a sha256: the first 12 digits tell them apart
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def _yaml_roundtrip(value: dict[str, Any]) -> dict[str, Any]:
    # What is compared is what the file can hold: tuples become lists, numpy scalars numbers.
    out: dict[str, Any] = yaml.safe_load(yaml.safe_dump(plain(value), sort_keys=False))
    return out


def discard(path: Path | None) -> None:
    """Delete the progress file once the result file is written."""
    if path is not None:
        path.unlink(missing_ok=True)
