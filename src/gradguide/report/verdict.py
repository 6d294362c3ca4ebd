"""What a checked claim is (a verdict and its evidence) and the paired judgement claims share.

``versus`` judges one arm of a condition against baselines on any per-run measure (a metric, a
dynamics value, a number read from the per-layer diagnostics), paired on (task, seed) cells as
every comparison of the report is (gradguide.report.analysis): the across-task average per seed,
then over seeds, for the means shown; the paired t-test, Wilcoxon test and bootstrap over the
matched cells for the decision. Two rules:

- ``BETTER``: **reproduced** when the arm improves on each baseline (higher, or lower for a
  lower-is-better measure) with a paired t-test p < 0.05; **not reproduced** when a baseline with
  at least 2 matched pairs is not improved on that way;
- ``NOT_WORSE``: **reproduced** when, against each baseline, the 95% paired bootstrap interval of
  the difference does not lie entirely on the worse side of 0 (the sample-size claim's rule for
  "no decrease"); **not reproduced** when it does for some baseline.

Either way the verdict is **not testable here** when nothing contradicts the claim but something
needed is missing: the arm or a baseline did not run, recorded no value of the measure, or has
fewer than 2 matched pairs.

A claim whose runs include one that failed a sanity check (gradguide.report.sanity: a guided
gradient far from the task gradient, a penalty or clipping that dominates the update, alignments
against different priors) gets no verdict: ``withhold`` marks it **not testable: failed sanity
check** and names the runs. Each result carries the keys of the runs it was decided from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from gradguide.bench.stats import Interval, PairedComparison, across_tasks, mean_ci, paired_compare
from gradguide.report.analysis import ALPHA, Condition, fmt_interval, fmt_p
from gradguide.report.data import Cells, RunData

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable here"
FAILED_SANITY = "not testable: failed sanity check"
BETTER = "better"
NOT_WORSE = "not worse"

RunValue = Callable[[RunData], float | None]


@dataclasses.dataclass(frozen=True)
class ClaimResult:
    """One claim checked in one setting: the verdict and the numbers behind it."""

    claim: str
    paper: str
    where: str
    status: str
    evidence: str
    #: the headline difference with its 95% interval, e.g. "-2.1 pp [-3.8, -0.5] vs lora"
    headline: str = ""
    #: the keys of the runs the verdict was decided from
    runs: tuple[str, ...] = ()
    #: the measure it compares (a metric or dynamics name, e.g. directional_alignment)
    measure: str = ""
    #: why there is no verdict, in a few words for the verdict table ("" when there is one)
    why: str = ""


def untestable(
    claim: str,
    paper: str,
    where: str,
    reason: str,
    *,
    runs: tuple[str, ...] = (),
    measure: str = "",
) -> ClaimResult:
    """A claim with no verdict because something it needs is missing; ``reason`` is both its
    evidence and the few words the verdict table shows."""
    return ClaimResult(
        claim, paper, where, NOT_TESTABLE, reason, runs=runs, measure=measure, why=reason
    )


class Judgement(NamedTuple):
    """What ``versus`` decides: the status, the numbers behind it, the headline difference."""

    status: str
    evidence: str
    headline: str
    #: the tasks it was decided on (empty: none; then every run of the arms counts)
    tasks: tuple[str, ...] = ()
    #: why there is no verdict, in a few words ("" when there is one)
    why: str = ""


@dataclasses.dataclass(frozen=True)
class RunFailure:
    """A run that failed a sanity check: how to name it and which checks it failed."""

    arm: str
    task: str
    seed: int
    checks: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Measure:
    """What a claim compares: a per-run value, its name, its direction and how it is shown."""

    name: str
    value: RunValue
    higher_is_better: bool = True
    percent: bool = False
    unit: str = ""

    def cells(self, runs: Iterable[RunData]) -> Cells:
        """(task, seed) → the run's finite value of this measure, for the runs that have one."""
        out: Cells = {}
        for r in runs:
            v = self.value(r)
            if v is not None and math.isfinite(v):
                out[(r.task, r.seed)] = float(v)
        return out

    def interval(self, iv: Interval | None) -> str:
        """A mean ± 95% half width in this measure's format."""
        if self.percent or iv is None:
            return fmt_interval(iv, percent=self.percent)
        if iv.n < 2 or not math.isfinite(iv.half_width):
            return f"{iv.mean:#.4g} (n=1)"
        return f"{iv.mean:#.4g} ± {iv.half_width:#.2g}"

    def diff(self, x: float) -> str:
        """A signed difference (percentage points for accuracies)."""
        if self.percent:
            return f"{100 * x:+.1f} pp"
        return f"{x:+#.3g}" + (f" {self.unit}" if self.unit else "")

    def improves(self, c: PairedComparison) -> bool:
        """Arm better than baseline on average with a paired t-test p < ALPHA."""
        sign = 1.0 if self.higher_is_better else -1.0
        p = c.ttest.p
        return sign * c.mean_diff > 0 and math.isfinite(p) and p < ALPHA

    def worse_for_sure(self, c: PairedComparison) -> bool:
        """The paired bootstrap interval of arm − baseline lies entirely on the worse side of 0."""
        boot = c.bootstrap
        return boot.high < 0 if self.higher_is_better else boot.low > 0


