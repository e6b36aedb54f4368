"""`build_attack(spec)`: check an `AttackSpec` at the boundary and build the attack object;
`build_training_attack(spec)` also builds the training-only N-FGSM, which `build_attack` refuses.

Every misuse is a `UsageError` naming the option, e.g. a step size for FGSM or eps for stAdv.
"""

from __future__ import annotations

from typing import Any

from advcli.attacks.base import Attack, AttackName, AttackSpec, Keep
from advcli.attacks.fgsm import FGSM
from advcli.attacks.fgsm_rs import FGSMRandomStart
from advcli.attacks.nfgsm import NFGSM
from advcli.attacks.pgd import PGD
from advcli.attacks.stadv import StAdv
from advcli.config import Eps, Norm, parse_choice, parse_eps
from advcli.errors import UsageError

DEFAULT_STEPS = {AttackName.pgd: 10, AttackName.stadv: 100}


def _eps(value: Eps | float | str | None, name: str, allow_zero: bool = True) -> Eps | None:
    return None if value is None else parse_eps(value, name=name, allow_zero=allow_zero)


def build_training_attack(spec: AttackSpec) -> Attack:
    """`build_attack`, plus the training-only attacks (n-fgsm) that evaluation refuses."""
    if parse_choice(AttackName, spec.name, name="attack") is not AttackName.n_fgsm:
        return build_attack(spec)
    eps, step_size, noise = _eps(spec.eps, "eps"), _eps(spec.step_size, "step size"), _eps(spec.noise, "noise")
    if eps is None:
        raise UsageError("n-fgsm needs --eps, e.g. 8/255")
    if spec.steps not in (None, 1) or spec.restarts != 1 or spec.keep not in (None, Keep.last, Keep.last.value):
        raise UsageError("n-fgsm takes one step from one noisy start: drop --steps and --restarts")
    return NFGSM(spec.norm, eps.value, None if step_size is None else step_size.value,
                 None if noise is None else noise.value, targeted=spec.targeted)


def build_attack(spec: AttackSpec) -> Attack:
    """The attack object for `spec`, with defaults resolved (see `AttackSpec`): an evaluation
    attack, keeping the whole contract of `advcli.attacks.base` (its bound included)."""
    name = parse_choice(AttackName, spec.name, name="attack")
    if name is AttackName.n_fgsm:
        raise UsageError(
            "n-fgsm is a training-only attack (its perturbations exceed eps by design): train with "
            "`advcli adv-train --attack n-fgsm` and measure robustness with pgd, fgsm-rs or autoattack"
        )
    if spec.noise is not None:
        raise UsageError(f"--noise is n-fgsm's noise box; {name.value} does not take it")
    eps = _eps(spec.eps, "eps")
    step_size = _eps(spec.step_size, "step size")
    bound = _eps(spec.bound, "bound", allow_zero=False)
    if spec.restarts < 1:
        raise UsageError(f"restarts must be >= 1, got {spec.restarts}")
    if spec.steps is not None and spec.steps < 1:
        raise UsageError(f"steps must be >= 1, got {spec.steps}")
    keep = None if spec.keep is None else parse_choice(Keep, spec.keep, name="keep")

    if name is AttackName.stadv:
        if eps is not None:
            raise UsageError("stadv is bounded by --bound (pixels of flow), not --eps; drop --eps")
        if spec.restarts != 1:
            raise UsageError("stadv starts from zero flow; --restarts does not apply")
        if spec.tau < 0:
            raise UsageError(f"tau must be >= 0, got {spec.tau}")
        if keep is Keep.last:
            raise UsageError("stadv keeps the smoothest flow that fooled the model, never just the "
                             "last one; drop keep last (or use first-success)")
        return StAdv(
            tau=spec.tau,
            bound=None if bound is None else bound.value,
            steps=spec.steps or DEFAULT_STEPS[name],
            step_size=None if step_size is None else step_size.value,
            targeted=spec.targeted,
        )

    norm = parse_choice(Norm, spec.norm, name="norm")
    if eps is None:
        raise UsageError(f"{name.value} needs --eps, e.g. 8/255 (linf) or 0.5 (l2)")
    if bound is not None:
        raise UsageError(f"--bound is stadv's flow bound; {name.value} uses --eps")
    if name is AttackName.fgsm:
        if spec.steps not in (None, 1) or step_size is not None or spec.restarts != 1:
            raise UsageError("fgsm is one step of size eps: drop --steps, --step-size and --restarts")
        return FGSM(norm, eps.value, targeted=spec.targeted, keep=keep)
    if name is AttackName.fgsm_rs:
        if spec.steps not in (None, 1):
            raise UsageError("fgsm-rs takes one step: drop --steps (use pgd for more)")
        return FGSMRandomStart(
            norm,
            eps.value,
            None if step_size is None else step_size.value,
            restarts=spec.restarts,
            targeted=spec.targeted,
            keep=keep,
        )
    return PGD(
        norm,
        eps.value,
        steps=spec.steps or DEFAULT_STEPS[name],
        step_size=None if step_size is None else step_size.value,
        restarts=spec.restarts,
        targeted=spec.targeted,
        keep=keep,
    )


def attack_record(spec: AttackSpec, attack: Attack) -> dict[str, Any]:
    """The `attack:` mapping of result files: resolved numbers plus the texts they came from.

    Keys: name, norm, eps, eps_text, steps, step_size, restarts, targeted, keep (which iterate
    was kept, `Keep`), and for stadv tau, bound, bound_text, bound_units, optimizer (norm/eps
    are null for stadv: it has no Lp ball).
    """
    record: dict[str, Any] = {"name": attack.name, "norm": None, "eps": None, "eps_text": None}
    record.update(attack.describe())
    if spec.eps is not None and record.get("eps") is not None:
        record["eps_text"] = parse_eps(spec.eps, name="eps").text
    if spec.step_size is not None:
        record["step_size_text"] = parse_eps(spec.step_size, name="step size").text
    if attack.name == AttackName.stadv.value:
        record["bound_text"] = None if spec.bound is None else parse_eps(spec.bound, name="bound").text
    return record
