"""Statistics of the bench against values worked out by hand (and scipy as the reference)."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from gradguide.bench.stats import (
    across_tasks,
    mean_ci,
    paired_bootstrap,
    paired_compare,
    paired_ttest,
    per_task,
    task_average_by_seed,
    wilcoxon_signed_rank,
)


def test_mean_ci_by_hand():
    iv = mean_ci([1.0, 2.0, 3.0])
    # sd = 1, t(0.975, df=2) = 4.302652729911275, half = t * 1 / sqrt(3)
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.half_width == pytest.approx(4.302652729911275 / math.sqrt(3), rel=1e-9)
    single = mean_ci([0.7])
    assert single.n == 1 and math.isnan(single.low)


def test_paired_ttest_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 1.0, 1.0]
    # differences 1, 0, 2, 3: mean 1.5, sd sqrt(5/3), t = 1.5 / (sd / 2)
    t = 1.5 / (math.sqrt(5 / 3) / 2)
    r = paired_ttest(a, b)
    assert r.statistic == pytest.approx(t, rel=1e-12)
    assert r.p == pytest.approx(2 * sps.t.sf(t, 3), rel=1e-12)
    assert r.p == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert math.isnan(paired_ttest([1.0], [0.0]).p)


def test_wilcoxon_by_hand():
    # differences 1, 0, 2, 3 → the zero is dropped; ranks 1, 2, 3 all positive: W- = 0.
    # Exact null for n = 3: P(W <= 0) = 1/8, two-sided 0.25.
    r = wilcoxon_signed_rank([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 1.0, 1.0])
    assert r.statistic == 0.0 and r.p == pytest.approx(0.25)
    # differences 1, -2, 3, 4, 5: W- = 2; subsets of {1..5} with sum <= 2: {}, {1}, {2} → 3/32
    r = wilcoxon_signed_rank([1.0, -2.0, 3.0, 4.0, 5.0], [0.0] * 5)
    assert r.statistic == 2.0 and r.p == pytest.approx(2 * 3 / 32)
    assert math.isnan(wilcoxon_signed_rank([1.0, 2.0], [1.0, 2.0]).p)


def test_paired_bootstrap_by_hand():
    # differences 0 and 1: resampled means are 0, 0.5, 1 with probability 1/4, 1/2, 1/4,
    # so the 2.5th and 97.5th percentiles are 0 and 1.
    r = paired_bootstrap([1.0, 2.0], [1.0, 1.0], resamples=4000, seed=3)
    assert r.mean_diff == 0.5 and r.n == 2 and (r.low, r.high) == (0.0, 1.0)
    const = paired_bootstrap([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert const.low == const.high == const.mean_diff == 1.0
    again = paired_bootstrap([0.3, 0.1, 0.5, 0.2], [0.2, 0.2, 0.1, 0.0], seed=7)
    assert again == paired_bootstrap([0.3, 0.1, 0.5, 0.2], [0.2, 0.2, 0.1, 0.0], seed=7)
    assert again.low <= again.mean_diff <= again.high


def test_task_averages_per_seed_then_over_seeds():
    values = {
        ("a", 1): 0.5,
        ("b", 1): 0.7,
        ("a", 2): 0.6,
        ("b", 2): 0.9,
        ("a", 3): 0.4,  # seed 3 lacks task b: left out of the average
    }
    assert task_average_by_seed(values) == pytest.approx({1: 0.6, 2: 0.75})
    assert task_average_by_seed(values, ["a"]) == pytest.approx({1: 0.5, 2: 0.6, 3: 0.4})
    iv = across_tasks(values)
    assert iv is not None and iv.n == 2 and iv.mean == pytest.approx(0.675)
    assert across_tasks({}) is None
    tasks = per_task(values)
    assert tasks["a"].n == 3 and tasks["a"].mean == pytest.approx(0.5)
    assert tasks["b"].mean == pytest.approx(0.8)


def test_paired_compare_uses_common_cells_only():
    a = {("t", 1): 0.8, ("t", 2): 0.9, ("t", 3): 0.7, ("u", 1): 0.1}
    b = {("t", 1): 0.6, ("t", 2): 0.8, ("t", 3): 0.6}
    c = paired_compare(a, b)
    assert c is not None and c.n == 3
    assert c.mean_diff == pytest.approx((0.2 + 0.1 + 0.1) / 3)
    assert c.ttest.p == pytest.approx(sps.ttest_rel([0.8, 0.9, 0.7], [0.6, 0.8, 0.6]).pvalue)
    assert c.bootstrap.n == 3
    assert paired_compare(a, {("v", 1): 0.5}) is None
