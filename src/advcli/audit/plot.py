"""The robustness-curve picture of `advcli audit --plot`: accuracy against eps, with the
constant-image floor and the threat model's eps marked, so a curve that flattens above the
floor (gradient masking) is visible at a glance.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch) and
writes the PNG atomically. Fixed size: `WIDTH_IN` x `HEIGHT_IN` inches at `DPI`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from advcli.io import atomic_write_bytes

WIDTH_IN = 6.4
HEIGHT_IN = 4.0
DPI = 100


def curve_png(
    points: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    floor: float,
    threat_eps: float,
    threat_text: str,
    norm: str,
    title: str | None = None,
    dpi: int = DPI,
) -> Path:
    """Draw the curve's points ({eps, eps_text, accuracy} with accuracy a fraction) on a
    symmetric-log eps axis (linear near 0, so the eps = 0 point shows), labelled with the
    points' own eps texts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    eps = [float(p["eps"]) for p in points]
    acc = [100 * float(p["accuracy"]) for p in points]
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positive = [e for e in eps if e > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    ax.plot(eps, acc, marker="o", color="tab:blue", label="accuracy under warm-started PGD")
    ax.axhline(100 * floor, color="tab:red", linestyle="--",
               label=f"constant-image floor ({100 * floor:.1f}%)")
    ax.axvline(threat_eps, color="grey", linestyle=":", label=f"threat model ({norm} {threat_text})")
    ax.set_xticks(eps)
    ax.set_xticklabels([str(p["eps_text"]) for p in points], rotation=45, ha="right", fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel(f"eps ({norm})")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    if title:
        ax.set_title(title, fontsize=10)
    fig.canvas.draw()  # lays the figure out, so the labels' extents are final
    _hide_colliding_labels(ax.get_xticklabels(), eps, threat_eps)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def _hide_colliding_labels(labels: Sequence[Any], eps: Sequence[float], threat_eps: float) -> None:
    """Hide the tick labels that would overlap a kept one (the points stay). The grid doubles
    eps, then ends at the top radius, which can lie just above the last doubling (L2 0.75 on
    CIFAR-10: 48, then 55.43): on the log axis the two labels collide. Kept first: the top
    radius, eps 0, the threat model's eps, then the others from the top down."""
    order = sorted(range(len(labels)), key=lambda i: (
        i != len(labels) - 1, eps[i] != 0, eps[i] != threat_eps, -i))
    kept: list[Any] = []
    for i in order:
        box = labels[i].get_window_extent()
        if any(box.overlaps(k) for k in kept):
            labels[i].set_visible(False)
        else:
            kept.append(box)
