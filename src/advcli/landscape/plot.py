"""Pictures of `advcli landscape` results: a 1-D curve, or a 2-D contour and 3-D surface.

Input is the `advcli.landscape/1` document (the mapping written to YAML), so a saved file can be
re-drawn. Several checkpoints share axes: one curve each on the same 1-D axes; for 2-D one column
per checkpoint (contour on top, surface below) with the same contour levels, colour scale and
z-limits. Losses far from the minimum explode, so the colour/z scale is capped at
`max(10, 5 × the largest centre loss)` (values above are drawn at the cap; Li et al. plot a fixed
[0.1, 10] range). Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend
switch); the PNG is written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from advcli.io import atomic_write_bytes

DPI = 100
PANEL_IN = (4.6, 4.0)  # width, height of one panel in inches
LEVELS = 25


def _cap(doc: dict[str, Any]) -> tuple[float, float]:
    losses = [np.asarray(c["loss"], dtype=float) for c in doc["checkpoints"]]
    finite = np.concatenate([v[np.isfinite(v)].ravel() for v in losses] or [np.zeros(1)])
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    centre = max(float(c["center"]["loss"]) for c in doc["checkpoints"])
    cap = min(hi, max(10.0, 5.0 * centre))
    return lo, max(cap, lo + 1e-6)


def _title(entry: dict[str, Any]) -> str:
    tw = entry.get("trained_with")
    return f"{entry['label']} ({tw})" if tw else str(entry["label"])


def _data_text(doc: dict[str, Any]) -> str:
    data = doc.get("data") or {}
    kind = data.get("kind", "clean")
    attack = data.get("attack") or {}
    name = attack.get("name")
    if kind == "clean" or not name:
        what = "clean"
    else:
        eps = attack.get("eps_text") or attack.get("eps")
        what = f"{name} {attack.get('norm') or ''} {eps or ''}".strip()
        what += " (fixed examples)" if kind == "fixed" else " (recomputed per point)"
    return f"{what}, n={data.get('n')}, BN {doc.get('bn', 'eval')}"


def plot_landscape(doc: dict[str, Any], path: str | Path, *, dpi: int = DPI) -> Path:
    """Draw the landscape document to a PNG at `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    entries = doc["checkpoints"]
    if not entries:
        raise ValueError("the landscape document holds no checkpoints")
    lo, cap = _cap(doc)
    xs = np.asarray(doc["grid"]["x"], dtype=float)
    if int(doc["dim"]) == 1:
        fig = Figure(figsize=(PANEL_IN[0] * 2, PANEL_IN[1]), dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        ax_loss, ax_acc = fig.subplots(1, 2)
        for e in entries:
            loss = np.minimum(np.asarray(e["loss"], dtype=float), cap)
            ax_loss.plot(xs, loss, label=_title(e))
            ax_acc.plot(xs, 100 * np.asarray(e["accuracy"], dtype=float), label=_title(e))
        ax_loss.set(xlabel="α (filter-normalised direction)", ylabel="loss", ylim=(0, cap * 1.02))
        ax_acc.set(xlabel="α (filter-normalised direction)", ylabel="accuracy (%)", ylim=(0, 101))
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    else:
        ys = np.asarray(doc["grid"]["y"], dtype=float)
        gx, gy = np.meshgrid(xs, ys)
        k = len(entries)
        size = (PANEL_IN[0] * k + 1.0, PANEL_IN[1] * 2)  # +1 inch for the colour bar
        fig = Figure(figsize=size, dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        levels = np.linspace(lo, cap, LEVELS)
        mappable = None
        for i, e in enumerate(entries):
            z = np.minimum(np.asarray(e["loss"], dtype=float), cap)
            z = np.where(np.isfinite(z), z, cap)
            ax = fig.add_subplot(2, k, i + 1)
            mappable = ax.contourf(gx, gy, z, levels=levels, cmap="viridis", extend="max")
            ax.contour(gx, gy, z, levels=levels[::3], colors="white", linewidths=0.4)
            ax.plot([0], [0], marker="*", color="red", markersize=9)
            ax.set(title=_title(e), xlabel="α", ylabel="β", aspect="equal")
            ax3 = fig.add_subplot(2, k, k + i + 1, projection="3d")
            ax3.plot_surface(gx, gy, z, cmap="viridis", vmin=lo, vmax=cap, linewidth=0)
            ax3.set(xlabel="α", ylabel="β", zlabel="loss", zlim=(lo, cap))
        if mappable is not None:
            fig.colorbar(mappable, ax=fig.axes[0::2], shrink=0.8, label="loss", format="%.3g")
    fig.suptitle(f"Filter-normalised loss landscape: {_data_text(doc)}", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())
