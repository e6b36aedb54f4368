"""The adversarial-set file format (`advcli attack --out`), read and written only here.

A safetensors file with tensors `x_adv` (float32 NCHW in [0, 1], the exact adversarial images),
`y` (int64 true labels), `index` (int64 positions in the source split) and, for targeted
attacks, `target` (int64); its advcli metadata holds `schema: advcli.advset/1`, the attack
record, `n`, and where the images came from (checkpoint path and sha256, label, dataset,
split, seed, classes). `eval --adv-data` (transfer), `adv-train --adv-data` (static sets) and
`landscape --adv-data` (fixed examples) all read it through `load_adv_set`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from advcli.errors import DataError, ResultsError
from advcli.formats.tensorfile import load_tensors, save_tensors
from advcli.io import sha256_file

ADVSET_SCHEMA = "advcli.advset/1"


class AdvSetError(DataError, ResultsError):
    """An adversarial-set file is missing, of another format, malformed, or from other data."""


@dataclass
class AdvSet:
    """A precomputed adversarial set and its metadata, as written by `save_adv_set`."""

    x_adv: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    meta: dict[str, Any]
    path: Path
    targets: torch.Tensor | None = None

    @property
    def attack(self) -> dict[str, Any]:
        attack = self.meta.get("attack")
        return attack if isinstance(attack, dict) else {}

    @property
    def dataset(self) -> str | None:
        value = self.meta.get("dataset") or (self.meta.get("data") or {}).get("dataset")
        return None if value is None else str(value)

    @property
    def split(self) -> str | None:
        value = self.meta.get("split") or (self.meta.get("data") or {}).get("split")
        return None if value is None else str(value)

    def source(self) -> dict[str, Any]:
        """Where the set came from, for the provenance of results computed on it."""
        record = {
            "path": str(self.path),
            "sha256": sha256_file(self.path),
            "label": self.meta.get("label") or self.meta.get("checkpoint_label"),
            "checkpoint_sha256": self.meta.get("checkpoint_sha256") or self.meta.get("sha256"),
            "dataset": self.dataset,
            "split": self.split,
            "attack": self.attack,
        }
        return {k: v for k, v in record.items() if v is not None}


def save_adv_set(
    path: str | Path,
    *,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    index: torch.Tensor,
    attack: dict[str, Any],
    meta: dict[str, Any],
    targets: torch.Tensor | None = None,
) -> Path:
    """Write the set atomically (exact float32 images). `meta` should hold checkpoint,
    checkpoint_sha256, label, dataset, split and seed; the schema, attack record and n are added."""
    tensors = {
        "x_adv": x_adv.detach().float(),
        "y": y.detach().to(torch.int64),
        "index": index.detach().to(torch.int64),
    }
    if targets is not None:
        tensors["target"] = targets.detach().to(torch.int64)
    full = {"schema": ADVSET_SCHEMA, "attack": attack, "n": int(y.shape[0]), **meta}
    return save_tensors(path, tensors, full)


def load_adv_set(path: str | Path, *, dataset: str | None = None) -> AdvSet:
    """Read and check an adversarial set: schema, tensors, shapes, pixel range and (when
    `dataset` is given) that it was made from that dataset. Every failure is one AdvSetError."""
    p = Path(path)
    if not p.is_file():
        raise AdvSetError(f"adversarial set {str(p)!r} does not exist; make it with `advcli attack --out`")
    tensors, meta = load_tensors(p)
    if meta.get("schema") != ADVSET_SCHEMA:
        raise AdvSetError(
            f"{str(p)!r} is not an adversarial set (schema {meta.get('schema')!r}, expected "
            f"{ADVSET_SCHEMA!r}); make one with `advcli attack --out`"
        )
    missing = [k for k in ("x_adv", "y", "index") if k not in tensors]
    if missing:
        raise AdvSetError(
            f"adversarial set {str(p)!r} lacks tensor(s) {', '.join(missing)}; re-create it with `advcli attack`"
        )
    x_adv, y, index = tensors["x_adv"].float(), tensors["y"].long(), tensors["index"].long()
    if x_adv.dim() != 4 or not (len(x_adv) == len(y) == len(index)):
        raise AdvSetError(
            f"adversarial set {str(p)!r} has malformed tensors (x_adv {tuple(x_adv.shape)}, "
            f"y {tuple(y.shape)}, index {tuple(index.shape)}); it is corrupt: re-create it"
        )
    if x_adv.numel() and bool((x_adv.min() < 0) | (x_adv.max() > 1)):
        raise AdvSetError(f"adversarial set {str(p)!r} has pixels outside [0, 1]; it is corrupt: re-create it")
    targets = tensors["target"].long() if "target" in tensors else None
    adv = AdvSet(x_adv=x_adv, y=y, index=index, meta=meta, path=p, targets=targets)
    if dataset and adv.dataset and adv.dataset != str(dataset):
        raise AdvSetError(
            f"adversarial set {str(p)!r} was made from dataset {adv.dataset!r} but the model is "
            f"evaluated on {dataset!r}; pass the matching --dataset"
        )
    return adv
