"""Random directions in parameter space and their filter normalisation (Li et al. 2018).

A direction is a mapping parameter name -> tensor of that parameter's shape.

- `gaussian_directions(model, count, seed)` draws *raw* directions: i.i.d. N(0, 1) entries for
  every parameter, in `named_parameters()` order, from one CPU generator: the
  `landscape_directions` stream of `seed` (`advcli.rng`).
  Same seed and architecture -> the same raw directions, on any device, so two checkpoints of
  one architecture are compared along the same random directions.
- `filter_normalize(raw, model)` rescales each filter of a raw direction to the norm of the
  matching filter of the model's weights: for a conv weight [out, in, kh, kw] or a linear weight
  [out, in] the filters are the slices along dim 0 (one per output channel / unit), and
  ‖d_i‖ := ‖w_i‖. One-dimensional parameters (biases, BatchNorm scale and shift) get a zero
  direction by default, as in Li et al., because moving them is not what the picture is about
  and their scale is not comparable with the weights'. With `include_bias_bn=True` each such
  vector is treated as a single filter: d := d·‖w‖/‖d‖ (a random vector of the parameter's norm).
  BatchNorm running statistics are buffers, not parameters: directions never move them.
- The directions file (`save_directions` / `load_directions`) is safetensors holding the *raw*
  directions (tensors named `<k>/<parameter name>`), metadata `schema: advcli.directions/1`.
  Storing them before normalisation makes one file serve every checkpoint of the architecture:
  each checkpoint normalises them against its own weights, exactly as with a seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from advcli.errors import CheckpointError
from advcli.formats.tensorfile import load_tensors, save_tensors
from advcli.rng import Stream, stream_generator

SCHEMA = "advcli.directions/1"
# Guards a zero-norm direction filter (a filter of all-zero draws cannot happen in practice,
# but an all-zero weight filter is common: it then gets a zero direction).
_TINY = 1e-10

Direction = dict[str, torch.Tensor]


def gaussian_directions(model: nn.Module, count: int, seed: int) -> list[Direction]:
    """`count` raw N(0, 1) directions for `model`'s parameters (CPU float32, seeded)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    gen = stream_generator(int(seed), 0, 0, Stream.landscape_directions)
    out: list[Direction] = []
    for _ in range(count):
        # Every parameter draws, zeroed ones included, so include_bias_bn never shifts the
        # random stream of the weights.
        out.append(
            {
                name: torch.randn(tuple(p.shape), generator=gen, dtype=torch.float32)
                for name, p in model.named_parameters()
            }
        )
    return out


def check_compatible(raw: Direction, model: nn.Module, source: str) -> None:
    """Raise CheckpointError unless `raw` has exactly the model's parameter names and shapes."""
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(raw))
    extra = sorted(set(raw) - set(params))
    if missing or extra:
        raise CheckpointError(
            f"directions from {source} do not fit this model (missing {missing[:3]}, "
            f"unexpected {extra[:3]}); they were made for another architecture: "
            "drop --directions or pass a file made for this one"
        )
    for name, p in params.items():
        if tuple(raw[name].shape) != tuple(p.shape):
            raise CheckpointError(
                f"directions from {source} give {name} the shape {list(raw[name].shape)} but the "
                f"model has {list(p.shape)}; they were made for another architecture"
            )


def _filter_norms(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


def filter_normalize(
    raw: Direction, model: nn.Module, *, include_bias_bn: bool = False
) -> Direction:
    """The filter-normalised direction for `model` (on its device, dtype and memory format)."""
    check_compatible(raw, model, "the given directions")
    out: Direction = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            w = p.detach()
            d = raw[name].to(device=w.device, dtype=w.dtype)
            if w.dim() >= 2:
                scale = _filter_norms(w) / (_filter_norms(d) + _TINY)
                d = d * scale.view(-1, *([1] * (w.dim() - 1)))
            elif include_bias_bn:
                d = d * (w.norm() / (d.norm() + _TINY))
            else:
                d = torch.zeros_like(d)
            # Same strides as the parameter (channels_last on CPU): in-place adds stay fast.
            out[name] = torch.empty_like(w).copy_(d)
    return out


def save_directions(path: str | Path, raw: list[Direction], meta: dict[str, Any]) -> Path:
    """Write raw directions (before normalisation) to safetensors, atomically."""
    tensors = {f"{k}/{name}": t for k, d in enumerate(raw) for name, t in d.items()}
    full = {"schema": SCHEMA, "count": len(raw), "normalized": False, **meta}
    return save_tensors(path, tensors, full)


def load_directions(path: str | Path) -> tuple[list[Direction], dict[str, Any]]:
    """Read a directions file written by `save_directions`: (raw directions, metadata)."""
    tensors, meta = load_tensors(path)
    if meta.get("schema") != SCHEMA:
        raise CheckpointError(
            f"{str(path)!r} is not an advcli directions file (schema {meta.get('schema')!r}); "
            "write one with `advcli landscape --directions FILE` (a missing FILE is created)"
        )
    count = int(meta.get("count", 0))
    raw: list[Direction] = [{} for _ in range(count)]
    for key, t in tensors.items():
        k_text, _, name = key.partition("/")
        if not k_text.isdigit() or int(k_text) >= count or not name:
            raise CheckpointError(
                f"{str(path)!r} holds an unexpected tensor {key!r}; it is corrupt"
            )
        raw[int(k_text)][name] = t.to(torch.float32)
    if count < 1 or any(not d for d in raw):
        raise CheckpointError(f"{str(path)!r} holds no complete direction; re-create it")
    return raw, meta
