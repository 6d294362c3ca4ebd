"""The SGG paper's claims, each checked by code against the stored runs.

The paper's numbers below are *its* claims (arXiv 2506.00726: Table 1, Figures 2–4), the only
numbers typed here; every number a verdict cites comes from the store and the run records. The
verdict rules are stated in ``RULES`` and printed in the report:

- Table 1 claims (accuracy, gradient stability, directional alignment): **reproduced** when SGG's
  mean is higher than each of the paper's baselines (full, adapter, lora, prompt) and the
  paired t-test over matched (task, seed) cells gives p < 0.05 for each; **not reproduced** when
  some baseline that ran is not beaten that way; **not testable here** otherwise (a baseline not
  run, fewer than 2 matched pairs, the measure not recorded, no SGG runs, directional alignment
  measured against another prior than SGG's: a cosine with a running mean of the run's own
  gradients is not the cosine with a fixed pretraining direction).
- Sample size (Figure 2): the curve of SGG's task-averaged accuracy over shots is monotone (no
  consecutive step with a decrease whose paired bootstrap interval over seeds excludes 0), the
  largest consecutive gain is the one from 64 to 128 shots, and the gain from 256 to 512 is
  under 1 percentage point (plateau). Each part needs its shot counts.
- Domains (Figure 3): SGG's mean accuracy is above 75% on every domain task that was run.
- Loss (Figure 4): SGG's mean training-loss curve falls over training by at least 10% of its
  starting value, and by at least half of that total decrease within the first 20% of training
  (a curve that ends about where it started has not declined, whatever it did early).
- SGG on SetFit (not the paper's: gradguide's claim on its strongest few-shot peer, issue 18):
  SetFit with SGG on its body training (the arm stored as ``sgg+setfit``) beats SetFit alone on
  accuracy, by the BETTER rule of gradguide.report.verdict in each condition (model, shots); the
  evidence gives each task and the mean wall time per run of both arms.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from gradguide.bench.stats import mean_ci, paired_bootstrap, task_average_by_seed
from gradguide.report.analysis import (
    ALIGNMENT,
    METRIC,
    STABILITY,
    Comparison,
    average,
    compare,
    conditions,
    curve_tasks,
    fmt_diff,
    fmt_interval,
    fmt_p,
    mean_curve,
    why_unmeasured,
)
from gradguide.report.claims_sgg_domains import domain_claim
from gradguide.report.data import BenchData, RunData, cells
from gradguide.report.sgg_arms import (
    SGG,
    condition_label,
    planned_cells,
    ran_cells,
    sgg_conditions,
    sgg_variants,
)
from gradguide.report.verdict import (
    NOT_REPRODUCED,
    NOT_TESTABLE,
    REPRODUCED,
    ClaimResult,
    Measure,
    headline,
    metric_value,
    run_keys,
    untestable,
    versus,
)

PAPER_BASELINES = ("full", "adapter", "lora", "prompt")
#: The paper's Table 1 (accuracy as a fraction; stability and alignment as printed).
PAPER_TABLE1: dict[str, dict[str, float]] = {
    METRIC: {"full": 0.743, "adapter": 0.765, "lora": 0.772, "prompt": 0.780, SGG: 0.801},
    STABILITY: {"full": 0.61, "adapter": 0.67, "lora": 0.69, "prompt": 0.71, SGG: 0.78},
    ALIGNMENT: {"full": 0.52, "adapter": 0.58, "lora": 0.60, "prompt": 0.61, SGG: 0.73},
}
PLATEAU_GAIN = 0.01
STEEP_FROM, STEEP_TO = 64, 128
PLATEAU_FROM, PLATEAU_TO = 256, 512
EARLY_FRACTION = 0.2
EARLY_SHARE = 0.5
#: the least total decrease of the loss curve, as a fraction of its start, that counts as a decline
MIN_DECREASE = 0.1
RULES = (
    "Table 1 claims: reproduced when SGG's mean beats each paper baseline (full, adapter, lora, "
    "prompt) with a paired t-test p < 0.05 over matched (task, seed) cells; not reproduced when "
    "one that ran is not beaten that way; not testable otherwise (a baseline not run, under 2 "
    "pairs, the measure not recorded, alignment measured against another prior than SGG's).",
    "Sample size: monotone (no decrease whose paired bootstrap interval over seeds excludes 0), "
    "largest consecutive gain from 64 to 128 shots, gain from 256 to 512 under 1 point.",
    "Domains: SGG's mean accuracy above 75% on every domain task run; not testable while SGG "
    "has not run a (task, seed) cell its grid asks for that LoRA ran.",
    "Loss: SGG's mean loss curve ends at least 10% below its start and loses at least half of "
    "that decrease in the first 20% of training.",
    "SGG on SetFit (gradguide's claim, not the paper's): reproduced when SetFit with SGG "
    "(sgg+setfit) beats SetFit's mean accuracy with a paired t-test p < 0.05 over matched (task, "
    "seed) cells of a condition; not reproduced when it does not; not testable without SetFit "
    "runs or 2 matched pairs. Per-task numbers and wall time per run are evidence.",
)
SETFIT = "setfit"
#: SetFit trained with SGG, as the store names it (gradguide.bench.store.arm_name)
SGG_SETFIT = "sgg+setfit"
ACCURACY = Measure(METRIC, metric_value(METRIC), percent=True)


def _paper_range(metric: str, percent: bool) -> str:
    table = PAPER_TABLE1[metric]
    base = [table[b] for b in PAPER_BASELINES]
    if percent:
        return f"{100 * table[SGG]:.1f}% vs {100 * min(base):.1f}–{100 * max(base):.1f}%"
    return f"{table[SGG]:.2f} vs {min(base):.2f}–{max(base):.2f}"


def table1_claim(data: BenchData, metric: str, claim: str) -> list[ClaimResult]:
    """SGG against the paper's baselines on ``metric`` in every condition that has SGG runs."""
    percent = metric == METRIC
    paper = _paper_range(metric, percent)
    conds = sgg_conditions(data)
    if not conds:
        return [untestable(claim, paper, "all runs", "no sgg runs are stored", measure=metric)]
    with_baselines = [c for c in conds if any(b in c.variants() for b in PAPER_BASELINES)]
    conds = with_baselines or conds[:1]
    out = []
    measure = Measure(metric, metric_value(metric), percent=percent)
    for cond, sgg in ((c, v) for c in conds for v in sgg_variants(c)):
        variants = cond.variants()
        baselines = [b for b in PAPER_BASELINES if b in variants]
        tasks = cond.common_tasks([sgg, *baselines])
        runs = run_keys(cond, [sgg, *baselines], tasks)
        where = condition_label(cond, sgg)
        if not cond.cells(sgg, metric):
            why = f"no sgg run records {metric}"
            out.append(untestable(claim, paper, where, why, runs=runs, measure=metric))
            continue
        if not baselines:
            why = "no run of " + ", ".join(PAPER_BASELINES) + " to compare with"
            out.append(untestable(claim, paper, where, why, runs=runs, measure=metric))
            continue
        means = [
            f"{v} {fmt_interval(average(cond, v, metric, tasks), percent=percent)}"
            for v in [sgg, *baselines]
        ]
        # alignments measured against different priors are different quantities
        sgg_priors = cond.priors(sgg)
        other_prior = [
            b
            for b in baselines
            if metric == ALIGNMENT and cond.priors(b) not in (set(), sgg_priors)
        ]
        comparisons: list[tuple[str, Comparison | None]] = [
            (b, None if b in other_prior else compare(cond, sgg, b, metric, tasks))
            for b in baselines
        ]
        testable = [(b, c) for b, c in comparisons if c is not None and c.result.n >= 2]
        unpaired = [b for b, c in comparisons if (b, c) not in testable and b not in other_prior]
        failed = [b for b, c in testable if c is not None and not c.better_and_significant]
        missing = [b for b in PAPER_BASELINES if b not in variants]
        # an arm still running (a tuned weight's grid) would be averaged over a subset of tasks
        planned = planned_cells(data, cond.runs_of(sgg))
        unrun = sorted((ran_cells(cond, baselines) & planned) - ran_cells(cond, [sgg]))
        if unrun:
            status = NOT_TESTABLE
        elif failed:
            status = NOT_REPRODUCED
        elif unpaired or missing or other_prior:
            status = NOT_TESTABLE
        else:
            status = REPRODUCED
        tests = "; ".join(
            f"vs {b}: {fmt_diff(c.result.mean_diff, percent=percent)}, t-test p "
            f"{fmt_p(c.result.ttest.p)}, Wilcoxon p {fmt_p(c.result.wilcoxon.p)}, "
            f"{c.result.n} pairs"
            for b, c in testable
            if c is not None
        )
        parts = [
            f"mean over seeds of the average over {len(tasks)} tasks: " + ", ".join(means),
            tests or "no baseline with 2 matched pairs",
        ]
        reasons = []  # why a condition has no verdict, each also part of the evidence
        unrecorded = [b for b in unpaired if not cond.cells(b, metric)]
        if unrecorded:
            reasons.append(f"no run of {', '.join(unrecorded)} records {metric}")
            if metric == ALIGNMENT:
                parts.append(
                    reasons[-1]
                    + " ("
                    + "; ".join(f"{b}: {why_unmeasured(cond.runs_of(b))}" for b in unrecorded)
                    + ")"
                )
            else:
                parts.append(reasons[-1])
        few = [b for b in unpaired if b not in unrecorded]
        if few:
            reasons.append("too few matched pairs against " + ", ".join(few))
            parts.append(reasons[-1])
        if other_prior:
            reasons.append("alignment of " + ", ".join(other_prior) + " against another prior")
            parts.append(
                "measured against another prior than sgg's ("
                + ", ".join(sorted(sgg_priors))
                + "): "
                + ", ".join(f"{b} ({', '.join(sorted(cond.priors(b)))})" for b in other_prior)
            )
        if missing:
            reasons.append("not run: " + ", ".join(missing))
            parts.append(reasons[-1])
        if unrun:
            cells_text = ", ".join(f"{t} seed {seed}" for t, seed in unrun)
            reasons.append(f"{sgg} has not yet run {len(unrun)} cells its grid asks for")
            parts.append(
                f"{sgg} has not run {cells_text}, which its grid asks for and its baselines ran"
            )
        top = (
            "" if unrun else headline({b: c.result for b, c in testable if c is not None}, measure)
        )
        why = "; ".join(reasons) if status == NOT_TESTABLE else ""
        out.append(
            ClaimResult(claim, paper, where, status, ". ".join(parts), top, runs, metric, why=why)
        )
    # every condition with a baseline keeps its own row and reason: merged, one condition's
    # sanity failure would mark the others and all but the first reason would be lost
    return out


