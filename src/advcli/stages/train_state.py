"""The training state: what `--resume` needs to continue a run bit-identically, kept in
`NAME.state.safetensors` (schema `advcli.train-state/1`) beside the checkpoint, and the typed
per-epoch record it carries (`EpochStats`).

Written after every epoch (rank 0 only), read by `--resume`:
- tensors: the weights (`model.*`), the optimizer's buffers (`opt.<param index>.<name>`, e.g.
  the momentum), under `--keep best` the weights of the best epoch so far (`best.*`), torch's
  global RNG state (`rng.torch`) and NumPy's key (`rng.numpy_keys`);
- metadata: `epoch` (epochs completed), `history` (one `EpochStats.as_dict()` per epoch),
  `best_epoch` / `best_score`, NumPy's position and Python's `random` state.
The epoch's own streams (data order, augmentation, attack starts) are functions of (seed, epoch,
rank) (`advcli.rng`), and the learning rate a function of the step, so neither needs saving.
"""

from __future__ import annotations

import ast
import math
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from advcli.errors import CheckpointError, UsageError
from advcli.history import beside
from advcli.tensorfile import load_tensors, save_tensors

SCHEMA = "advcli.train-state/1"


@dataclass
class EpochStats:
    """One epoch of the history (accuracies are fractions; `epoch` is 1-based).

    `train_loss`/`train_accuracy` are over the clean part of the batches (the adversarial part
    when every example is attacked); `test_accuracy`, `val_accuracy` and `extra` are filled in
    after the epoch's updates (`extra`: the adversarial-training metrics and the epoch hooks')."""

    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    test_accuracy: float = math.nan
    seconds: float = 0.0
    val_accuracy: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochStats:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in known}, extra={k: v for k, v in d.items() if k not in known})


@dataclass
class TrainState:
    """The run so far: epochs completed, their history and, under `--keep best`, the best epoch."""

    epoch: int = 0
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float = -math.inf
    best_weights: dict[str, torch.Tensor] | None = None

    def record(self, stats: EpochStats, model: nn.Module, keep_best: str | None) -> None:
        """Append an epoch; with `keep_best` (a history metric) remember the best epoch's weights."""
        self.history.append(stats)
        self.epoch = stats.epoch
        score = stats.as_dict().get(keep_best) if keep_best else None
        if score is not None and score > self.best_score:
            self.best_epoch, self.best_score = stats.epoch, score
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


def state_path_for(out: str | Path) -> Path:
    return beside(out, ".state.safetensors")


def save_state(path: str | Path, model: nn.Module, opt: torch.optim.Optimizer, state: TrainState) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in (state.best_weights or {}).items()})
    for i, st in opt.state_dict()["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{i}.{name}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    np_state = np.random.get_state()
    tensors["rng.numpy_keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    save_tensors(path, tensors, {
        "schema": SCHEMA,
        "epoch": state.epoch,
        "history": [h.as_dict() for h in state.history],
        "best_epoch": state.best_epoch,
        "best_score": state.best_score if state.best_epoch is not None else None,
        "numpy_pos": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python_random": repr(random.getstate()),
    })


def load_state(path: str | Path, model: nn.Module, opt: torch.optim.Optimizer) -> TrainState:
    """Restore the weights, optimizer buffers and global RNGs saved by `save_state`."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--resume: no training state {str(path)!r}; run without --resume first")
    tensors, meta = load_tensors(path)
    if meta.get("schema") != SCHEMA:
        raise CheckpointError(f"{str(path)!r} is not an advcli training-state file")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    sd = opt.state_dict()
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            sd["state"].setdefault(int(i), {})[name] = value
    opt.load_state_dict(sd)
    torch.set_rng_state(tensors["rng.torch"])
    pos, has_gauss, cached = meta["numpy_pos"]
    np.random.set_state(("MT19937", tensors["rng.numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if "python_random" in meta:
        random.setstate(ast.literal_eval(meta["python_random"]))
    best = meta.get("best_epoch")
    return TrainState(
        epoch=int(meta["epoch"]),
        history=[EpochStats.from_dict(h) for h in meta.get("history", [])],
        best_epoch=None if best is None else int(best),
        best_score=-math.inf if best is None else float(meta["best_score"]),
        best_weights={k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None,
    )
