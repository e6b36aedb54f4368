"""Fast gradient sign method (Goodfellow et al. 2015, "Explaining and harnessing adversarial
examples").

- Input range [0, 1]; norm `linf`: x + eps·sign(∇ₓ loss) (the classic FGSM), or `l2`:
  x + eps·∇ₓ loss/‖∇ₓ loss‖₂ (the fast gradient method); then clamped to [0, 1], which keeps
  it inside the eps-ball.
- One step from the clean image, no randomness. Targeted: descends the target's loss.
- `keep` (`base.Keep`): `last` returns the step's result; `first-success` counts the clean
  image as the first iterate (checked on the logits of the gradient pass, at no extra cost), so
  an example the model already gets wrong keeps its clean image.
"""

from __future__ import annotations

from advcli.attacks.base import Keep, LpAttack
from advcli.config import Norm


class FGSM(LpAttack):
    name = "fgsm"

    def __init__(
        self, norm: Norm | str, eps: float, targeted: bool = False, keep: Keep | str | None = None
    ) -> None:
        super().__init__(norm, eps, steps=1, step_size=eps, restarts=1, targeted=targeted,
                         random_init=False, keep=keep)