def metric_value(name: str) -> RunValue:
    """A run's metric or dynamics value (RunData.value) as a measure's per-run value."""
    return lambda r: r.value(name)


def _only(values: Cells, tasks: Sequence[str]) -> Cells:
    return {k: v for k, v in values.items() if k[0] in tasks}


def _tests(c: PairedComparison, measure: Measure, rule: str) -> str:
    text = f"{measure.diff(c.mean_diff)}, "
    if rule == NOT_WORSE:
        boot = c.bootstrap
        text += f"95% bootstrap interval [{measure.diff(boot.low)}, {measure.diff(boot.high)}], "
    return text + f"t-test p {fmt_p(c.ttest.p)}, Wilcoxon p {fmt_p(c.wilcoxon.p)}, {c.n} pairs"


def _per_task(
    arm: str, own: Cells, others: dict[str, Cells], tasks: Sequence[str], measure: Measure
) -> str:
    """Per task: the arm's and each baseline's mean over seeds, and the paired difference."""
    parts = []
    ahead = 0
    sign = 1.0 if measure.higher_is_better else -1.0
    for task in tasks:
        mine = _only(own, [task])
        shown = [f"{arm} {measure.interval(mean_ci(list(mine.values())))}"]
        wins = True
        for b, theirs in others.items():
            c = paired_compare(mine, _only(theirs, [task]))
            if c is None:
                shown.append(f"{b}: no matched seed")
                wins = False
                continue
            wins = wins and sign * c.mean_diff > 0
            shown.append(
                f"{b} {measure.interval(mean_ci(list(_only(theirs, [task]).values())))} "
                f"({measure.diff(c.mean_diff)}, p {fmt_p(c.ttest.p)}, {c.n} seeds)"
            )
        ahead += wins
        parts.append(f"{task}: " + ", ".join(shown))
    better = "higher" if measure.higher_is_better else "lower"
    return (
        f"per task (mean ± 95% interval over seeds; paired difference): {'; '.join(parts)}. "
        f"{arm} {better} than every baseline on {ahead} of {len(tasks)} tasks"
    )


def versus(
    cond: Condition,
    arm: str,
    baselines: Sequence[str],
    measure: Measure,
    *,
    rule: str = BETTER,
    per_task: bool = False,
) -> Judgement:
    """The verdict (a status), evidence and headline for ``arm`` against ``baselines`` in one
    condition; the headline is the difference from the baseline the arm does least well against,
    with its 95% paired bootstrap interval."""
    own = measure.cells(cond.runs_of(arm))
    if not own:
        why = f"no {arm} run records {measure.name}"
        return Judgement(NOT_TESTABLE, why, "", why=why)
    missing = [b for b in baselines if not cond.runs_of(b)]
    recorded = {b: measure.cells(cond.runs_of(b)) for b in baselines if b not in missing}
    unrecorded = [b for b, v in recorded.items() if not v]
    others = {b: v for b, v in recorded.items() if v}
    notes = []
    if missing:
        notes.append("not run: " + ", ".join(missing))
    if unrecorded:
        notes.append(f"no run of {', '.join(unrecorded)} records {measure.name}")
    if not others:
        return Judgement(NOT_TESTABLE, ". ".join(notes), "", why="; ".join(notes))
    tasks = [
        t
        for t in dict.fromkeys(k[0] for k in own)
        if all(any(k[0] == t for k in v) for v in others.values())
    ]
    if not tasks:
        reasons = [f"no task on which {arm} and the baselines all ran", *notes]
        return Judgement(NOT_TESTABLE, ". ".join(reasons), "", why="; ".join(reasons))
    own = _only(own, tasks)
    others = {b: _only(v, tasks) for b, v in others.items()}
    means = ", ".join(
        f"{v} {measure.interval(across_tasks(cells, tasks))}"
        for v, cells in [(arm, own), *others.items()]
    )
    comparisons = {b: paired_compare(own, v) for b, v in others.items()}
    testable = {b: c for b, c in comparisons.items() if c is not None and c.n >= 2}
    few = [b for b in others if b not in testable]
    if rule == BETTER:
        failed = [b for b, c in testable.items() if not measure.improves(c)]
    else:
        failed = [b for b, c in testable.items() if measure.worse_for_sure(c)]
    if failed:
        status = NOT_REPRODUCED
    elif few or missing or unrecorded:
        status = NOT_TESTABLE
    else:
        status = REPRODUCED
    tests = "; ".join(f"vs {b}: {_tests(c, measure, rule)}" for b, c in testable.items())
    parts = [
        f"{measure.name}, mean over seeds of the average over {len(tasks)} tasks "
        f"({', '.join(tasks)}): {means}",
        tests or "no baseline with 2 matched pairs",
    ]
    if per_task:
        parts.append(_per_task(arm, own, others, tasks, measure))
    too_few = ["too few matched pairs against " + ", ".join(few)] if few else []
    parts += too_few
    why = "; ".join([*notes, *too_few]) if status == NOT_TESTABLE else ""
    return Judgement(
        status, ". ".join(parts + notes), headline(testable, measure), tuple(tasks), why
    )


