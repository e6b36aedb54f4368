"""Check 5, transfer and approximation: attacks that do not use the model's own gradient must
not beat the white-box attacks on it.

- Transfer: adversarial examples made on a surrogate (`--surrogate CKPT`) and, with `--wrap`,
  on the unwrapped model: BPDA (Athalye et al. 2018) with the wrapper's backward pass
  approximated by the identity, here in its simplest form, the wrapper skipped in the
  backward and the forward of the attack. PGD with the default attack's settings, keeping the
  last iterate (the one that transfers best); judged by one forward pass of the audited model.
- Expectation over Transformation, for randomised models (check 6's probe): PGD on the mean
  logits of `eot_samples` passes (`Expectation`), judged by one pass of the model, as every
  other attack here.

Judged per example: points the transfer (or EoT) attack breaks that every white-box attack
run so far left robust.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from advcli.audit.context import AuditContext, Expectation, accuracy
from advcli.audit.file import CheckResult
from advcli.audit.limits import CheckName, Status, judge


def run(ctx: AuditContext, surrogates: dict[str, Any]) -> CheckResult:
    """`surrogates`: name -> nn.Module to make transfer examples on (the --surrogate
    checkpoint, the unwrapped model)."""
    t0 = time.perf_counter()
    ctx.default_attack()
    whitebox = ctx.robust_whitebox()
    steps = ctx.opts.pgd_steps
    spec = dict(name="pgd", steps=steps)
    sources: dict[str, dict[str, Any]] = {}
    transfer_only = np.zeros(ctx.n, dtype=bool)
    for k, (name, model) in enumerate(surrogates.items()):
        model.to(ctx.device).eval()
        flags = ctx.lp_attack(f"transfer from {name}", spec, purpose=20 + k, model=model,
                              judge=ctx.model, keep="last")
        only = whitebox & ~flags
        transfer_only |= only
        sources[name] = {"accuracy": accuracy(flags), "breaks_beyond_whitebox": int(only.sum())}
    eot: dict[str, Any] | None = None
    eot_only = np.zeros(ctx.n, dtype=bool)
    if ctx.randomised:
        flags = ctx.lp_attack(f"pgd-{steps} with EoT ({ctx.opts.eot_samples} samples)", spec, purpose=30,
                              model=Expectation(ctx.model, ctx.opts.eot_samples), judge=ctx.model)
        eot_only = whitebox & ~flags
        eot = {"samples": ctx.opts.eot_samples, "accuracy": accuracy(flags), "breaks_beyond_whitebox":
               int(eot_only.sum())}

    values: dict[str, int] = {}
    if sources:
        values["transfer_only"] = int(transfer_only.sum())
    if eot is not None:
        values["eot_only"] = int(eot_only.sum())
    findings, status = judge(CheckName.transfer, values, ctx.n)
    if not values:
        return CheckResult(
            check=CheckName.transfer.value, title="", status=Status.skipped.value,
            measured="nothing to compare: no --surrogate, no --wrap, and the model is deterministic",
            advice="pass --surrogate CKPT (e.g. a standard model of the same data) to test transfer",
            numbers={"n": ctx.n}, time_s=time.perf_counter() - t0)
    parts = [f"white-box {100 * accuracy(whitebox):.1f}%"]
    parts += [f"from {k} {100 * v['accuracy']:.1f}% ({v['breaks_beyond_whitebox']} beyond white-box)"
              for k, v in sources.items()]
    if eot is not None:
        parts.append(f"EoT {100 * eot['accuracy']:.1f}% ({eot['breaks_beyond_whitebox']} beyond white-box)")
    advice = []
    if values.get("transfer_only") and any(f.metric == "transfer_only" and f.status != "pass" for f in findings):
        advice.append("transferred examples beat the model's own gradients: they are masked; report "
                      "the transfer/BPDA accuracy and attack the defence adaptively")
    if values.get("eot_only") and any(f.metric == "eot_only" and f.status != "pass" for f in findings):
        advice.append("averaging gradients over the randomness beats the plain attack: evaluate "
                      "with EoT and AutoAttack's rand version")
    return CheckResult(
        check=CheckName.transfer.value, title="", status=status.value, measured="; ".join(parts),
        advice="; ".join(advice) or "nothing to do: no attack without the model's gradient beats it",
        findings=findings,
        numbers={"n": ctx.n, "whitebox_accuracy": accuracy(whitebox), "sources": sources,
                 "eot": eot, **values},
        time_s=time.perf_counter() - t0,
    )
