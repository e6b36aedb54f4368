"""`--device auto|cpu|cuda[:N]` resolution."""

from __future__ import annotations

import torch

from advcli.errors import UsageError


def resolve_device(name: str = "auto") -> torch.device:
    """auto -> cuda when a GPU is present, else cpu; asking for cuda without one is an error."""
    key = (name or "auto").strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if key == "cpu":
        return torch.device("cpu")
    if key.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        return torch.device(key)
    raise UsageError(f"unknown device {name!r}; valid values: auto, cpu, cuda, cuda:N")
