"""Check 6, gradients and outputs: can a gradient attack work on this model at all?

- Input gradients, per example, at the clean point and at a random start in the eps-ball: of
  the margin loss (logit of the label minus the best other logit) and of the cross-entropy.
  A margin gradient that is zero or non-finite at both points (input quantisation, a step
  through numpy/PIL that cuts the autograd graph) leaves gradient attacks blind: fail. A zero
  cross-entropy gradient where the margin's is not zero is a saturated softmax (huge logits):
  CE attacks stall there, a margin loss (APGD-DLR, check 2) does not. (pyautoattack's
  `check_zero_gradients` only counts zero CE gradients inside APGD; this counts per example,
  margin and CE apart, non-finite values too, and also when no APGD runs.)
- Outputs, with pyautoattack's own checks (`pyautoattack.checks`): probabilities instead of
  logits (`check_range_output`), outputs that change between identical passes
  (`check_randomized`: a randomised defence, to be attacked with EoT and judged with
  AutoAttack's `rand` version), a forward pass that computes gradients (`check_dynamic`).

`probe` runs before every other check (it is cheap): whether the graph is cut and whether the
model is randomised decide how the other checks attack it.
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advcli.audit.context import AuditContext, margin, stream_seed
from advcli.audit.file import CheckResult
from advcli.audit.limits import CheckName, Status, judge

PROBE_N = 64  # examples for the output checks: pyautoattack's checks run on one batch too


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _package_check(fn_name: str, *args: object) -> str | None:
    """Run one of pyautoattack's checks; its warning message, or None when it found nothing."""
    from pyautoattack import checks

    logger = logging.Logger(f"advcli.audit.{fn_name}")
    handler = _Collect()
    logger.addHandler(handler)
    tracer = sys.gettrace()
    if fn_name == "check_dynamic":
        # The package counts gradient calls in a module-level dict it never resets.
        for key in checks.funcs:
            checks.funcs[key] = 0
    try:
        getattr(checks, fn_name)(*args, logger=logger)
    finally:
        # check_dynamic ends with sys.settrace(None): give a debugger or coverage its tracer back.
        sys.settrace(tracer)
    return handler.messages[0] if handler.messages else None


def probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[bool, str | None]:
    """(graph cut, randomised message): does the output depend on the input in autograd, and
    do identical passes differ (pyautoattack's `check_randomized`, 5 passes)?"""
    from advcli.attacks.base import attack_mode

    x, y = x[:PROBE_N].to(device), y[:PROBE_N].to(device)
    with attack_mode(model):
        xg = x[:2].clone().requires_grad_(True)
        cut = not model(xg).requires_grad
        randomised = _package_check("check_randomized", model, x, y)
    return cut, randomised


def _gradient_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, ...]:
    """Per example: (margin grad zero, margin grad non-finite, CE grad zero)."""
    x = x.detach().clone().requires_grad_(True)
    logits = model(x).float()
    ce = F.cross_entropy(logits, y, reduction="none")
    (g_ce,) = torch.autograd.grad(ce.sum(), x, retain_graph=True)
    (g_m,) = torch.autograd.grad(margin(logits, y).sum(), x)
    g_ce, g_m = g_ce.flatten(1), g_m.flatten(1)
    finite = torch.isfinite(g_m).all(1) & torch.isfinite(logits).all(1)
    return ((g_m.abs().amax(1) == 0).cpu().numpy(), (~finite).cpu().numpy(),
            (g_ce.abs().amax(1) == 0).cpu().numpy())


