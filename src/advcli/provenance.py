"""What every artifact records about how it was made: argv, versions, git sha, time."""

from __future__ import annotations

import datetime as _dt
import os
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


def cpu_model_from(cpuinfo: str) -> str | None:
    """The model name in a /proc/cpuinfo text (x86 `model name`, ARM `Model`/`Hardware`)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return None


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what the platform module reports)."""
    try:
        name = cpu_model_from(Path("/proc/cpuinfo").read_text())
    except OSError:
        name = None
    return name or platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, Any]:
    """Where the numbers were made: CPU model, cores seen, torch's intra-op thread count, GPU.
    Speed claims are only comparable with these beside them."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def provenance(seed: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "argv": list(sys.argv),
        "versions": versions(),
        "git_sha": git_sha(),
        "time": now_iso(),
        "seed": seed,
        "machine": machine(),
    }
    if extra:
        info.update(extra)
    return info
