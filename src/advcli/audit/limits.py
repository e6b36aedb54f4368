"""The audit's closed sets and its thresholds: which checks exist, and per measured quantity what
passes, what warns and what fails.

Every quantity is a count of examples (or of attacked points), judged against limits that are
a share of the population with a floor in examples: `max(min_count, floor(share * n))`. The
floor keeps a small audit (n = 100) from crying wolf over one borderline example, the share
keeps a large one (n = 10,000) as strict as it should be. Limits were set so that the honest
models of the tests (standard and adversarially trained, three seeds each) pass every check
with room to spare, and the masking defences of tests/wraps fail by a wide margin (see
tests/audit/test_audit.py); the CIFAR-scale gaps quoted in the comments are from the literature.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from advcli.audit.file import Finding


class CheckName(str, enum.Enum):
    """The seven checks, in the order they are reported."""

    curve = "curve"
    convergence = "convergence"
    single_step = "single-step"
    black_box = "black-box"
    transfer = "transfer"
    gradients = "gradients"
    precision = "precision"


ALL_CHECKS: tuple[CheckName, ...] = tuple(CheckName)
# The cheap tier (`--quick`): no strong ensemble, no Square, no extra models or dtypes.
QUICK_CHECKS: tuple[CheckName, ...] = (CheckName.curve, CheckName.single_step, CheckName.gradients)

TITLES = {
    CheckName.curve: "1. robustness curve",
    CheckName.convergence: "2. convergence",
    CheckName.single_step: "3. single-step vs iterative",
    CheckName.black_box: "4. white-box vs black-box",
    CheckName.transfer: "5. transfer and approximation",
    CheckName.gradients: "6. gradients and outputs",
    CheckName.precision: "7. precision",
}


class Status(str, enum.Enum):
    passed = "pass"
    warn = "warn"
    fail = "fail"
    skipped = "skip"  # not applicable (e.g. precision of a model trained in fp32)


_RANK = {Status.skipped: 0, Status.passed: 1, Status.warn: 2, Status.fail: 3}


def worst(statuses: list[Status]) -> Status:
    """The most severe status; `pass` for none (an audit of skipped checks found nothing)."""
    ran = [s for s in statuses if s is not Status.skipped]
    return max(ran, key=_RANK.__getitem__) if ran else Status.passed


@dataclass(frozen=True)
class Limit:
    """One measured count and its limits: pass up to `pass_max(n)`, warn up to `warn_max(n)`
    (never fail when `warn_share` is None), fail above."""

    metric: str
    what: str
    pass_share: float
    pass_min: int
    warn_share: float | None
    warn_min: int = 0

    def pass_max(self, n: int) -> int:
        return max(self.pass_min, math.floor(self.pass_share * n + 1e-9))

    def warn_max(self, n: int) -> float:
        if self.warn_share is None:
            return math.inf
        return max(self.warn_min, math.floor(self.warn_share * n + 1e-9), self.pass_max(n))

    def judge(self, value: int, n: int) -> Status:
        if value <= self.pass_max(n):
            return Status.passed
        return Status.warn if value <= self.warn_max(n) else Status.fail

    def text(self) -> dict[str, str]:
        """The rule in words, e.g. {"pass": "0", "warn": "<= 0.5 % (at least 1)", "fail": "more"}."""
        def bound(share: float, minimum: int) -> str:
            if share == 0:
                return f"<= {minimum}" if minimum else "0"
            return f"<= {100 * share:g} % (at least {minimum})" if minimum else f"<= {100 * share:g} %"

        if self.warn_share is None:
            return {"pass": bound(self.pass_share, self.pass_min), "warn": "more", "fail": "never"}
        return {"pass": bound(self.pass_share, self.pass_min),
                "warn": bound(self.warn_share, self.warn_min), "fail": "more"}


# Per check, the counts it judges ("of n" = of the audited examples unless `what` says
# otherwise). The honest tiny models of the tests (64 examples, six models) measure 0 on every
# count except convergence (0-2) and precision (0-1).
LIMITS: dict[CheckName, tuple[Limit, ...]] = {
    CheckName.curve: (
        # Warm-started from a point that already fools the model, an attack that loses it again
        # is following a loss that does not track the decision (or the model is random).
        Limit("non_monotone", "examples fooled at a smaller eps but robust at a larger one",
              0.0, 0, 0.005, 1),
        # The constant image (mid-grey) lies in every ball at the largest eps: every example
        # whose label differs from the model's prediction on it can be fooled by moving there.
        Limit("above_floor", "examples robust at the largest eps although the constant image "
              "inside their ball is misclassified", 0.0, 0, 0.01, 1),
    ),
    CheckName.convergence: (
        # CIFAR-10 adversarially trained models: PGD-10 vs APGD-CE/DLR is 1-4 points.
        Limit("gap", "examples robust to the default attack that the strong ensemble breaks",
              0.05, 3, 0.10, 5),
    ),
    CheckName.single_step: (
        Limit("fgsm_below_pgd", "examples by which FGSM accuracy is below PGD accuracy",
              0.01, 1, 0.03, 3),
    ),
    CheckName.black_box: (
        Limit("square_only", "of the points the white-box attacks left robust, those Square "
              "breaks (share of the points attacked)", 0.01, 1, 0.03, 2),
    ),
    CheckName.transfer: (
        Limit("transfer_only", "examples the surrogate's (or the unwrapped model's) adversarial "
              "examples break that every white-box attack left robust", 0.01, 1, 0.03, 2),
        Limit("eot_only", "examples the EoT attack breaks that every white-box attack left "
              "robust (randomised models)", 0.01, 1, 0.03, 2),
    ),
    CheckName.gradients: (
        Limit("no_gradient", "examples whose input gradient of the margin loss is zero or "
              "non-finite, at the clean point and at a random start (or has no path to the input)",
              0.0, 0, 0.01, 1),
        # Cross-entropy saturates (softmax exactly one-hot in float32) while the margin still
        # has a gradient: CE attacks stall there; whether that matters is check 2's verdict.
        Limit("ce_saturated", "examples whose cross-entropy gradient is zero although the "
              "margin's is not", 0.10, 0, None),
        Limit("probabilities", "outputs look like probabilities (pyautoattack's check; 1 = yes)",
              0.0, 0, None),
        Limit("randomised", "outputs change between identical passes (pyautoattack's check; "
              "1 = yes)", 0.0, 0, None),
        Limit("dynamic", "the forward pass computes gradients (pyautoattack's check; 1 = yes)",
              0.0, 0, None),
    ),
    CheckName.precision: (
        # Aggregate, not per example: two PGD runs in different precisions take different paths.
        Limit("amp_weaker", "examples by which the attack in the training AMP dtype leaves "
              "accuracy above the fp32 attack", 0.02, 2, 0.05, 4),
    ),
}


def limit(check: CheckName, metric: str) -> Limit:
    return next(lim for lim in LIMITS[check] if lim.metric == metric)


def thresholds_table() -> list[tuple[str, str, str, str, str]]:
    """(check, counted, pass, warn, fail) rows, for --help, the README and the result file."""
    rows = []
    for check in ALL_CHECKS:
        for lim in LIMITS[check]:
            t = lim.text()
            rows.append((check.value, lim.what, t["pass"], t["warn"], t["fail"]))
    return rows


def parse_checks(text: str | None, *, quick: bool = False) -> tuple[CheckName, ...]:
    """`--checks a,b` (names or 1-7) and `--quick` -> the checks to run, in report order."""
    from advcli.config import parse_choice
    from advcli.errors import UsageError

    if text and quick:
        raise UsageError("--quick is a fixed set of checks (curve, single-step, gradients); "
                         "drop --checks or --quick")
    if quick:
        return QUICK_CHECKS
    if not text:
        return ALL_CHECKS
    chosen = set()
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if part.isdigit() and 1 <= int(part) <= len(ALL_CHECKS):
            chosen.add(ALL_CHECKS[int(part) - 1])
        else:
            chosen.add(parse_choice(CheckName, part, name="check (--checks)"))
    if not chosen:
        raise UsageError("--checks is empty; name checks like curve,gradients or 1,6")
    return tuple(c for c in ALL_CHECKS if c in chosen)


def judge(check: CheckName, values: dict[str, int], of: int | dict[str, int]) -> tuple[list[Finding], Status]:
    """Judge each measured count of a check (`values[metric]` out of `of`, one population for
    all or one per metric) against its limits: the findings and the check's status (the worst).
    Metrics not measured (absent from `values`) are left out."""
    out = []
    for lim in LIMITS[check]:
        if lim.metric not in values:
            continue
        value, n = int(values[lim.metric]), int(of if isinstance(of, int) else of[lim.metric])
        out.append(Finding(metric=lim.metric, what=lim.what, value=value, of=n,
                           status=lim.judge(value, n).value, limits=lim.text()))
    return out, worst([Status(f.status) for f in out])
