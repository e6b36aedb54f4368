"""Atomic file writes and hashing: every artifact is written to a temp file in the same folder,
fsynced, then renamed, so a killed run never leaves a half-written file behind."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from advcli.errors import AdvcliError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as exc:
        raise AdvcliError(f"cannot write {str(p)!r}: {exc.strerror}; check the folder exists and is writable") from exc
    try:
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return p


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_yaml_document(path: str | Path, *, what: str, schema: str | None, make_hint: str) -> dict[str, Any]:
    """Read an advcli YAML file: a mapping whose `schema` is `schema` (unchecked when None).

    `what` names the file in errors ("attack summary"); `make_hint` says how to (re)create it.
    Every failure is one ResultsError line naming the path."""
    import yaml

    from advcli.errors import ResultsError

    p = Path(path)
    if not p.is_file():
        raise ResultsError(f"{what} {str(p)!r} does not exist; check the path or {make_hint}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{what} {str(p)!r} is not valid YAML ({exc.__class__.__name__}); {make_hint}") from exc
    if not isinstance(data, dict):
        raise ResultsError(f"{what} {str(p)!r} must be a YAML mapping, got {type(data).__name__}; {make_hint}")
    if schema is not None and data.get("schema") != schema:
        raise ResultsError(
            f"{str(p)!r} is not an advcli {what} (schema {data.get('schema')!r}, expected {schema}); {make_hint}"
        )
    return data


@contextmanager
def all_or_nothing(written: list[Path]) -> Iterator[list[Path]]:
    """Collect the outputs a command writes; if anything fails, delete those already written so
    that no half set of outputs is left behind."""
    try:
        yield written
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise


def plain(value: Any) -> Any:
    """Plain YAML types: str subclasses (e.g. torch's version string), tuples, numpy/torch
    scalars and paths become str/list/float/int, so `yaml.safe_dump` accepts them."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "item") and callable(value.item):
        return plain(value.item())
    return str(value)
