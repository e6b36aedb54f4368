"""Self-describing safetensors checkpoints.

Weights are a safetensors file; `__metadata__` holds string keys prefixed `advcli.` (schema,
arch, num_classes, input_shape, dataset, mean, std, config, seed, metrics, history, versions,
git_sha, parent_sha256, threat_model, ...). Values that are not strings are stored as JSON.
Loading needs only the path; `read_metadata` reads the header without touching the weights.
Pickle is never used. The file layer (`save_tensors`, `load_tensors`, `read_metadata`) lives in
`advcli.formats.tensorfile` and is re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from advcli.errors import CheckpointError
from advcli.formats.tensorfile import PREFIX, load_tensors, read_metadata, save_tensors
from advcli.io import sha256_file
from advcli.models.registry import Classifier, build_model

__all__ = [
    "PREFIX", "SCHEMA", "LoadedCheckpoint", "load_checkpoint", "load_tensors", "model_metadata",
    "read_metadata", "save_checkpoint", "save_tensors",
]

SCHEMA = "advcli.checkpoint/1"


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
    from advcli.provenance import git_sha, machine, versions

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
        "machine": machine(),
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