def headline(comparisons: Mapping[str, PairedComparison], measure: Measure) -> str:
    """The difference from the baseline the arm does least well against, with its 95% paired
    bootstrap interval ("" without a comparison)."""
    if not comparisons:
        return ""
    sign = 1.0 if measure.higher_is_better else -1.0
    b, c = min(comparisons.items(), key=lambda kv: sign * kv[1].mean_diff)
    boot = c.bootstrap
    return (
        f"{measure.diff(c.mean_diff)} [{measure.diff(boot.low)}, {measure.diff(boot.high)}] vs {b}"
    )


def run_keys(
    cond: Condition, variants: Iterable[str], tasks: Iterable[str] = ()
) -> tuple[str, ...]:
    """The keys of the runs of ``variants`` in one condition on ``tasks`` (all tasks when none
    are named): what a claim was decided from, so a sanity failure on a task it never averaged
    does not withhold it."""
    wanted, on = set(variants), set(tasks)
    return tuple(r.key for r in cond.runs if r.variant in wanted and (not on or r.task in on))


def _seeds(seeds: Iterable[int]) -> str:
    """``seeds 1–3, 5`` (consecutive runs of seeds as ranges) or ``seed 4``."""
    xs = sorted(set(seeds))
    spans: list[list[int]] = []
    for x in xs:
        if spans and x == spans[-1][-1] + 1:
            spans[-1].append(x)
        else:
            spans.append([x])
    text = ", ".join(f"{s[0]}–{s[-1]}" if len(s) > 2 else ", ".join(map(str, s)) for s in spans)
    return ("seeds " if len(xs) > 1 else "seed ") + text


def withhold(result: ClaimResult, failed: Mapping[str, RunFailure]) -> ClaimResult:
    """``result`` unchanged, or, when some of its runs failed a sanity check, marked
    FAILED_SANITY with those runs named (its numbers stay as evidence, without a verdict)."""
    bad = [failed[k] for k in result.runs if k in failed]
    if not bad:
        return result
    by_arm: dict[str, dict[str, list[int]]] = {}
    for f in bad:
        by_arm.setdefault(f.arm, {}).setdefault(f.task, []).append(f.seed)
    named = "; ".join(
        f"{arm} on " + ", ".join(f"{task} ({_seeds(s)})" for task, s in tasks.items())
        for arm, tasks in by_arm.items()
    )
    checks = ", ".join(dict.fromkeys(c for f in bad for c in f.checks))
    why = f"{len(bad)} of its runs failed: {checks}"
    evidence = (
        f"{len(bad)} of its runs failed a sanity check ({checks}; see Sanity checks): {named}. "
        f"Numbers, not a verdict: {result.evidence}"
    )
    return dataclasses.replace(
        result, status=FAILED_SANITY, evidence=evidence, headline="", why=why
    )


def arm_conditions(conds: Iterable[Condition], arm: str) -> list[Condition]:
    """The conditions in which ``arm`` (a variant) ran."""
    return [c for c in conds if arm in c.variants()]


__all__ = [
    "BETTER",
    "FAILED_SANITY",
    "NOT_REPRODUCED",
    "NOT_TESTABLE",
    "NOT_WORSE",
    "REPRODUCED",
    "ClaimResult",
    "Judgement",
    "Measure",
    "RunFailure",
    "arm_conditions",
    "headline",
    "metric_value",
    "run_keys",
    "untestable",
    "versus",
    "withhold",
]
