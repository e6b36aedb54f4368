"""Projected gradient descent (Madry et al. 2018, "Towards deep learning models resistant to
adversarial attacks"), for the Linf and the L2 ball.

- Input range [0, 1]; norm `linf` (steps along sign(grad)) or `l2` (steps along grad/‖grad‖₂).
- Start: a random point of the eps-ball (see `base.random_start`), clamped to [0, 1].
- `steps` iterations (default 10) of size `step_size` (default 2.5·eps/steps), each followed by
  the projection onto the eps-ball and onto [0, 1].
- `restarts` (default 1) independent random starts.
- `keep` (`base.Keep`) chooses the result. `last` (the default; what training uses): the last
  iterate of each restart, and per example the worst restart for the model (a success beats a
  failure, then the higher loss). `first-success` (what evaluation uses): the first iterate
  that fools the model, random start included, in any restart, else the highest-loss iterate;
  an example fooled at an earlier step can no longer end up counted as robust.
- Loss: cross-entropy of the true label (raised), or of the target label (lowered) when
  targeted. The loss is summed over the batch, so an example's attack does not depend on
  which batch it is in.

The hot loop computes only the input gradient (`torch.autograd.grad` w.r.t. the input; the
parameters do not require grad during the attack). `last` never synchronises with the host;
`first-success` checks each iterate on the logits of its gradient pass, so it adds one forward
pass per restart (the last iterate), not one per step, and a fooled example leaves the batch
(one host sync per step), so a step costs in proportion to the examples still standing.
"""

from __future__ import annotations

from typing import Any

from advcli.attacks.base import Keep, LpAttack
from advcli.config import Norm


class PGD(LpAttack):
    name = "pgd"

    def __init__(
        self,
        norm: Norm | str,
        eps: float,
        steps: int = 10,
        step_size: float | None = None,
        restarts: int = 1,
        targeted: bool = False,
        random_init: bool = True,
        keep: Keep | str | None = None,
    ) -> None:
        # random_init=False only for reference comparisons and tests; advcli always starts randomly.
        super().__init__(norm, eps, steps=steps,
                         step_size=2.5 * float(eps) / int(steps) if step_size is None else step_size,
                         restarts=restarts, targeted=targeted, random_init=random_init, keep=keep)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "random_start": self.random_init}
