"""Check 4, white-box vs black-box: Square (Andriushchenko et al. 2020; pyautoattack's, with
its full budget of 5,000 queries) on up to `square_n` points that every white-box attack run
so far left robust, judged per example. Square needs no gradient, so a point it breaks that
the white-box attacks could not is evidence that their gradients were masked."""

from __future__ import annotations

import time

import numpy as np

from advcli.audit.context import AuditContext
from advcli.audit.file import CheckResult
from advcli.audit.limits import CheckName, Status, judge


def run(ctx: AuditContext) -> CheckResult:
    t0 = time.perf_counter()
    ctx.default_attack()
    whitebox = ctx.robust_whitebox()
    points = np.flatnonzero(whitebox)[: ctx.opts.square_n]
    square = ctx.autoattack("square", todo=points) if len(points) else ctx.clean.copy()
    broken = points[~square[points]]
    values = {"square_only": int(len(broken))}
    findings, status = judge(CheckName.black_box, values, {"square_only": max(len(points), 1)})
    names = ", ".join(ctx.whitebox)
    if not len(points):
        measured = "no point left robust by the white-box attacks: nothing for Square to test"
    else:
        measured = f"square broke {len(broken)} of {len(points)} points the white-box attacks left robust"
    advice = ("nothing to do: Square finds nothing the gradient attacks missed" if status is Status.passed else
              "a gradient-free attack beats the gradient attacks: their gradients are masked; report "
              "black-box accuracy and attack adaptively (BPDA, EoT)")
    return CheckResult(
        check=CheckName.black_box.value, title="", status=status.value, measured=measured,
        advice=advice, findings=findings,
        numbers={"points": int(len(points)), "queries": 5000, "whitebox_attacks": list(ctx.whitebox),
                 "broken_indices": [int(i) for i in broken[:50]], **values},
        notes=[f"white-box attacks ANDed: {names}"], time_s=time.perf_counter() - t0,
    )
