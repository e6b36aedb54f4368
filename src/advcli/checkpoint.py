"""Self-describing safetensors checkpoints.

Weights are a safetensors file; `__metadata__` holds string keys prefixed `advcli.` (schema,
arch, num_classes, input_shape, dataset, mean, std, config, seed, metrics, history, versions,
git_sha, parent_sha256, threat_model, ...). Values that are not strings are stored as JSON.
Loading needs only the path; `read_metadata` reads the header without touching the weights.
Pickle is never used.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from advcli.errors import CheckpointError
from advcli.io import atomic_write_bytes, sha256_file
from advcli.models import Classifier, build_model

SCHEMA = "advcli.checkpoint/1"
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
    p = Path(path)
    meta = read_metadata(p)
    try:
        tensors = st_load(p.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{str(p)!r} could not be read ({exc}); the file is truncated or corrupt: re-create it"
        ) from exc
    return {k: v.to(device) for k, v in tensors.items()}, meta


def model_metadata(
    *,
    arch: str,
    num_classes: int,
    dataset: str,
    mean: list[float],
    std: list[float],
    input_shape: list[int] | tuple[int, ...] = (3, 32, 32),
    **extra: Any,
) -> dict[str, Any]:
    from advcli.provenance import git_sha, versions

    meta: dict[str, Any] = {
        "schema": SCHEMA,
        "arch": arch,
        "num_classes": int(num_classes),
        "input_shape": list(input_shape),
        "dataset": dataset,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "versions": versions(),
        "git_sha": git_sha(),
    }
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta


def save_checkpoint(path: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Save a Classifier's weights with its self-description (see `model_metadata`)."""
    for key in ("schema", "arch", "num_classes", "mean", "std"):
        if key not in meta:
            raise ValueError(f"checkpoint metadata lacks {key!r}")
    state = {k: v for k, v in _unwrap(model).state_dict().items()}
    return save_tensors(path, state, meta)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # DistributedDataParallel / torch.compile wrap the real module.
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


@dataclass
class LoadedCheckpoint:
    model: Classifier
    meta: dict[str, Any]
    path: Path
    sha256: str


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model from the metadata alone and load the weights; the model is in eval mode."""
    p = Path(path)
    tensors, meta = load_tensors(p)
    if meta.get("schema") != SCHEMA:
        raise CheckpointError(
            f"{str(p)!r} is not an advcli checkpoint (schema {meta.get('schema')!r}); "
            "bring outside weights in with `advcli import`"
        )
    try:
        model = build_model(meta["arch"], int(meta["num_classes"]), meta["mean"], meta["std"])
    except KeyError as exc:
        raise CheckpointError(f"{str(p)!r} metadata lacks {exc}; the checkpoint is incomplete") from exc
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{str(p)!r} does not match arch {meta['arch']!r}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.to(device).eval()
    return LoadedCheckpoint(model=model, meta=meta, path=p, sha256=sha256_file(p))
