"""Check 7, precision: the default attack run under the training run's mixed precision
(`--amp bf16|fp16`, from the checkpoint, or `--amp` of the audit) against the same attack in
fp32. Both keep their last iterate and are judged by the model in fp32, so only the precision
of the attack differs: a bf16 attack can be weaker (gradients rounded to 8 bits of mantissa),
and training-time robust accuracy measured that way overstates robustness.

Compared in aggregate (accuracy), not per example: the two runs take different paths from the
same random start as soon as one rounding differs.
"""

from __future__ import annotations

import time

from advcli.audit.context import AuditContext, accuracy
from advcli.audit.file import CheckResult
from advcli.audit.limits import CheckName, Status, judge


def training_amp(meta: dict, override: str | None) -> str:
    """The dtype to compare: the override, else the checkpoint's training `amp`, else none."""
    if override:
        return override
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    return str(cfg.get("amp") or "none")


def run(ctx: AuditContext) -> CheckResult:
    from advcli.train.loop import autocast

    t0 = time.perf_counter()
    amp = training_amp(ctx.meta, ctx.opts.amp)
    if amp == "none":
        return CheckResult(
            check=CheckName.precision.value, title="", status=Status.skipped.value,
            measured="trained in fp32: no other precision to compare",
            advice="nothing to do (--amp bf16 compares a bf16 attack anyway)",
            numbers={"amp": amp}, time_s=time.perf_counter() - t0)
    if amp == "fp16" and ctx.device.type != "cuda":
        return CheckResult(
            check=CheckName.precision.value, title="", status=Status.skipped.value,
            measured="trained in fp16, which autocast supports on CUDA only",
            advice="run the audit on a GPU (--device cuda) to compare fp16 with fp32",
            numbers={"amp": amp}, time_s=time.perf_counter() - t0)
    if ctx.randomised:
        # Two runs of an attack on a random model differ by more than any rounding would.
        return CheckResult(
            check=CheckName.precision.value, title="", status=Status.skipped.value,
            measured=f"trained in {amp}, but the model is randomised: the comparison would measure its noise",
            advice="settle the randomness first (checks 5 and 6)",
            numbers={"amp": amp}, time_s=time.perf_counter() - t0)
    steps = ctx.opts.pgd_steps
    spec = dict(name="pgd", steps=steps)
    fp32 = ctx.lp_attack(f"pgd-{steps} fp32", spec, purpose=40, judge=ctx.model, keep="last")
    low = ctx.lp_attack(f"pgd-{steps} {amp}", spec, purpose=40, judge=ctx.model, keep="last",
                        autocast=autocast(ctx.device, amp))
    values = {"amp_weaker": max(0, int(low.sum()) - int(fp32.sum()))}
    findings, status = judge(CheckName.precision, values, {"amp_weaker": ctx.n})
    measured = (f"pgd-{steps} in {amp} {100 * accuracy(low):.1f}% vs fp32 {100 * accuracy(fp32):.1f}% "
                f"({values['amp_weaker']} examples weaker)")
    advice = ("nothing to do: the attack is as strong in the training precision" if status is Status.passed else
              f"the {amp} attack is weaker: robust accuracy measured during training overstates; "
              "evaluate in fp32 (advcli eval does) and consider fp32 attacks in training")
    return CheckResult(
        check=CheckName.precision.value, title="", status=status.value, measured=measured,
        advice=advice, findings=findings,
        numbers={"n": ctx.n, "amp": amp, "amp_accuracy": accuracy(low), "fp32_accuracy": accuracy(fp32),
                 "disagree": int((low != fp32).sum()), **values},
        time_s=time.perf_counter() - t0,
    )