def _seed_averages(runs: Sequence[RunData], tasks: Sequence[str]) -> dict[int, float]:
    return task_average_by_seed(cells(runs, METRIC), tasks)


def sample_size_claim(data: BenchData) -> list[ClaimResult]:
    """Figure 2: monotone curve, steepest between 64 and 128 shots, plateau beyond 256."""
    claim = "Accuracy rises monotonically with shots, most from 64 to 128, plateau beyond 256"
    paper = "Figure 2 (16–512 shots)"
    sgg_runs = [r for r in data.runs if r.variant == SGG]
    out = []
    for model in sorted({r.model for r in sgg_runs}):
        runs = [r for r in sgg_runs if r.model == model]
        shots = sorted({r.shots for r in runs})
        if len(shots) < 2:
            continue
        by_shots = {k: [r for r in runs if r.shots == k] for k in shots}
        tasks = curve_tasks(runs)
        seeds = {k: _seed_averages(by_shots[k], tasks) for k in shots}
        shots = [k for k in shots if seeds[k]]
        if len(shots) < 2:
            continue
        means = {k: sum(seeds[k].values()) / len(seeds[k]) for k in shots}
        curve = ", ".join(
            f"{k}: {fmt_interval(mean_ci(list(seeds[k].values())), percent=True)}" for k in shots
        )
        verdicts: list[bool | None] = []
        notes = []
        drops = []
        for lo, hi in itertools.pairwise(shots):
            common = sorted(set(seeds[lo]) & set(seeds[hi]))
            if means[hi] < means[lo] and common:
                boot = paired_bootstrap(
                    [seeds[hi][s] for s in common], [seeds[lo][s] for s in common]
                )
                if boot.high < 0:
                    drops.append(f"{lo}→{hi} ({fmt_diff(boot.mean_diff, percent=True)})")
        verdicts.append(not drops)
        notes.append(
            "monotone: " + ("yes" if not drops else "no, significant drop " + ", ".join(drops))
        )
        gains = {(lo, hi): means[hi] - means[lo] for lo, hi in itertools.pairwise(shots)}
        if (STEEP_FROM, STEEP_TO) in gains and len(gains) >= 2:
            best = max(gains, key=lambda g: gains[g])
            steep = best == (STEEP_FROM, STEEP_TO)
            verdicts.append(steep)
            notes.append(
                f"gain 64→128 {fmt_diff(gains[(STEEP_FROM, STEEP_TO)], percent=True)}, largest "
                f"gain {best[0]}→{best[1]} {fmt_diff(gains[best], percent=True)}"
            )
        else:
            verdicts.append(None)
            notes.append("steepest 64→128: not testable (needs 64, 128 and another step)")
        if (PLATEAU_FROM, PLATEAU_TO) in gains:
            gain = gains[(PLATEAU_FROM, PLATEAU_TO)]
            verdicts.append(gain < PLATEAU_GAIN)
            notes.append(f"gain 256→512 {fmt_diff(gain, percent=True)} (plateau if < +1.0 pp)")
        else:
            verdicts.append(None)
            notes.append("plateau: not testable (needs 256 and 512 shots)")
        if any(v is False for v in verdicts):
            status = NOT_REPRODUCED
        elif all(v is True for v in verdicts):
            status = REPRODUCED
        else:
            status = NOT_TESTABLE
        why = "; ".join(n for n in notes if "not testable" in n) if status == NOT_TESTABLE else ""
        evidence = (
            f"sgg accuracy averaged over {', '.join(tasks)} (mean ± 95% interval over seeds): "
            f"{curve}. " + "; ".join(notes)
        )
        keys = tuple(r.key for r in runs if r.task in tasks and r.shots in shots)
        top = _gain_headline(seeds[shots[0]], seeds[shots[-1]], shots[0], shots[-1])
        out.append(ClaimResult(claim, paper, model, status, evidence, top, keys, METRIC, why=why))
    if not out:
        out.append(untestable(claim, paper, "all runs", "no sgg runs at 2 or more shots"))
    return out


