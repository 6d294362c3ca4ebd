"""Grouping runs into comparable conditions and computing what the report shows about them.

A *condition* is one model at one number of shots; inside it a *variant* is a method with its
swept settings. Every comparison is paired on (task, seed) cells within one condition, where both
methods saw the same k-shot sample (checked from the records' training ids) and the same
evaluation set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np

from gradguide.bench.stats import Interval, PairedComparison, across_tasks, paired_compare
from gradguide.methods import methods_in_report_order
from gradguide.report.data import Cells, RunData, cells

METRIC = "accuracy"
STABILITY = "gradient_stability"
ALIGNMENT = "directional_alignment"
#: Methods the report compares against (Method.role "baseline"), in report order; any other
#: method is a proposed one.
BASELINES = tuple(m.name for m in methods_in_report_order("baseline"))
#: Places of the guidance arms (gradguide.bench.store.arm_name) among the methods' own
#: ``report_rank``s: after the baselines (10–99), around the proposed methods (ofa: 110).
GUIDANCE_ARM_RANKS: dict[str, int] = {
    "sgg": 100,
    "sgg-dir": 101,
    "sgg-mag": 102,
    "sgg-align": 103,
    "sgg+setfit": 104,
    "spectral": 120,
}
#: The usual order of methods and arms in the report: baselines first, unknown names last.
METHOD_ORDER = tuple(
    name
    for name, _ in sorted(
        [
            *((m.name, m.report_rank) for m in methods_in_report_order()),
            *GUIDANCE_ARM_RANKS.items(),
        ],
        key=lambda item: item[1],
    )
)
ALPHA = 0.05
CURVE_POINTS = 101


def method_rank(method: str) -> tuple[int, str]:
    """Sort key: the usual order of methods (baselines first), unknown names last."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


@dataclasses.dataclass
class Condition:
    """All runs of one model at one number of shots."""

    model: str
    shots: int
    runs: list[RunData]

    @property
    def title(self) -> str:
        return f"{self.model}, {self.shots} shots"

    def variants(self) -> list[str]:
        """Variants in report order (method order, then settings)."""
        seen = {r.variant: r for r in self.runs}
        return sorted(seen, key=lambda v: (method_rank(seen[v].method), v))

    def runs_of(self, variant: str) -> list[RunData]:
        return [r for r in self.runs if r.variant == variant]

    def tasks(self) -> list[str]:
        """Tasks in first-seen order."""
        return list(dict.fromkeys(r.task for r in self.runs))

    def common_tasks(self, variants: Iterable[str]) -> list[str]:
        """Tasks every one of ``variants`` has at least one run on."""
        wanted = list(variants)
        return [
            t
            for t in self.tasks()
            if all(any(r.task == t for r in self.runs_of(v)) for v in wanted)
        ]

    def cells(self, variant: str, metric: str) -> Cells:
        return cells(self.runs_of(variant), metric)

    def priors(self, variant: str) -> set[str]:
        """The priors the variant's directional alignment was measured against."""
        return {r.prior for r in self.runs_of(variant) if r.prior}


@dataclasses.dataclass(frozen=True)
class AlignmentColumn:
    """Directional alignment as one table may show it: against one prior for every arm shown.

    A cosine with a running mean of a run's own gradients (``ema:0.9``) and one with a fixed
    pretraining direction (``pretrain``) are different quantities, so a table shows the values of
    the arms measured against one prior, the one most of its measured arms share, and says why
    every other arm has none.
    """

    #: the prior every value shown was measured against (None: the records do not name one)
    prior: str | None
    #: the variants whose values are shown
    shown: tuple[str, ...]
    #: variant → why it has no value here
    absent: dict[str, str]

    @property
    def header(self) -> str:
        """The column's header, naming its prior."""
        return "directional alignment" + (f" (vs {self.prior})" if self.prior else "")

    def cell(self, variant: str, value: str) -> str:
        """A table cell: the value, or why it is not shown."""
        if variant in self.shown:
            return value
        return "other prior" if self.absent.get(variant, "").startswith("measured") else "n/a"

    def note(self) -> str:
        """A caption sentence: the prior shown and, grouped by reason, the arms without a value."""
        if not self.shown:
            text = "Directional alignment: no arm measured it"
        else:
            against = f"the {self.prior} prior" if self.prior else "a prior the records do not name"
            text = f"Directional alignment: the mean cosine with {against} for every arm shown"
        reasons: dict[str, list[str]] = {}
        for v, why in self.absent.items():
            reasons.setdefault(why, []).append(v)
        if reasons:
            text += "; none for " + "; ".join(
                f"{', '.join(vs)} ({why})" for why, vs in reasons.items()
            )
        return text + ". "


def alignment_column(cond: Condition, variants: Sequence[str]) -> AlignmentColumn:
    """Which arms' directional alignments one table may show side by side (AlignmentColumn)."""
    measured = {v: cond.priors(v) for v in variants if cond.cells(v, ALIGNMENT)}
    single = {v: next(iter(p)) if p else None for v, p in measured.items() if len(p) <= 1}
    counts: dict[str | None, int] = {}
    for prior in single.values():
        counts[prior] = counts.get(prior, 0) + 1
    prior = max(counts, key=lambda p: counts[p]) if counts else None  # ties: the first arm's
    shown = tuple(v for v in variants if v in single and single[v] == prior)
    absent: dict[str, str] = {}
    for v in variants:
        if v in shown:
            continue
        if v in measured and len(measured[v]) > 1:
            absent[v] = "measured against several priors: " + ", ".join(sorted(measured[v]))
        elif v in single:
            absent[v] = f"measured against {single[v] or 'an unnamed prior'}, not comparable"
        else:
            absent[v] = why_unmeasured(cond.runs_of(v))
    return AlignmentColumn(prior, shown, absent)


