"""Statistics against independent reference computations."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats as sp

from advcli.stats import (
    MIN_BOOTSTRAP_RUNS,
    bootstrap_diff_ci,
    mcnemar_exact,
    paired_difference,
    summarize,
    welch_t,
    wilson_interval,
)


def _exact_mcnemar_by_hand(b: int, c: int) -> float:
    # Two-sided exact binomial test with p = 1/2: double the smaller tail, capped at 1.
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("seed", range(6))
def test_mcnemar_matches_scipy_and_a_hand_computation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    a = rng.random(n) < rng.uniform(0.3, 0.9)
    b = rng.random(n) < rng.uniform(0.3, 0.9)
    only_a = int(sum(1 for i in range(n) if a[i] and not b[i]))
    only_b = int(sum(1 for i in range(n) if b[i] and not a[i]))
    res = mcnemar_exact(a, b)
    assert res.detail == {"only_first": only_a, "only_second": only_b}
    assert res.p_value == pytest.approx(sp.binomtest(only_a, only_a + only_b, 0.5).pvalue,
                                        rel=1e-12)
    assert res.p_value == pytest.approx(_exact_mcnemar_by_hand(only_a, only_b), rel=1e-9)
    # symmetric in its arguments
    assert mcnemar_exact(b, a).p_value == pytest.approx(res.p_value, rel=1e-12)


def test_mcnemar_edge_cases() -> None:
    same = np.array([True, False, True, True])
    assert mcnemar_exact(same, same).p_value == 1.0
    # 10 discordant pairs all one way: p = 2 / 2**10
    a = np.array([True] * 10 + [False] * 5)
    b = np.array([False] * 10 + [False] * 5)
    assert mcnemar_exact(a, b).p_value == pytest.approx(2 / 2**10)
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact([True, False], [True])


def test_welch_matches_the_textbook_formula() -> None:
    a = [0.912, 0.905, 0.921, 0.899]
    b = [0.871, 0.889, 0.864]
    ma, mb = statistics.mean(a), statistics.mean(b)
    va, vb = statistics.variance(a), statistics.variance(b)
    se2 = va / len(a) + vb / len(b)
    t = (ma - mb) / math.sqrt(se2)
    df = se2**2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    p = 2 * sp.t.sf(abs(t), df)
    res = welch_t(a, b)
    assert res.statistic == pytest.approx(t, rel=1e-10)
    assert res.p_value == pytest.approx(p, rel=1e-8)
    assert res.detail["df"] == pytest.approx(df, rel=1e-8)


def test_welch_is_undefined_without_spread_or_with_one_seed() -> None:
    assert welch_t([0.9], [0.8, 0.85]).p_value is None
    assert welch_t([0.9, 0.9], [0.8, 0.8]).p_value is None


def test_summarize_uses_the_sample_std() -> None:
    values = [0.91, 0.93, 0.9, 0.95]
    s = summarize(values)
    assert s.mean == pytest.approx(statistics.mean(values))
    assert s.std == pytest.approx(statistics.stdev(values))
    assert s.n == 4
    assert summarize([0.5]).std == 0.0
    with pytest.raises(ValueError):
        summarize([])


def test_bootstrap_ci_brackets_the_difference_and_is_seeded() -> None:
    a = [0.91, 0.93, 0.92, 0.94, 0.90]
    b = [0.85, 0.86, 0.84, 0.88, 0.86]
    ci = bootstrap_diff_ci(a, b, n_resamples=2000, seed=1)
    assert ci is not None
    low, high = ci
    diff = statistics.mean(a) - statistics.mean(b)
    assert low < diff < high
    assert low > 0  # clearly separated groups
    assert bootstrap_diff_ci(a, b, n_resamples=2000, seed=1) == ci
    assert bootstrap_diff_ci([0.9], b) is None


def test_bootstrap_ci_needs_five_runs_a_side() -> None:
    # Three values have 10 distinct resamples: no 95 % interval (issue 15).
    five = [0.91, 0.93, 0.92, 0.94, 0.90]
    assert MIN_BOOTSTRAP_RUNS == 5
    assert bootstrap_diff_ci(five[:3], [0.85, 0.86, 0.84], n_resamples=200) is None
    assert bootstrap_diff_ci(five, [0.85, 0.86, 0.84, 0.88], n_resamples=200) is None
    assert bootstrap_diff_ci(five, [0.85, 0.86, 0.84, 0.88, 0.86], n_resamples=200) is not None


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (731, 1000), (1, 200)])
def test_wilson_matches_scipy_and_the_formula(k: int, n: int) -> None:
    low, high = wilson_interval(k / n, n)
    ref = sp.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert low == pytest.approx(ref.low, abs=1e-12)
    assert high == pytest.approx(ref.high, abs=1e-12)
    # by hand, z = 1.959964
    p, z = k / n, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-12)
    assert low <= p <= high


def test_wilson_shrinks_with_n_and_rejects_nonsense() -> None:
    w100 = wilson_interval(0.5, 100)
    w1000 = wilson_interval(0.5, 1000)
    assert w1000[1] - w1000[0] < w100[1] - w100[0]
    with pytest.raises(ValueError):
        wilson_interval(0.5, 0)
    with pytest.raises(ValueError):
        wilson_interval(1.2, 10)


def test_paired_difference_matches_scipy_ttest_rel() -> None:
    a = [0.512, 0.498, 0.530]
    b = [0.500, 0.495, 0.511]
    res = paired_difference(a, b)
    d = [x - y for x, y in zip(a, b, strict=True)]
    assert res.mean == pytest.approx(statistics.mean(d))
    half = sp.t.ppf(0.975, 2) * statistics.stdev(d) / math.sqrt(3)
    assert res.low == pytest.approx(statistics.mean(d) - half)
    assert res.high == pytest.approx(statistics.mean(d) + half)
    assert res.p_value == pytest.approx(sp.ttest_rel(a, b).pvalue)
    # pairing matters: the same numbers unpaired give a different (larger) p
    assert welch_t(a, b).p_value > res.p_value
    one = paired_difference([0.5], [0.4])
    assert one.mean == pytest.approx(0.1) and one.low is None and one.p_value is None
    with pytest.raises(ValueError):
        paired_difference([0.5, 0.6], [0.4])
