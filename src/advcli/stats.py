"""Statistics for comparing runs: mean ± std across seeds, and whether a difference is real.

- `summarize`: mean, sample standard deviation (ddof = 1; 0 for a single value) and n.
- `mcnemar_exact`: the exact McNemar test for two classifiers evaluated on the same examples.
  Only the discordant pairs carry information: b = examples the first gets right and the second
  wrong, c = the reverse. Under "equally accurate", b ~ Binomial(b + c, 1/2); the two-sided
  p-value is scipy's exact binomial test.
- `welch_t`: Welch's unequal-variance t-test on per-seed accuracies (needs >= 2 per side).
- `bootstrap_diff_ci`: percentile bootstrap CI of the difference of means across seeds.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as _sp


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class Significance:
    """A significance test's outcome; `p_value` is None when the test is undefined."""

    test: str  # "mcnemar" | "welch"
    p_value: float | None
    statistic: float | None = None
    detail: dict[str, float] = field(default_factory=dict)


def summarize(values: Sequence[float]) -> Summary:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("summarize needs at least one value")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return Summary(mean=float(arr.mean()), std=std, n=int(arr.size))


def mcnemar_exact(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> Significance:
    """Exact McNemar test on paired per-example correctness flags (same examples, same order)."""
    fa, fb = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if fa.shape != fb.shape:
        raise ValueError(f"paired flags differ in length: {fa.size} vs {fb.size}")
    only_a = int(np.count_nonzero(fa & ~fb))
    only_b = int(np.count_nonzero(~fa & fb))
    discordant = only_a + only_b
    # No discordant pair: the two are indistinguishable on these examples.
    p = 1.0 if discordant == 0 else float(_sp.binomtest(only_a, discordant, 0.5).pvalue)
    return Significance(
        test="mcnemar",
        p_value=min(1.0, p),
        statistic=float(min(only_a, only_b)),
        detail={"only_first": only_a, "only_second": only_b},
    )


def welch_t(a: Sequence[float], b: Sequence[float]) -> Significance:
    """Welch's t-test of mean(a) == mean(b); p is None with fewer than two values a side, or
    when both sides have zero variance (the t statistic is then undefined)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size < 2 or xb.size < 2:
        return Significance(test="welch", p_value=None)
    if xa.var() == 0 and xb.var() == 0:
        return Significance(test="welch", p_value=None)
    with warnings.catch_warnings():
        # scipy warns about precision loss for nearly identical seeds; the p-value is still
        # the right order of magnitude, which is all a table shows.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = _sp.ttest_ind(xa, xb, equal_var=False)
    t, p = float(res.statistic), float(res.pvalue)
    if math.isnan(p):
        return Significance(test="welch", p_value=None)
    return Significance(test="welch", p_value=p, statistic=t,
                      detail={"df": float(getattr(res, "df", float("nan")))})


def bootstrap_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of mean(a) - mean(b), resampling each side independently.

    None with fewer than two values a side (a resample of one value has no spread).
    """
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size < 2 or xb.size < 2:
        return None
    # scipy >= 1.15 calls the generator `rng`; older versions `random_state`.
    rng_kw = "rng" if "rng" in inspect.signature(_sp.bootstrap).parameters else "random_state"
    res = _sp.bootstrap(
        (xa, xb),
        lambda u, v, axis: np.mean(u, axis=axis) - np.mean(v, axis=axis),
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        vectorized=True,
        paired=False,
        **{rng_kw: np.random.default_rng(seed)},
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