def why_unmeasured(runs: Sequence[RunData]) -> str:
    """Why a variant has no directional alignment: untrained, or what its records say."""
    if not any(r.dynamics for r in runs):
        return "not trained"
    notes = sorted({r.prior_note for r in runs if r.prior_note})
    return "; ".join(notes) if notes else "not recorded"


def curve_tasks(runs: Sequence[RunData]) -> list[str]:
    """The tasks a curve over shot counts averages: those run at every shot count with every seed
    the arm ran there. A task with fewer seeds at one count (a grid still running) would leave
    that count's average to those seeds alone; without such a task the rule falls back to the
    tasks run at every count."""
    shots = sorted({r.shots for r in runs})
    tasks = [
        t
        for t in dict.fromkeys(r.task for r in runs)
        if all(any(r.task == t and r.shots == k for r in runs) for k in shots)
    ]
    seeds = {k: {r.seed for r in runs if r.shots == k and r.task in tasks} for k in shots}
    full = [
        t
        for t in tasks
        if all({r.seed for r in runs if r.shots == k and r.task == t} == seeds[k] for k in shots)
    ]
    return full or tasks


def conditions(runs: Iterable[RunData]) -> list[Condition]:
    """Runs grouped by (model, shots), in model then shots order."""
    groups: dict[tuple[str, int], list[RunData]] = {}
    for r in runs:
        groups.setdefault((r.model, r.shots), []).append(r)
    return [Condition(m, k, rs) for (m, k), rs in sorted(groups.items())]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A paired comparison of two variants plus how many pairs shared their data exactly."""

    a: str
    b: str
    metric: str
    result: PairedComparison
    identical_samples: int

    @property
    def better_and_significant(self) -> bool:
        """a beats b on average and the paired t-test says so at ALPHA."""
        p = self.result.ttest.p
        return self.result.mean_diff > 0 and math.isfinite(p) and p < ALPHA


def compare(
    cond: Condition,
    a: str,
    b: str,
    metric: str = METRIC,
    tasks: Sequence[str] | None = None,
) -> Comparison | None:
    """Paired comparison of variant a against b on their common (task, seed) cells.

    With ``tasks`` only those tasks' cells count (the tasks an average was taken over).
    """
    ca, cb = cond.cells(a, metric), cond.cells(b, metric)
    if tasks is not None:
        ca = {k: v for k, v in ca.items() if k[0] in tasks}
        cb = {k: v for k, v in cb.items() if k[0] in tasks}
    result = paired_compare(ca, cb)
    if result is None:
        return None
    ra = {(r.task, r.seed): r for r in cond.runs_of(a)}
    rb = {(r.task, r.seed): r for r in cond.runs_of(b)}
    same = sum(
        1
        for k in set(ca) & set(cb)
        if ra[k].train_ids == rb[k].train_ids and ra[k].eval_digest == rb[k].eval_digest
    )
    return Comparison(a, b, metric, result, same)


def average(cond: Condition, variant: str, metric: str, tasks: Sequence[str]) -> Interval | None:
    """Mean over seeds of the across-task average (the papers' "average accuracy")."""
    return across_tasks(cond.cells(variant, metric), tasks)


def mean_curve(runs: Iterable[RunData], name: str) -> tuple[list[float], list[float]] | None:
    """A curve averaged over runs on a common progress axis (0–100 % of training steps)."""
    grid = np.linspace(0.0, 1.0, CURVE_POINTS)
    stacked = []
    for r in runs:
        values = r.curves.get(name) or []
        known = [(i, v) for i, v in enumerate(values) if v is not None]
        if len(values) < 2 or len(known) < 2:
            continue
        xs = np.array([i / (len(values) - 1) for i, _ in known])
        ys = np.array([v for _, v in known])
        stacked.append(np.interp(grid, xs, ys))
    if not stacked:
        return None
    mean = np.mean(np.stack(stacked), axis=0)
    return [float(x * 100) for x in grid], [float(y) for y in mean]


# --------------------------------------------------------------------------------------------
# Formatting


def pct(x: float | None) -> str:
    """A 0–1 accuracy as a percentage with one decimal (``n/a`` when missing)."""
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def fmt_interval(iv: Interval | None, *, percent: bool) -> str:
    """``61.2 ± 3.4`` (percent) or ``0.781 ± 0.020``; one value when n = 1."""
    if iv is None:
        return "n/a"
    scale, digits = (100.0, 1) if percent else (1.0, 3)
    mean = f"{scale * iv.mean:.{digits}f}"
    if iv.n < 2 or not math.isfinite(iv.half_width):
        return f"{mean} (n=1)"
    return f"{mean} ± {scale * iv.half_width:.{digits}f}"


def fmt_p(p: float) -> str:
    """A p-value to three decimals, ``<0.001``, or ``n/a``."""
    if not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_diff(x: float, *, percent: bool) -> str:
    """A signed difference (percentage points or raw)."""
    return f"{100 * x:+.1f} pp" if percent else f"{x:+.3f}"


def half_width(iv: Interval, scale: float) -> float | None:
    """A figure's error bar: ``scale`` × the interval's half width (None when n < 2)."""
    return scale * iv.half_width if iv.n >= 2 and math.isfinite(iv.half_width) else None


def upper_first(text: str) -> str:
    """Capitalise a label's first letter only (``str.capitalize`` would lower tr(P H P^T))."""
    return text[:1].upper() + text[1:]
