"""The example grid of `advcli attack --grid`: clean / adversarial / amplified perturbation.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), and
writes the PNG atomically. The picture has a fixed size, so callers and tests can rely on it:
`COLUMN_IN`·n_columns by `ROW_IN`·3 inches at `DPI` dots per inch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from advcli.io import atomic_write_bytes

COLUMN_IN = 1.6
ROW_IN = 1.8
DPI = 100
ROWS = 3


def grid_size_px(n_columns: int, dpi: int = DPI) -> tuple[int, int]:
    """(width, height) in pixels of a grid with n_columns examples."""
    return round(COLUMN_IN * n_columns * dpi), round(ROW_IN * ROWS * dpi)


def attack_grid(
    clean: torch.Tensor,
    adv: torch.Tensor,
    y: torch.Tensor,
    clean_pred: torch.Tensor,
    adv_pred: torch.Tensor,
    path: str | Path,
    *,
    classes: Sequence[str] | None = None,
    n: int = 8,
    title: str | None = None,
    dpi: int = DPI,
) -> Path:
    """Draw the first n examples: row 1 clean (true and predicted label), row 2 adversarial
    (predicted label, red when wrong), row 3 the perturbation x_adv − x shown as
    0.5 + δ/(2·max|δ|) per image (the amplification factor is printed under it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = max(1, min(int(n), int(clean.shape[0])))
    names = list(classes) if classes else None

    def name(c: int) -> str:
        return names[c] if names is not None and 0 <= c < len(names) else str(c)

    width_in, height_in = COLUMN_IN * k, ROW_IN * ROWS
    fig = Figure(figsize=(width_in, height_in), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(ROWS, k, squeeze=False)
    c = clean[:k].detach().float().cpu()
    a = adv[:k].detach().float().cpu()
    for j in range(k):
        delta = a[j] - c[j]
        peak = float(delta.abs().max())
        amplified = (0.5 + delta / (2 * peak)) if peak > 0 else torch.full_like(delta, 0.5)
        true, before, after = int(y[j]), int(clean_pred[j]), int(adv_pred[j])
        panels = (
            (c[j], f"true {name(true)}\npred {name(before)}", "black"),
            (a[j], f"adv pred\n{name(after)}", "black" if after == true else "red"),
            (amplified, f"δ ×{0.5 / peak:.0f}" if peak > 0 else "δ = 0", "black"),
        )
        for i, (img, text, colour) in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(_hwc(img), interpolation="nearest", vmin=0.0, vmax=1.0, cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(text, fontsize=7, color=colour)
    for i, row in enumerate(("clean", "adversarial", "perturbation")):
        axes[i][0].set_ylabel(row, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=8)
    buf = io.BytesIO()
    # No bbox_inches="tight": the PNG keeps exactly figsize × dpi pixels.
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())


def _hwc(img: torch.Tensor) -> np.ndarray:
    img = img.clamp(0.0, 1.0)
    return (img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy()
