"""The run logger of `train` / `adv-train` and the file format it owns, `NAME.metrics.jsonl`.

One small interface, `RunLogger.step(...)` per optimizer step and `RunLogger.epoch(record)` per
epoch, fans out to sinks: the JSONL log (always), TensorBoard (`--tensorboard DIR`, the optional
extra `pip install 'advcli[tensorboard]'`), and the history picture `NAME.history.png` redrawn
after every epoch (train/plot.py). `RunWatch` is that logger as the training loop's step
and end hooks (train/loop.py), so the loop itself knows nothing of files.

`NAME.metrics.jsonl` is one JSON object a line, appended by every run, readable by any tool
(`pandas.read_json(path, lines=True)`, `jq`). Every line has `kind`:
- `run`: a run (re)started: `schema` (advcli.metrics/1), `time`, `checkpoint`,
  `resumed_from_epoch` (0 for a fresh run), `first_step` (its first optimizer step; inside
  epoch `resumed_from_epoch` + 1 after a mid-epoch save, `--save-every`).
- `step`: `epoch` (1-based), `step` (global optimizer step, 1-based), `time`, `loss` (the batch's
  training loss), `lr`, and with adversarial training `attack_success_rate` (the fraction of the
  batch's adversarial examples the model misclassified, before the update).
- `epoch`: `epoch`, `step` (steps done at the end of the epoch), `time`, and the epoch's history
  record (train/history.py: `train_loss`, `test_accuracy`, ...), plus `attack_success_rate`
  = 1 − `adv_accuracy` when the run trains on adversarial examples.
`time` is Unix time in seconds; non-finite numbers are written as null (strict JSON).

Resumed runs: `--resume` restarts after the last save (an epoch's end, or with `--save-every` a
step inside an epoch), so the steps and epochs after it may already be in the file from the
interrupted run and are logged again. A `run` line with `resumed_from_epoch` k and `first_step`
s supersedes every earlier `step` line with `step` >= s and every earlier `epoch` line with
`epoch` > k (files without `first_step`: every `step` line with `epoch` > k); a fresh run (k = 0,
s = 1) supersedes everything before it. Equivalently, for a tool that does not read `run`
lines: keep the last line for each (`kind`, `step`). `read_metrics` applies this rule.

Per-step values are kept as device tensors and converted in one batch every `FLUSH_EVERY`
steps and at each epoch end, so logging adds no per-step device synchronisation.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from advcli.errors import AdvcliError, ResultsError, UsageError
from advcli.train.history import beside, history_png_path_for

SCHEMA = "advcli.metrics/1"
FLUSH_EVERY = 50  # steps between two conversions of buffered per-step values (one device sync)
TENSORBOARD_HINT = "pip install 'advcli[tensorboard]'"
# Keys of an epoch line that are bookkeeping, not metrics (never sent to TensorBoard).
NOT_METRICS = ("kind", "epoch", "step", "time")


def metrics_path_for(out: str | Path) -> Path:
    return beside(out, ".metrics.jsonl")


class Sink(Protocol):
    """Where a run's metrics go. `steps` receives plain-float step rows in step order."""

    def steps(self, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def epoch(self, row: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ends_cut(path: Path) -> bool:
    """True when the file exists, is not empty and does not end with a newline."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


class JsonlSink:
    """Appends lines to NAME.metrics.jsonl; each batch of lines is one write, then flushed."""

    def __init__(self, path: str | Path, *, checkpoint: str, resumed_from_epoch: int, first_step: int = 1) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            cut = _ends_cut(self.path)
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise AdvcliError(
                f"cannot write {str(self.path)!r}: {exc.strerror}; check the folder exists and is writable"
            ) from exc
        # A killed run may have left a cut last line: start ours on a line of its own.
        self._write([{
            "kind": "run", "schema": SCHEMA, "time": round(time.time(), 3),
            "checkpoint": checkpoint, "resumed_from_epoch": resumed_from_epoch, "first_step": first_step,
        }], prefix="\n" if cut else "")

    def _write(self, rows: Sequence[Mapping[str, Any]], prefix: str = "") -> None:
        text = prefix + "".join(
            json.dumps({k: _json_value(v) for k, v in row.items()}, allow_nan=False) + "\n" for row in rows
        )
        self._fh.write(text)
        self._fh.flush()

    def steps(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._write([{"kind": "step", **row} for row in rows])

    def epoch(self, row: Mapping[str, Any]) -> None:
        self._write([{"kind": "epoch", **row}])

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()


def require_tensorboard() -> Any:
    """torch's SummaryWriter, or one UsageError line saying how to install the extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise UsageError(f"--tensorboard needs the optional tensorboard package: {TENSORBOARD_HINT}") from exc
    return SummaryWriter


class TensorBoardSink:
    """Scalars `step/<name>` per step and `epoch/<name>` per epoch, all against the global step.

    A resumed run purges the events at and after its first step, so TensorBoard shows each step
    once (the same rule as the JSONL reader)."""

    def __init__(self, log_dir: str | Path, *, purge_step: int) -> None:
        summary_writer = require_tensorboard()
        self.writer = summary_writer(log_dir=str(log_dir), purge_step=purge_step)

    def _scalars(self, prefix: str, row: Mapping[str, Any]) -> None:
        for key, value in row.items():
            if key in NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, int(row["step"]), walltime=row["time"])

    def steps(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            self._scalars("step", row)

    def epoch(self, row: Mapping[str, Any]) -> None:
        self._scalars("epoch", row)
        self.writer.flush()  # the epoch's points are visible in TensorBoard now, not at exit

    def close(self) -> None:
        self.writer.close()


class HistoryPngSink:
    """Redraws NAME.history.png from all epochs so far (the resumed ones included)."""

    def __init__(self, path: str | Path, *, label: str, history: Sequence[Mapping[str, Any]] = ()) -> None:
        self.path = Path(path)
        self.label = label
        self.records: list[dict[str, Any]] = [dict(r) for r in history]

    def steps(self, rows: Sequence[Mapping[str, Any]]) -> None:
        pass

    def epoch(self, row: Mapping[str, Any]) -> None:
        from advcli.train.plot import plot_history

        self.records.append({k: v for k, v in row.items() if k not in ("kind", "step", "time")})
        plot_history([(self.label, self.records)], self.path)

    def close(self) -> None:
        pass


class RunLogger:
    """Per-step and per-epoch metrics of one run, fanned out to `sinks`.

    Use as a context manager (or call `close`): buffered steps are written even when training
    stops with an exception. With no sinks every call is a no-op (ranks other than 0)."""

    def __init__(self, sinks: Sequence[Sink] = (), *, flush_every: int = FLUSH_EVERY) -> None:
        self.sinks = list(sinks)
        self.flush_every = flush_every
        self._buffer: list[dict[str, Any]] = []

    def step(self, *, epoch: int, step: int, **metrics: Any) -> None:
        """Log optimizer step `step` (1-based, global) of epoch `epoch` (1-based). Values may be
        0-dim tensors on the training device (converted later, in one batch) or numbers."""
        if not self.sinks:
            return
        self._buffer.append({"epoch": epoch, "step": step, "time": round(time.time(), 3), **metrics})
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def epoch(self, record: Mapping[str, Any], *, step: int) -> None:
        """Log the end of an epoch: its history record (with `epoch`) after `step` steps."""
        if not self.sinks:
            return
        self.flush()
        row: dict[str, Any] = {"epoch": int(record["epoch"]), "step": step, "time": round(time.time(), 3)}
        row.update({k: v for k, v in record.items() if k != "epoch"})
        adv = row.get("adv_accuracy")
        if isinstance(adv, (int, float)) and "attack_success_rate" not in row:
            row["attack_success_rate"] = 1.0 - adv
        for sink in self.sinks:
            sink.epoch(row)

    def flush(self) -> None:
        if not self._buffer:
            return
        rows = _to_numbers(self._buffer)
        self._buffer = []
        for sink in self.sinks:
            sink.steps(rows)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for sink in self.sinks:
                sink.close()
            self.sinks = []

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_numbers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with every tensor value replaced by a float, converted with ONE device sync."""
    where = [(i, k) for i, row in enumerate(rows) for k, v in row.items() if hasattr(v, "detach")]
    out = [dict(row) for row in rows]
    if where:
        import torch

        first = rows[where[0][0]][where[0][1]]
        stacked = torch.stack([rows[i][k].detach().reshape(()).float().to(first.device) for i, k in where])
        for (i, k), value in zip(where, stacked.tolist(), strict=True):
            out[i][k] = value
    return out


def open_run_logger(
    out: str | Path,
    *,
    label: str,
    resumed_from_epoch: int = 0,
    first_step: int = 1,
    history: Sequence[Mapping[str, Any]] = (),
    tensorboard: str | Path | None = None,
    png: bool = True,
) -> RunLogger:
    """The logger of a run writing checkpoint `out`: NAME.metrics.jsonl, NAME.history.png
    (unless `png` is False) and TensorBoard events under `tensorboard` when given. A resumed
    run starts after epoch `resumed_from_epoch`, at global step `first_step` (1-based);
    `history` holds the records of the epochs it already did (drawn in the PNG)."""
    sinks: list[Sink] = []
    try:
        if tensorboard is not None:
            sinks.append(TensorBoardSink(tensorboard, purge_step=first_step))
        sinks.append(JsonlSink(metrics_path_for(out), checkpoint=str(out), resumed_from_epoch=resumed_from_epoch,
                               first_step=first_step))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    if png:
        sinks.append(HistoryPngSink(history_png_path_for(out), label=label, history=history))
    return RunLogger(sinks)


class StepEvent(Protocol):
    """What a step hook of the training loop receives (train.loop.StepStats)."""

    epoch: int
    step: int
    lr: float
    loss: Any  # 0-dim tensor on the training device
    n_adv: int
    adv_correct: Any  # 0-dim tensor: adversarial examples the model got right


class EpochEvent(Protocol):
    """What an end hook of the training loop receives (train.state.EpochStats)."""

    epoch: int

    def as_dict(self) -> dict[str, Any]: ...


class RunWatch:
    """The run logger as the training loop's step and end hooks (`fit(step_hooks=[w.on_step],
    end_hooks=[w.on_epoch])`); use as a context manager (or call `close`) around training, so
    the buffered steps are written also when it fails.

    The loop does not say whether it resumed: the first step tells. Its epoch e means the run
    resumed after epoch e - 1, and its step is where TensorBoard purges the interrupted run. The
    PNG starts from the epochs before that, read back from NAME.metrics.jsonl."""

    def __init__(
        self, out: str | Path, *, label: str, tensorboard: str | Path | None = None, png: bool = True,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled  # False on torchrun ranks other than 0: one writer per run
        self.out = out
        self.label = label
        self.tensorboard = tensorboard
        self.png = png
        self.logger: RunLogger | None = None
        self.last_step = 0

    def _open(self, first: StepEvent) -> RunLogger:
        resumed = first.epoch - 1
        log = metrics_path_for(self.out)
        earlier = [r for r in read_metrics(log).epochs if r["epoch"] <= resumed] if resumed and log.is_file() else []
        return open_run_logger(
            self.out, label=self.label, resumed_from_epoch=resumed, first_step=first.step,
            history=earlier, tensorboard=self.tensorboard, png=self.png,
        )

    def on_step(self, s: StepEvent) -> None:
        if not self.enabled:
            return
        if self.logger is None:
            self.logger = self._open(s)
        extra = {"attack_success_rate": 1 - s.adv_correct.float() / s.n_adv} if s.n_adv else {}
        self.logger.step(epoch=s.epoch, step=s.step, loss=s.loss, lr=s.lr, **extra)
        self.last_step = s.step

    def on_epoch(self, stats: EpochEvent) -> None:
        if self.logger is not None:
            self.logger.epoch(stats.as_dict(), step=self.last_step)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()

    def __enter__(self) -> RunWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class MetricsLog:
    """A read NAME.metrics.jsonl after the resume rule: the surviving step and epoch lines."""

    path: Path
    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    runs: int = 0
    skipped: int = 0  # lines that are not JSON objects: a cut last line of a killed run


def read_metrics(path: str | Path) -> MetricsLog:
    """Read a metrics log, applying the resume rule (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise ResultsError(f"metrics log {str(p)!r} does not exist; `advcli train` writes it beside the checkpoint")
    log = MetricsLog(path=p)
    with open(p, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or "kind" not in row:
                log.skipped += int(bool(line.strip()))
                continue
            kind = row["kind"]
            if kind == "run":
                k = int(row.get("resumed_from_epoch") or 0)
                first = row.get("first_step")
                if isinstance(first, int) and not isinstance(first, bool):
                    # A mid-epoch resume keeps the steps of its epoch before the save.
                    log.steps = [r for r in log.steps if r["step"] < first]
                else:
                    log.steps = [r for r in log.steps if r["epoch"] <= k]
                log.epochs = [r for r in log.epochs if r["epoch"] <= k]
                log.runs += 1
            elif kind in ("step", "epoch") and isinstance(row.get("epoch"), int):
                (log.steps if kind == "step" else log.epochs).append(
                    {k: (math.nan if v is None else v) for k, v in row.items() if k != "kind"}
                )
    return log
