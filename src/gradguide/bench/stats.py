"""Statistics for reported comparisons: intervals over seeds, paired tests, a paired bootstrap.

Every comparison of two methods is *paired*: the two methods ran on the same (task, seed) cells,
so the same k-shot sample and the same evaluation set, and the test looks at the per-cell
differences. Averages follow the papers: first across tasks for each seed, then over seeds
(the seeds are the sample the interval is about).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from scipy import stats

K = TypeVar("K", bound=Hashable)
Cell = tuple[str, int]


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and the two-sided confidence interval around it (NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.3f} (n=1)"
        return f"{self.mean:.3f} ± {self.half_width:.3f}"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and t-distribution confidence interval of ``values`` (seeds are the sample)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = sum(values) / n
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class TestResult:
    """A test statistic and its two-sided p-value (both NaN when the test is undefined)."""

    statistic: float
    p: float


@dataclass(frozen=True)
class BootstrapResult:
    """Mean paired difference (a − b) and its percentile bootstrap interval over ``n`` pairs."""

    mean_diff: float
    low: float
    high: float
    n: int
    resamples: int


@dataclass(frozen=True)
class PairedComparison:
    """Everything reported for method a against method b on their matched cells."""

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ttest: TestResult
    wilcoxon: TestResult
    bootstrap: BootstrapResult


def _check_pairs(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Paired (dependent samples) t-test of a − b; NaN with fewer than 2 pairs or no spread."""
    _check_pairs(a, b)
    if len(a) < 2:
        return TestResult(math.nan, math.nan)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        result = stats.ttest_rel(np.asarray(a, float), np.asarray(b, float))
    return TestResult(float(result.statistic), float(result.pvalue))


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Wilcoxon signed-rank test of a − b (zero differences dropped); NaN when none is left."""
    _check_pairs(a, b)
    diffs = np.asarray(a, float) - np.asarray(b, float)
    if not np.any(diffs != 0):
        return TestResult(math.nan, math.nan)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        result = stats.wilcoxon(diffs, zero_method="wilcox")
    return TestResult(float(result.statistic), float(result.pvalue))


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapResult:
    """Resample the pairs with replacement (seeded) and take percentiles of the mean difference."""
    _check_pairs(a, b)
    n = len(a)
    if n == 0:
        raise ValueError("paired_bootstrap needs at least one pair")
    diffs = np.asarray(a, float) - np.asarray(b, float)
    mean_diff = float(diffs.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    means = diffs[idx].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return BootstrapResult(mean_diff, float(low), float(high), n, resamples)


def match_pairs(
    a: Mapping[K, float], b: Mapping[K, float]
) -> tuple[list[K], list[float], list[float]]:
    """The cells present in both ``a`` and ``b`` (sorted) and their two aligned value lists."""
    keys = sorted(set(a) & set(b), key=repr)
    return keys, [a[k] for k in keys], [b[k] for k in keys]


def paired_compare(
    a: Mapping[K, float], b: Mapping[K, float], *, resamples: int = 10_000, seed: int = 0
) -> PairedComparison | None:
    """Paired t-test, Wilcoxon and bootstrap of a − b over their common cells (None if none)."""
    keys, xa, xb = match_pairs(a, b)
    if not keys:
        return None
    return PairedComparison(
        n=len(keys),
        mean_a=float(np.mean(xa)),
        mean_b=float(np.mean(xb)),
        mean_diff=float(np.mean(xa) - np.mean(xb)),
        ttest=paired_ttest(xa, xb),
        wilcoxon=wilcoxon_signed_rank(xa, xb),
        bootstrap=paired_bootstrap(xa, xb, resamples=resamples, seed=seed),
    )


def task_average_by_seed(
    values: Mapping[Cell, float], tasks: Sequence[str] | None = None
) -> dict[int, float]:
    """Per seed, the mean over ``tasks`` (default: all seen); seeds missing a task are left out."""
    wanted = sorted({t for t, _ in values}) if tasks is None else list(tasks)
    if not wanted:
        return {}
    seeds = sorted({s for _, s in values})
    return {
        seed: sum(values[(t, seed)] for t in wanted) / len(wanted)
        for seed in seeds
        if all((t, seed) in values for t in wanted)
    }


def across_tasks(
    values: Mapping[Cell, float], tasks: Sequence[str] | None = None, confidence: float = 0.95
) -> Interval | None:
    """Average across tasks per seed, then mean and interval over seeds (None: no full seed)."""
    per_seed = task_average_by_seed(values, tasks)
    if not per_seed:
        return None
    return mean_ci(list(per_seed.values()), confidence)


def per_task(values: Mapping[Cell, float], confidence: float = 0.95) -> dict[str, Interval]:
    """Mean and interval over seeds for every task separately."""
    by_task: dict[str, list[float]] = {}
    for (task, _seed), v in sorted(values.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        by_task.setdefault(task, []).append(v)
    return {t: mean_ci(vs, confidence) for t, vs in by_task.items()}
