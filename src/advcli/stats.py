"""Statistics for comparing runs: mean ± std across seeds, and whether a difference is real.

- `summarize`: mean, sample standard deviation (ddof = 1; 0 for a single value) and n.
- `mcnemar_exact`: the exact McNemar test for two classifiers evaluated on the same examples.
  Only the discordant pairs carry information: b = examples the first gets right and the second
  wrong, c = the reverse. Under "equally accurate", b ~ Binomial(b + c, 1/2); the two-sided
  p-value is scipy's exact binomial test.
- `welch_t`: Welch's unequal-variance t-test on per-seed accuracies (needs >= 2 per side).
- `bootstrap_diff_ci`: percentile bootstrap CI of the difference of means across seeds, only
  from `MIN_BOOTSTRAP_RUNS` runs a side: resampling 2-3 values gives an interval that is
  mostly an artefact of which few values exist, not a 95 % interval.
- `wilson_interval`: the Wilson score interval of an accuracy measured on n examples (test-set
  sampling only; it says nothing about seed-to-seed spread).
- `paired_difference`: the mean of seed-matched differences with its Student-t interval and
  the paired t-test (the right test when the same seeds were trained both ways).
- `binomial_tail`, `collision_probability`, `pooled_collision_probability`: how likely k
  agreements in n paired draws are by chance (check-loader's p(chance) for two augmentation
  streams that agree).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections import Counter
from collections.abc import Hashable, Sequence
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


MIN_BOOTSTRAP_RUNS = 5


def bootstrap_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap CI of mean(a) - mean(b), resampling each side independently.

    None with fewer than `MIN_BOOTSTRAP_RUNS` values a side: 3 values have 10 distinct
    resamples, so the "interval" is a few resample means, not a 95 % interval.
    """
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size < MIN_BOOTSTRAP_RUNS or xb.size < MIN_BOOTSTRAP_RUNS:
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


def wilson_interval(accuracy: float, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (no continuity correction) of a proportion observed on n trials.

    `accuracy` may be a mean of several runs' accuracies on the same n examples; the interval
    is then the test-set sampling uncertainty of one run, not the seed spread.
    """
    if n < 1:
        raise ValueError(f"a Wilson interval needs n >= 1, got {n}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    z = float(_sp.norm.ppf(0.5 + confidence / 2))
    z2n = z * z / n
    centre = (accuracy + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z2n / (4 * n)) / (1 + z2n)
    # The interval always holds the estimate; min/max only undo float rounding at 0 and 1.
    return max(0.0, min(accuracy, centre - half)), min(1.0, max(accuracy, centre + half))


@dataclass(frozen=True)
class PairedDifference:
    """mean(a_i - b_i) over seed-matched pairs, its Student-t interval and paired-t p-value.

    `low`/`high`/`p_value` are None with fewer than two pairs; `p_value` is None when every
    difference is the same (the t statistic is undefined; the interval is that one value).
    """

    mean: float
    low: float | None
    high: float | None
    n: int
    p_value: float | None
    confidence: float = 0.95


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95
) -> PairedDifference:
    """Paired t on a_i - b_i (pairs in order): mean ± t_{n-1} · sd / sqrt(n)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.shape != xb.shape or xa.size == 0:
        raise ValueError(f"paired values differ in length or are empty: {xa.size} vs {xb.size}")
    d = xa - xb
    mean, n = float(d.mean()), int(d.size)
    if n < 2:
        return PairedDifference(mean, None, None, n, None, confidence)
    sd = float(d.std(ddof=1))
    half = float(_sp.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    p = None
    if sd > 0:
        t = mean / (sd / math.sqrt(n))
        p = float(2 * _sp.t.sf(abs(t), n - 1))
    return PairedDifference(mean, mean - half, mean + half, n, p, confidence)


def binomial_tail(matches: int, length: int, q: float) -> float:
    """P[X >= matches] for X ~ Binomial(length, q), summed in log space (no underflow surprises)."""
    if matches <= 0:
        return 1.0
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    logs = [
        math.lgamma(length + 1) - math.lgamma(k + 1) - math.lgamma(length - k + 1)
        + k * math.log(q) + (length - k) * math.log1p(-q)
        for k in range(matches, length + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def collision_probability(outcomes: Sequence[Hashable]) -> float:
    """Chance that two independent draws give the same outcome: sum_k c_k(c_k-1) / n(n-1) over
    the outcome counts c_k, floored at 1/n so that a never-seen collision is not taken as
    impossible."""
    return pooled_collision_probability([[[o] for o in outcomes]])


def pooled_collision_probability(
    items: Sequence[Sequence[Sequence[Hashable]]], weights: Sequence[float] | None = None
) -> float:
    """The chance that two independent draws of one item agree, as a weighted mean over items
    (equal weights by default), floored at 1 / (all draws).

    `items[j][r]` holds the draws of item j in run r. Only pairs of draws from different runs
    count (draws of one run may share a seed); per item that is
    sum_k (N_k^2 - sum_r n_rk^2) / (N^2 - sum_r n_r^2) over the outcome counts N_k (n_rk in run r)
    and the draws N (n_r in run r). Several draws per run and many items give a fine-grained
    estimate from few runs."""
    weights = [1.0] * len(items) if weights is None else list(weights)
    q = total = 0.0
    draws = 0
    for runs, w in zip(items, weights, strict=True):
        n = sum(len(run) for run in runs)
        draws += n
        pairs = n * n - sum(len(run) ** 2 for run in runs)
        if pairs <= 0:
            continue
        overall = Counter(x for run in runs for x in run)
        within = sum(c * c for run in runs for c in Counter(run).values())
        q += w * (sum(c * c for c in overall.values()) - within) / pairs
        total += w
    if total <= 0 or draws < 2:
        return 1.0
    return max(q / total, 1.0 / draws)