def _gain_headline(low: dict[int, float], high: dict[int, float], lo: int, hi: int) -> str:
    """The accuracy gain from ``lo`` to ``hi`` shots with its 95% paired bootstrap interval over
    the seeds both have ("" with fewer than 2)."""
    common = sorted(set(low) & set(high))
    if len(common) < 2:
        return ""
    boot = paired_bootstrap([high[s] for s in common], [low[s] for s in common])
    return (
        f"{fmt_diff(boot.mean_diff, percent=True)} [{fmt_diff(boot.low, percent=True)}, "
        f"{fmt_diff(boot.high, percent=True)}] from {lo} to {hi} shots"
    )


def loss_claim(data: BenchData) -> list[ClaimResult]:
    """Figure 4: the loss falls (10% of its start or more), fast early (half of it in the first
    20%)."""
    claim = "Training loss declines rapidly early in training"
    paper = "Figure 4 (rapid decline in the first 20 of ~100 epochs)"
    out = []
    for cond, variant in ((c, v) for c in sgg_conditions(data) for v in sgg_variants(c)):
        runs = cond.runs_of(variant)
        curve = mean_curve(runs, "loss")
        if curve is None:
            continue
        xs, ys = curve
        n_runs = sum(1 for r in runs if len(r.curves.get("loss") or []) >= 2)
        start = _mean([y for x, y in zip(xs, ys, strict=True) if x <= 5.0])
        early = _mean(
            [y for x, y in zip(xs, ys, strict=True) if abs(x - 100 * EARLY_FRACTION) <= 2.5]
        )
        end = _mean([y for x, y in zip(xs, ys, strict=True) if x >= 90.0])
        total, first = start - end, start - early
        declined = total >= MIN_DECREASE * abs(start)
        ok = declined and first >= EARLY_SHARE * total
        share = f"{100 * first / total:.0f}%" if total > 0 else "n/a"
        evidence = (
            f"mean sgg loss over {n_runs} runs: {start:.3f} at the start, {early:.3f} at 20% of "
            f"training, {end:.3f} at the end; share of the decrease in the first 20%: {share}"
        )
        if not declined:
            change = 100 * (end - start) / abs(start) if start else math.nan
            evidence += (
                f"; over training the loss changes by {change:+.1f}% of its start, short of the "
                f"{100 * MIN_DECREASE:.0f}% fall that counts as a decline"
            )
        top = (
            f"{100 * (end - start) / abs(start):+.1f}% of the starting loss, {share} of it in the "
            "first 20% (mean curve; no interval)"
            if start
            else ""
        )
        status = REPRODUCED if ok else NOT_REPRODUCED
        keys = tuple(r.key for r in runs)
        where = condition_label(cond, variant)
        out.append(ClaimResult(claim, paper, where, status, evidence, top, keys, "loss"))
    if not out:
        out.append(untestable(claim, paper, "all runs", "no sgg runs with loss curves"))
    return out


