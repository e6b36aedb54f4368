"""The training state: what `--resume` needs to continue a run bit-identically, kept in
`NAME.state.safetensors` (schema `advcli.train-state/2`) beside the checkpoint; the typed
per-epoch record it carries (`EpochStats`); when a run saves it (`SaveEvery`); and what
`--resume` does when there is none (`resume_state_path`).

Written by rank 0, atomically (`advcli.io`: a kill during the write leaves the previous state),
after every epoch and, with `--save-every N|10m`, every N optimizer steps or minutes inside an
epoch:
- tensors: the weights (`model.*`), under `--ema` their average (`ema.*`), the optimizer's
  buffers (`opt.<param index>.<name>`, e.g. the momentum), under `--keep best` the weights of
  the best epoch so far (`best.*`), torch's global RNG state (`rng.torch`, and `rng.cuda` once
  CUDA is in use) and NumPy's key (`rng.numpy_keys`); inside an epoch also the epoch's metric
  sums so far (`epoch.sum.*`) and the training attack's generator (`epoch.attack_rng`), one row
  per torchrun rank; under torchrun every rank's buffers (`rank.*`, one row per rank: BatchNorm
  statistics);
- metadata: `epoch` (epochs completed), `history` (one `EpochStats.as_dict()` per epoch),
  `best_epoch` / `best_score`, NumPy's position, Python's `random` state, the fp16 loss scaler,
  the average's update count (`ema_updates`), `config` (the options the run's numbers depend
  on: a resume with any of them different is refused, naming the first) and, inside an epoch,
  `position` (epoch, batches done, seconds).
The epoch's data order and augmentation streams are functions of (seed, epoch, rank)
(`advcli.rng`) and the learning rate a function of the step, so none of them is saved: a
mid-epoch resume replays the epoch's first batches through the data pipeline, without training,
which leaves every stream (DataLoader workers' NumPy states included) where the kill found it.

`ADVCLI_TEST_STOP_AFTER_STEP=N` (tests only) stops a run as a kill would, with
KeyboardInterrupt, right after optimizer step N of the run and the state save that step may
trigger; it is read in `stop_after_step` and nowhere else.
"""

from __future__ import annotations

import ast
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from advcli import distributed
from advcli.errors import CheckpointError, UsageError
from advcli.formats.tensorfile import load_tensors, read_metadata, save_tensors
from advcli.train.history import beside
from advcli.train.weight_average import WeightAverage

SCHEMA = "advcli.train-state/2"
# /1 (before mid-epoch saves) is read as an end-of-epoch state without a config to compare.
READABLE = (SCHEMA, "advcli.train-state/1")
STOP_AFTER_STEP_ENV = "ADVCLI_TEST_STOP_AFTER_STEP"


