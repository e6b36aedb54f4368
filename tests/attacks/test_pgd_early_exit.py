"""PGD's early exit under `keep=first-success`: a fooled example leaves the batch, and every
example's verdict and kept image are those of the loop that attacks every example to the end.

Why the two can agree exactly: each example's iterates depend only on its own row (the summed
loss, per-example projections, eval mode) and every random start is drawn for the whole batch.
Float kernels may round a smaller batch differently in the last bits, so the model here is built
with margins far from any rounding: a step moves the logit gap by up to 2.4, the whole eps-ball
by 4.8 (reached after 4 steps from any start), and the examples start at gaps of k + 0.5."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advcli.attacks.pgd import PGD
from advcli.config import Norm

D = 3 * 4 * 4
EPS = 0.05
STEP = EPS / 2


class Slope(nn.Module):
    """Two classes, logits (0, (x − 0.5)·w): a Linf move of t along sign(w) shrinks class 0's
    lead by Σ|w|·t (2.4 per step of STEP)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([(-1.0) ** i for i in range(D)]) * (2.4 / (D * STEP)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.flatten(1) - 0.5) @ self.w
        return torch.stack([torch.zeros_like(z), z], dim=1)


def examples(gaps: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images at the given logit gaps (class 0 ahead by `gap`), labels 0."""
    sign = torch.tensor([(-1.0) ** i for i in range(D)])
    per_unit = float(Slope().w.detach().abs().sum())  # gap change per unit of Linf along sign(w)
    x = torch.stack([0.5 - (g / per_unit) * sign for g in gaps]).view(-1, 3, 4, 4)
    return x, torch.zeros(len(gaps), dtype=torch.long)


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, early_exit: bool, restarts: int,
        rows: list[int] | None = None):
    attack = PGD(Norm.linf, EPS, steps=6, step_size=STEP, restarts=restarts, keep="first-success")
    attack.early_exit = early_exit
    hook = None if rows is None else model.register_forward_pre_hook(lambda _m, a: rows.append(a[0].shape[0]))
    try:
        return attack.run(model, x, y, generator=torch.Generator().manual_seed(3))
    finally:
        if hook is not None:
            hook.remove()


@pytest.mark.parametrize("restarts", [1, 3])
def test_early_exit_gives_the_flags_and_images_of_the_full_loop(restarts: int) -> None:
    model = Slope().eval()
    # Fooled at the start or one of the first steps (gap < 4.8), or never, interleaved.
    gaps = [k + 0.5 for k in range(7)] + [30.5, 0.5, 30.5, 3.5, 30.5]
    x, y = examples(gaps)
    full, early = run(model, x, y, False, restarts), run(model, x, y, True, restarts)
    assert torch.equal(full.fooled, early.fooled)
    assert torch.allclose(full.x_adv, early.x_adv, rtol=0, atol=1e-6)
    expected = torch.tensor([g < 4.8 for g in gaps])
    assert torch.equal(early.fooled, expected)  # the margins decide, not the rounding


def test_fooled_examples_stop_costing_forward_passes() -> None:
    model = Slope().eval()
    x, y = examples([0.5] * 12 + [30.5] * 4)  # 12 fall within the first steps, 4 never
    full_rows: list[int] = []
    early_rows: list[int] = []
    full = run(model, x, y, False, 1, full_rows)
    early = run(model, x, y, True, 1, early_rows)
    assert torch.equal(full.fooled, early.fooled) and int(early.fooled.sum()) == 12
    assert sum(full_rows) == 16 * 7  # 6 gradient passes and the final check, every example
    # Each fooled example is seen on at most 2 passes (the start, one step); the robust on all 7.
    assert sum(early_rows) <= 12 * 2 + 4 * 7 < sum(full_rows)
    everyone = examples([0.5] * 8)
    calls: list[int] = []
    assert bool(run(model, *everyone, True, 1, calls).fooled.all())
    assert len(calls) < 7  # no pass at all once every example has been fooled