def run(ctx: AuditContext) -> CheckResult:
    from advcli.attacks.base import attack_mode, random_start

    t0 = time.perf_counter()
    n, bs = ctx.n, ctx.opts.batch_size
    zero = np.zeros((2, n), dtype=bool)
    nonfinite = np.zeros((2, n), dtype=bool)
    ce_zero = np.zeros((2, n), dtype=bool)
    ctx.reporter.start("gradients at clean points and random starts", total=n)
    try:
        with attack_mode(ctx.model):
            for b, start in enumerate(range(0, n, bs)):
                sl = slice(start, start + bs)
                xb, yb = ctx.x[sl].to(ctx.device), ctx.y[sl].to(ctx.device)
                g = torch.Generator().manual_seed(stream_seed(ctx.opts.seed, 6, b))
                for k, point in enumerate((xb, random_start(xb, ctx.norm, ctx.eps.value, g))):
                    zero[k, sl], nonfinite[k, sl], ce_zero[k, sl] = _gradient_flags(ctx.model, point, yb)
                ctx.reporter.advance(len(yb))
    finally:
        ctx.reporter.finish()
    no_gradient = (zero.all(0) | nonfinite.any(0))
    saturated = ce_zero.all(0) & ~zero.any(0)

    x = ctx.x[:PROBE_N].to(ctx.device)
    with attack_mode(ctx.model), torch.no_grad():
        probabilities = _package_check("check_range_output", ctx.model, x)
    with attack_mode(ctx.model):
        dynamic = _package_check("check_dynamic", ctx.model, x[:16], False)
    randomised = next((m for m in ctx.probe_notes if "randomized" in m), None)

    values = {"no_gradient": int(no_gradient.sum()), "ce_saturated": int(saturated.sum()),
              "probabilities": int(probabilities is not None), "randomised": int(ctx.randomised),
              "dynamic": int(dynamic is not None)}
    findings, status = judge(CheckName.gradients, values,
                             {k: (n if k in ("no_gradient", "ce_saturated") else 1) for k in values})
    saturated_flagged = any(f.metric == "ce_saturated" and f.status != Status.passed.value for f in findings)
    notes = [m for m in (probabilities, randomised, dynamic) if m]
    if ctx.graph_cut:
        notes.insert(0, "the output has no autograd path to the input (a step through numpy, PIL "
                        "or .detach()): gradient attacks see a zero gradient")
    parts = [f"zero/non-finite gradient {values['no_gradient']}/{n}",
             f"CE saturated {values['ce_saturated']}/{n}",
             "outputs " + ("probabilities" if probabilities else "logits")
             + (", random" if ctx.randomised else ", deterministic")
             + (", dynamic" if dynamic else "")]
    if ctx.graph_cut:
        parts[0] += " (graph cut)"
    advice = []
    if values["no_gradient"]:
        advice.append("gradient attacks are blind here: attack with BPDA (backward pass of the "
                      "non-differentiable step replaced by the identity; --wrap gives check 5 the "
                      "unwrapped model) and with black-box attacks (check 4)")
    if saturated_flagged:
        advice.append("cross-entropy saturates: trust margin-loss attacks (APGD-DLR, check 2) "
                      "and AutoAttack, not PGD on cross-entropy")
    if probabilities:
        advice.append("make the model return logits, not probabilities")
    if ctx.randomised:
        advice.append("randomised model: evaluate with EoT (check 5) and `advcli eval "
                      "--autoattack --aa-version rand`")
    if dynamic:
        advice.append("the forward pass runs gradients (a test-time optimisation): use an "
                      "adaptive attack; AutoAttack's numbers may be insufficient")
    return CheckResult(
        check=CheckName.gradients.value, title="", status=status.value, measured="; ".join(parts),
        advice="; ".join(advice) or "nothing to do: gradients exist and outputs are deterministic logits",
        findings=findings,
        numbers={"n": n, **values, "graph_cut": ctx.graph_cut,
                 "zero_at_clean": int(zero[0].sum()), "zero_at_random_start": int(zero[1].sum()),
                 "nonfinite": int(nonfinite.any(0).sum()),
                 "ce_zero_at_clean": int(ce_zero[0].sum()),
                 "ce_zero_at_random_start": int(ce_zero[1].sum())},
        notes=notes, time_s=time.perf_counter() - t0,
    )
