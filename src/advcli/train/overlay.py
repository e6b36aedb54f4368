"""`advcli plot history`: overlay the training histories of several runs on one picture.

A run is read from its `NAME.history.yaml` (train/history.py; written when training ends) or from its
`NAME.metrics.jsonl` (train/metrics_log.py; appended after every epoch, so a run still training can be
drawn). The result says what was drawn: per run its epochs and last / best metrics.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from advcli.errors import ResultsError, UsageError
from advcli.train.history import History, finite, label_of, read_history

DEFAULT_OUT = Path("history.png")


@dataclass
class RunSummary:
    """One drawn run: last-epoch values (NaN when never measured) and the best test accuracy."""

    label: str
    path: str
    epochs: int
    train_loss: float
    train_accuracy: float
    adv_accuracy: float
    test_accuracy: float
    best_test_accuracy: float
    best_test_epoch: int
    val_robust_accuracy: float


@dataclass
class HistoryPlotResult:
    out: Path
    runs: list[RunSummary]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            # NaN is not JSON: a metric the run never measured is null.
            "runs": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
                     for r in self.runs],
        }


def load_run(path: str | Path) -> History:
    """A run's history from a history YAML or a metrics JSONL file (by the file name)."""
    p = Path(path)
    if p.name.endswith(".jsonl"):
        from advcli.train.metrics_log import read_metrics

        log = read_metrics(p)
        return History(path=p, label=label_of(p), checkpoint=None, records=log.epochs)
    return read_history(p)


def _last(records: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in records if finite(r.get(key))]
    return float(values[-1]) if values else math.nan


def summarise(run: History) -> RunSummary:
    recs = run.records
    tests = [(float(r["test_accuracy"]), int(r["epoch"])) for r in recs if finite(r.get("test_accuracy"))]
    best, best_epoch = max(tests, key=lambda t: t[0]) if tests else (math.nan, 0)
    return RunSummary(
        label=run.label,
        path=str(run.path),
        epochs=max((int(r["epoch"]) for r in recs), default=0),
        train_loss=_last(recs, "train_loss"),
        train_accuracy=_last(recs, "train_accuracy"),
        adv_accuracy=_last(recs, "adv_accuracy"),
        test_accuracy=_last(recs, "test_accuracy"),
        best_test_accuracy=best,
        best_test_epoch=best_epoch,
        val_robust_accuracy=_last(recs, "val_robust_accuracy"),
    )


def default_out(paths: list[Path]) -> Path:
    """One run: `NAME.history.png` beside its file; several: history.png here."""
    if len(paths) == 1:
        return paths[0].with_name(label_of(paths[0]) + ".history.png")
    return DEFAULT_OUT


def plot_histories(paths: list[Path], out: Path | None = None, *, title: str | None = None) -> HistoryPlotResult:
    """Read every run, draw them on one picture at `out` (default: `default_out`)."""
    from advcli.train.plot import plot_history

    if not paths:
        raise UsageError("give at least one NAME.history.yaml or NAME.metrics.jsonl file")
    runs = [load_run(p) for p in paths]
    labels = [r.label for r in runs]
    for r in runs:
        if labels.count(r.label) > 1:  # same file name in two folders: the path tells them apart
            r.label = str(r.path)
        if not r.records:
            raise ResultsError(f"{str(r.path)!r} holds no finished epoch yet; draw it after the first epoch ends")
    target = out or default_out(paths)
    plot_history([(r.label, r.records) for r in runs], target, title=title)
    return HistoryPlotResult(out=target, runs=[summarise(r) for r in runs])
