"""Safetensors files with advcli metadata: the one reader and writer of tensor files.

Every tensor file advcli writes goes through here: checkpoints and training state
(`models/checkpoint.py`, `train/loop.py`), adversarial sets (`formats/advset.py`), landscape directions
(`landscape/directions.py`) and the decoded-image cache (`data/datasets.py`). It sits on the
ground floor (errors and io only) so that data/ can cache tensors without importing
models/checkpoint.py and, through it, the model registry.

`__metadata__` holds string keys prefixed `advcli.`; values that are not strings are stored as
JSON. `read_metadata` reads the header without touching the tensors. Pickle is never used.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from advcli.errors import CheckpointError
from advcli.io import atomic_write_bytes

PREFIX = "advcli."


def _encode(meta: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in meta.items():
        out[PREFIX + key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX):]
        try:
            meta[name] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            meta[name] = value
    return meta


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write tensors + advcli metadata atomically (weights, training state, adversarial sets)."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write_bytes(path, st_save(flat, metadata=_encode(meta)))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The advcli metadata of a safetensors file, from its header only."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist; check the path")
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000 or n + 8 > p.stat().st_size:
                raise ValueError("header length is beyond the end of the file")
            header = json.loads(fh.read(n))
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
            if 8 + n + max(ends, default=0) != p.stat().st_size:
                raise ValueError("its size does not match its header")
    except (ValueError, UnicodeDecodeError, OSError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(
            f"{str(p)!r} is not a readable safetensors file ({exc}); it may be truncated or corrupt"
        ) from exc
    raw = header.get("__metadata__") or {}
    return _decode(raw)


def load_tensors(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """All tensors of a safetensors file (on `device`) and its advcli metadata."""
    p = Path(path)
    meta = read_metadata(p)
    try:
        tensors = st_load(p.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{str(p)!r} could not be read ({exc}); the file is truncated or corrupt: re-create it"
        ) from exc
    return {k: v.to(device) for k, v in tensors.items()}, meta
