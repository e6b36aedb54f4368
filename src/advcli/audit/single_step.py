"""Check 3, single-step vs iterative: FGSM (one step of size eps) must not leave fewer examples
robust than PGD. An iterative attack that does worse than one step of its own first gradient
is stuck in a loss surface that only looks flat or noisy up close (Athalye et al. 2018,
Carlini et al. 2019, "On evaluating adversarial robustness")."""

from __future__ import annotations

import time

from advcli.audit.context import AuditContext, accuracy
from advcli.audit.file import CheckResult
from advcli.audit.limits import CheckName, Status, judge


def run(ctx: AuditContext) -> CheckResult:
    t0 = time.perf_counter()
    pgd = ctx.default_attack()
    fgsm = ctx.lp_attack("fgsm", dict(name="fgsm"), purpose=3)
    ctx.whitebox["fgsm"] = fgsm
    values = {"fgsm_below_pgd": max(0, int(pgd.sum()) - int(fgsm.sum()))}
    findings, status = judge(CheckName.single_step, values, {"fgsm_below_pgd": ctx.n})
    steps = ctx.opts.pgd_steps
    measured = (f"fgsm {100 * accuracy(fgsm):.1f}% vs pgd-{steps} {100 * accuracy(pgd):.1f}% "
                f"(fgsm below by {values['fgsm_below_pgd']} examples)")
    advice = ("nothing to do: one step does not beat the iterative attack" if status is Status.passed else
              f"one FGSM step beats pgd-{steps}: the iterative attack is misled by a locally masked "
              "loss; use more steps, restarts, a margin loss (check 2) and BPDA/black-box attacks")
    return CheckResult(
        check=CheckName.single_step.value, title="", status=status.value, measured=measured,
        advice=advice, findings=findings,
        numbers={"n": ctx.n, "fgsm_accuracy": accuracy(fgsm), "pgd_accuracy": accuracy(pgd),
                 "fgsm_only": int((pgd & ~fgsm).sum()), **values},
        time_s=time.perf_counter() - t0,
    )