@dataclass
class EpochStats:
    """One epoch of the history (accuracies are fractions; `epoch` is 1-based).

    `train_loss`/`train_accuracy` are over the clean part of the batches (the adversarial part
    when every example is attacked); `test_accuracy`, `val_accuracy` and `extra` are filled in
    after the epoch's updates (`extra`: the adversarial-training metrics and the epoch hooks');
    `test_accuracy` stays None in an epoch that --test-every skips."""

    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    test_accuracy: float | None = None
    seconds: float = 0.0
    val_accuracy: float | None = None
    extra: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The record: an unmeasured `val_accuracy` is left out; an `extra` metric that could
        not be measured this epoch (None, e.g. `clean_loss` under --fraction 1) stays, as null."""
        d = asdict(self)
        extra = d.pop("extra")
        return {**{k: v for k, v in d.items() if v is not None}, **extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochStats:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in known}, extra={k: v for k, v in d.items() if k not in known})


@dataclass
class EpochPosition:
    """Where a run stands inside an epoch, as a mid-epoch save records it."""

    epoch: int  # the epoch in progress, 0-based
    batches: int  # its batches already trained on (this rank's; every rank has done as many)
    sums: dict[str, torch.Tensor]  # its metric sums so far, [world size, ...]: row r is rank r's
    attack_rng: torch.Tensor  # the training attack's generator state, [world size, bytes]
    seconds: float = 0.0  # time spent in the epoch so far


@dataclass
class TrainState:
    """The run so far: epochs completed, their history, under `--keep best` the best epoch,
    inside an epoch the position, and the config the run's numbers depend on."""

    epoch: int = 0
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float = -math.inf
    best_weights: dict[str, torch.Tensor] | None = None
    position: EpochPosition | None = None
    config: dict[str, Any] | None = None
    saved_config: dict[str, Any] | None = None  # a resumed state's, as it was saved
    # Under torchrun: every rank's buffers, [world size, ...] (BatchNorm statistics differ per
    # rank between DDP's broadcasts, and each rank's training attack runs on its own).
    rank_buffers: dict[str, torch.Tensor] | None = None

    def record(self, stats: EpochStats, model: nn.Module, keep_best: str | None) -> None:
        """Append an epoch; with `keep_best` (a history metric) remember the best epoch's weights."""
        self.history.append(stats)
        self.epoch = stats.epoch
        self.position = None
        score = stats.as_dict().get(keep_best) if keep_best else None
        if score is not None and score > self.best_score:
            self.best_epoch, self.best_score = stats.epoch, score
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class SaveEvery:
    """`--save-every`: a mid-epoch save every `steps` optimizer steps or `seconds` of wall time
    since the last save of any kind."""

    steps: int | None = None
    seconds: float | None = None
    last: float = field(default_factory=time.monotonic, compare=False)

    @classmethod
    def parse(cls, text: str | None) -> SaveEvery | None:
        """`200` (steps), `90s`, `10m`, `1h` (wall time) or None (after every epoch only)."""
        if text is None or str(text).strip() == "":
            return None
        m = re.fullmatch(r"\s*(\d+)\s*([smh]?)\s*", str(text))
        if not m or int(m.group(1)) == 0:
            raise UsageError(
                f"--save-every {text!r}: give a positive number of optimizer steps (e.g. 200) "
                "or of seconds/minutes/hours (e.g. 90s, 10m, 1h)"
            )
        n, unit = int(m.group(1)), m.group(2)
        if not unit:
            return cls(steps=n)
        return cls(seconds=float(n * {"s": 1, "m": 60, "h": 3600}[unit]))

    def due(self, step: int, device: torch.device) -> bool:
        """Save after optimizer step `step` (1-based, counted over the run)? Every torchrun rank
        gets the same answer (the save gathers from all of them): by step count, or by rank
        0's clock."""
        if self.steps is not None:
            return step % self.steps == 0
        late = torch.tensor(int(time.monotonic() - self.last >= (self.seconds or math.inf)), device=device)
        if distributed.current().enabled:
            if not distributed.current().is_main:
                late.zero_()
            distributed.all_reduce_sum(late)
        return bool(late)

    def saved(self) -> None:
        self.last = time.monotonic()


def state_path_for(out: str | Path) -> Path:
    return beside(out, ".state.safetensors")


def resume_state_path(out: str | Path) -> Path | None:
    """What `--resume` continues from: the state beside `out`, or None (start from scratch)
    when neither it nor the checkpoint `out` exists. A checkpoint without a state is refused:
    that is a finished run of another name or a mistyped --out, not a run to retrain."""
    path = state_path_for(out)
    if path.is_file():
        return path
    if Path(out).exists():
        raise UsageError(
            f"--resume: {str(out)!r} exists but has no training state {path.name!r} beside it; "
            "check --out, or drop --resume to train it again from scratch"
        )
    return None


def stop_after_step(step: int) -> None:
    """Tests only: end the run as a kill would after optimizer step `ADVCLI_TEST_STOP_AFTER_STEP`."""
    if os.environ.get(STOP_AFTER_STEP_ENV) == str(step):
        raise KeyboardInterrupt(f"{STOP_AFTER_STEP_ENV}={step}")


