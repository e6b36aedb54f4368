"""Check 2, convergence: the default evaluation attack (advcli eval's PGD-10) against the
per-example AND of a strong ensemble: PGD-100 with 5 restarts, APGD-CE and APGD-DLR (Croce &
Hein 2020; DLR is the margin loss that still has a gradient where softmax saturates). With
`--fast-worst-case`, eval's fast worst-case evaluation (APGD-CE, then targeted APGD toward the
classes of smallest linearised margin, MALT) takes APGD-CE's place: targeted attacks break points
the untargeted ones miss.

The count judged is the examples the default attack calls robust that the ensemble breaks: a
large gap means the default attack did not converge. (Comparing 1 restart with 5 restarts of
the same attack is no test: keeping the worst case per example can only lower accuracy.)
"""

from __future__ import annotations

import time

import numpy as np

from advcli.audit.context import AuditContext, accuracy
from advcli.audit.file import CheckResult
from advcli.audit.limits import CheckName, Status, judge


def run(ctx: AuditContext) -> CheckResult:
    t0 = time.perf_counter()
    default = ctx.default_attack()
    o = ctx.opts
    strong_name = f"pgd-{o.strong_steps}x{o.strong_restarts}"
    members: dict[str, np.ndarray] = {}
    members[strong_name] = ctx.lp_attack(
        strong_name, dict(name="pgd", steps=o.strong_steps, restarts=o.strong_restarts), purpose=2)
    notes = []
    if o.fast_worst_case:
        from advcli.attacks.malt import evaluation_name

        members[evaluation_name()] = ctx.fast_worst_case()
    else:
        members["apgd-ce"] = ctx.autoattack("apgd-ce")
    if ctx.num_classes >= 3:
        members["apgd-dlr"] = ctx.autoattack("apgd-dlr")
    else:
        notes.append(f"APGD-DLR needs 3 classes or more (the model has {ctx.num_classes}); not run")
    ctx.whitebox.update(members)
    strong = np.logical_and.reduce(list(members.values())) & ctx.clean
    gap_flags = default & ~strong
    values = {"gap": int(gap_flags.sum())}
    findings, status = judge(CheckName.convergence, values, {"gap": ctx.n})
    only = {name: int((default & ~f & np.logical_and.reduce(
        [g for k, g in members.items() if k != name] or [ctx.clean])).sum()) for name, f in members.items()}
    measured = (f"pgd-{o.pgd_steps} {100 * accuracy(default):.1f}% vs ensemble {100 * accuracy(strong):.1f}% "
                f"(" + ", ".join(f"{k} {100 * accuracy(f):.1f}%" for k, f in members.items())
                + f"); gap {values['gap']}/{ctx.n}")
    if status is Status.passed:
        advice = f"nothing to do: pgd-{o.pgd_steps} is within the tolerance of the strong ensemble"
    else:
        best = max(only, key=only.__getitem__)
        advice = (f"the default attack did not converge: report the ensemble's (or AutoAttack's) "
                  f"accuracy, not pgd-{o.pgd_steps}'s; {best} alone breaks {only[best]} of them"
                  + (" (margin loss: the softmax saturates, see check 6)" if best == "apgd-dlr" else ""))
    return CheckResult(
        check=CheckName.convergence.value, title="", status=status.value, measured=measured,
        advice=advice, findings=findings,
        numbers={"n": ctx.n, "default": {"attack": f"pgd-{o.pgd_steps}", "accuracy": accuracy(default)},
                 "ensemble_accuracy": accuracy(strong),
                 "members": {k: {"accuracy": accuracy(f), "breaks_alone": only[k]} for k, f in members.items()},
                 "apgd": {"iterations": 100, "restarts": 1, "note": "pyautoattack's defaults"},
                 "fast_worst_case": o.fast_worst_case,
                 **values},
        notes=notes, time_s=time.perf_counter() - t0,
    )
