"""Statistics against independent reference computations."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats as sp

from advcli.stats import bootstrap_diff_ci, mcnemar_exact, summarize, welch_t


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