def save_state(
    path: str | Path, model: nn.Module, opt: torch.optim.Optimizer, state: TrainState,
    scaler: torch.amp.GradScaler | None = None, *, ema: WeightAverage | None = None,
) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.model.state_dict().items()})
    tensors.update({f"best.{k}": v for k, v in (state.best_weights or {}).items()})
    tensors.update({f"rank.{k}": v for k, v in (state.rank_buffers or {}).items()})
    for i, st in opt.state_dict()["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{i}.{name}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    tensors["rng.numpy_keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    pos = state.position
    if pos is not None:
        tensors.update({f"epoch.sum.{k}": v for k, v in pos.sums.items()})
        tensors["epoch.attack_rng"] = pos.attack_rng
    save_tensors(path, tensors, {
        "schema": SCHEMA,
        "epoch": state.epoch,
        "history": [h.as_dict() for h in state.history],
        "best_epoch": state.best_epoch,
        "best_score": state.best_score if state.best_epoch is not None else None,
        "numpy_pos": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python_random": repr(random.getstate()),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema_updates": ema.updates if ema is not None else None,
        "config": state.config,
        "position": None if pos is None else {"epoch": pos.epoch, "batches": pos.batches, "seconds": pos.seconds},
    })


def read_state_header(path: str | Path) -> dict[str, Any]:
    """The metadata of a training-state file, from its header: a missing, corrupt or foreign
    file fails here, in a second, before any data is loaded."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--resume: no training state {str(path)!r}; run without --resume first")
    meta = read_metadata(path)
    if meta.get("schema") not in READABLE:
        raise CheckpointError(f"{str(path)!r} is not an advcli training-state file")
    return meta


def load_state(
    path: str | Path, model: nn.Module, opt: torch.optim.Optimizer, *,
    scaler: torch.amp.GradScaler | None = None, ema: WeightAverage | None = None,
    config: dict[str, Any] | None = None,
) -> TrainState:
    """Restore the weights, their average, optimizer buffers, loss scaler and global RNGs saved
    by `save_state`; `config` (this run's) must equal the saved one."""
    path = Path(path)
    read_state_header(path)
    tensors, meta = load_tensors(path)
    _check_config(path, meta.get("config"), config)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        if meta.get("ema_updates") is None:
            raise UsageError(f"--resume: {str(path)!r} was saved by a run without --ema; resume without it")
        ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        ema.updates = int(meta["ema_updates"])
    rank_buffers = {k[5:]: v for k, v in tensors.items() if k.startswith("rank.")} or None
    if rank_buffers is not None:
        rank = distributed.current().rank
        with torch.no_grad():
            for prefix, module in (("", model), ("ema.", ema.model if ema is not None else None)):
                for name, buf in module.named_buffers() if module is not None else ():
                    buf.copy_(rank_buffers[prefix + name][rank])
    sd = opt.state_dict()
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            sd["state"].setdefault(int(i), {})[name] = value
    opt.load_state_dict(sd)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    pos, has_gauss, cached = meta["numpy_pos"]
    np.random.set_state(("MT19937", tensors["rng.numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if "python_random" in meta:
        random.setstate(ast.literal_eval(meta["python_random"]))
    best = meta.get("best_epoch")
    where = meta.get("position")
    position = None
    if where is not None:
        position = EpochPosition(
            epoch=int(where["epoch"]), batches=int(where["batches"]), seconds=float(where["seconds"]),
            sums={k.removeprefix("epoch.sum."): v for k, v in tensors.items() if k.startswith("epoch.sum.")},
            attack_rng=tensors["epoch.attack_rng"],
        )
    return TrainState(
        epoch=int(meta["epoch"]),
        history=[EpochStats.from_dict(h) for h in meta.get("history", [])],
        best_epoch=None if best is None else int(best),
        best_score=-math.inf if best is None else float(meta["best_score"]),
        best_weights={k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None,
        position=position,
        config=config,
        saved_config=meta.get("config"),
        rank_buffers=rank_buffers,
    )


# Options a resume may change: `--epochs` extends (or shortens) a run, whose learning-rate
# schedule then follows the new total (`fit` says so in a note).
MAY_CHANGE = ("epochs",)


def _check_config(path: Path, saved: dict[str, Any] | None, now: dict[str, Any] | None) -> None:
    """Continuing a state under other options would give weights no single run produces."""
    if saved is None or now is None:
        return
    for key in sorted(set(saved) | set(now)):
        if key not in MAY_CHANGE and saved.get(key) != now.get(key):
            flag = "--" + key.replace("_", "-")
            raise UsageError(
                f"--resume: {str(path)!r} was saved by a run with {flag} {saved.get(key)!r}, this run has "
                f"{now.get(key)!r}; resume with the same options, or drop --resume to start over"
            )
