"""Pictures of training histories: loss (left) and accuracy (right) per epoch, one or more runs.

Drawn by `train` / `adv-train` after every epoch as `NAME.history.png`, and by
`advcli plot history` to overlay runs. The accuracy panel shows train, train adversarial, test,
validation and validation robust accuracy, each only when the run measured it (validation
robust accuracy is measured every K epochs, so it is drawn at those epochs only). With
adversarial training the clean part of each batch is plotted as "train" and the adversarial
part as "train adversarial" (with fraction 1 there is no clean part and "train" is absent).

One run: one colour per metric. Several runs: one colour per run, one line style per metric.
Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch, nothing
to close: the figure is freed with its last reference), so redrawing every epoch costs a
fraction of a second; the PNG is written atomically. Fixed size: `SIZE_IN` at `DPI`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advcli.io import atomic_write_bytes
from advcli.train.history import finite

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
SIZE_IN = (11.0, 4.2)  # width, height in inches: two panels side by side

# (legend name, history keys in order of preference): the first key any record has is drawn.
# Adversarial training records its clean part as clean_*; train_* is then the clean part too,
# or the adversarial part when there is no clean part, so it must not be drawn a second time.
LOSS_SERIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("train", ("clean_loss", "train_loss")),
    ("train adversarial", ("adv_loss",)),
)
ACCURACY_SERIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("train", ("clean_accuracy", "train_accuracy")),
    ("train adversarial", ("adv_accuracy",)),
    ("test", ("test_accuracy",)),
    ("val", ("val_accuracy",)),
    ("val robust", ("val_robust_accuracy",)),
)
METRIC_COLOURS = {"train": "C0", "train adversarial": "C3", "test": "C2", "val": "C1", "val robust": "C4"}
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)))


def size_px(dpi: int = DPI) -> tuple[int, int]:
    """(width, height) of the picture in pixels."""
    return round(SIZE_IN[0] * dpi), round(SIZE_IN[1] * dpi)


def series(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[list[int], list[float]]:
    """(epochs, values) of the first of `keys` any record has; epochs without a finite value are
    left out (a metric measured every K epochs, NaN when a batch had no clean part)."""
    key = next((k for k in keys if any(k in r for r in records)), None)
    if key is None:
        return [], []
    points = [(int(r["epoch"]), float(r[key])) for r in records if finite(r.get(key))]
    return [e for e, _ in points], [v for _, v in points]


def history_figure(
    runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    *,
    title: str | None = None,
    dpi: int = DPI,
) -> Figure:
    """The figure of the (label, epoch records) runs: loss axes, then accuracy axes (in %)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not runs or not any(records for _, records in runs):
        raise ValueError("no epoch records to draw")
    fig = Figure(figsize=SIZE_IN, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    several = len(runs) > 1
    for i, (label, records) in enumerate(runs):
        for ax, table, scale in ((ax_loss, LOSS_SERIES, 1.0), (ax_acc, ACCURACY_SERIES, 100.0)):
            for j, (name, keys) in enumerate(table):
                epochs, values = series(records, keys)
                if not epochs:
                    continue
                ax.plot(
                    epochs, [scale * v for v in values],
                    color=f"C{i % 10}" if several else METRIC_COLOURS[name],
                    linestyle=LINESTYLES[j % len(LINESTYLES)] if several else "-",
                    marker="o", markersize=3,  # a one-epoch run is a point, not an invisible line
                    label=f"{label}: {name}" if several else name,
                )
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy", ylim=(0, 101))
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    labels = [label for label, _ in runs]
    fig.suptitle(title or f"Training history: {', '.join(labels)}", fontsize=10)
    return fig


def plot_history(
    runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    path: str | Path,
    *,
    title: str | None = None,
    dpi: int = DPI,
) -> Path:
    """Draw the runs (see `history_figure`) to a PNG at `path`, atomically."""
    fig = history_figure(runs, title=title, dpi=dpi)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())