def setfit_claim(data: BenchData) -> list[ClaimResult]:
    """SGG on SetFit's body training beats SetFit alone (paired accuracy, per condition and per
    variant of the guided arm: each swept weight gets its own verdict, never a pooled one)."""
    claim = "SGG improves on SetFit (SetFit with SGG on its body training vs SetFit)"
    paper = "not in the paper: gradguide's claim on its strongest few-shot peer (issue 18)"
    out = []
    for cond in conditions(data.runs):
        guided = [v for v in cond.variants() if cond.runs_of(v)[0].method == SGG_SETFIT]
        for variant in guided:
            j = versus(cond, variant, (SETFIT,), ACCURACY, per_task=True)
            evidence = j.evidence
            walls = []
            for arm in (variant, SETFIT):
                times = [r.wall_s for r in cond.runs_of(arm) if r.wall_s]
                if times:
                    walls.append(f"{arm} {sum(times) / len(times):.0f} s ({len(times)} runs)")
            if walls:
                evidence += ". Mean wall time per run: " + ", ".join(walls)
            runs = run_keys(cond, (variant, SETFIT), j.tasks)
            where = condition_label(cond, variant)
            out.append(
                ClaimResult(
                    claim, paper, where, j.status, evidence, j.headline, runs, METRIC, why=j.why
                )
            )
    if not out:
        out.append(untestable(claim, paper, "all runs", f"no {SGG_SETFIT} runs are stored"))
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def evaluate(data: BenchData) -> list[ClaimResult]:
    """Every claim of the SGG paper, checked against the stored runs."""
    return [
        *table1_claim(data, METRIC, "SGG has the highest average accuracy (Table 1)"),
        *table1_claim(data, STABILITY, "SGG has the highest gradient stability (Table 1)"),
        *table1_claim(data, ALIGNMENT, "SGG has the highest directional alignment (Table 1)"),
        *sample_size_claim(data),
        *domain_claim(data),
        *loss_claim(data),
        *setfit_claim(data),
    ]


__all__ = ["PAPER_TABLE1", "RULES", "evaluate", "setfit_claim"]
