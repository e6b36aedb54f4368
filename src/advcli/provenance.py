"""What every artifact records about how it was made: argv, versions, git sha, time."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

import advcli


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The advcli source tree's commit, when it is a git checkout; None otherwise."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def versions() -> dict[str, str]:
    import numpy

    return {
        "advcli": advcli.__version__,
        "torch": str(torch.__version__),  # TorchVersion is a str subclass yaml refuses
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def provenance(seed: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "argv": list(sys.argv),
        "versions": versions(),
        "git_sha": git_sha(),
        "time": now_iso(),
        "seed": seed,
    }
    if extra:
        info.update(extra)
    return info
