"""FGSM with a random start (Wong, Rice & Kolter 2020, "Fast is better than free: revisiting
adversarial training").

- Input range [0, 1]; norm `linf` (the paper's setting) or `l2` (same recipe with the L2 ball
  and a normalised-gradient step).
- Start at a random point of the eps-ball (clamped to [0, 1]), take one step of size
  α = `step_size` (default 1.25·eps, the paper's choice), project onto the eps-ball and [0, 1].
- `restarts` > 1 repeats from new random starts and keeps the worst case per example.
- `keep` (`base.Keep`): `last` returns the step's result (the paper's training attack);
  `first-success` counts the random start as an iterate, so an example the start already fools
  is not robust.
"""

from __future__ import annotations

from advcli.attacks.base import Keep, LpAttack
from advcli.config import Norm


class FGSMRandomStart(LpAttack):
    name = "fgsm-rs"

    def __init__(
        self,
        norm: Norm | str,
        eps: float,
        step_size: float | None = None,
        restarts: int = 1,
        targeted: bool = False,
        keep: Keep | str | None = None,
    ) -> None:
        super().__init__(norm, eps, steps=1, step_size=1.25 * float(eps) if step_size is None else step_size,
                         restarts=restarts, targeted=targeted, random_init=True, keep=keep)
