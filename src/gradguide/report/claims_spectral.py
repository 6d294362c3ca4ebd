"""The spectral parameter coordination paper's claims (arXiv 2504.19583), checked against the runs.

Arms as stored (gradguide.bench.store.arm_name): LoRA trained with guidance ``spectral`` (the
regulariser and the filter), ``spectral-reg`` (the regulariser alone) and ``spectral-filter``
(the filter alone), each against plain ``lora`` in the same condition; one line per arm that ran.
Only the abstract and reviews of the paper could be read (../shared/papers/spectral-notes.md):
the paper column states what it reports, qualitatively; every number a verdict cites comes from
the store and the run records. Rules, printed in the report as ``RULES`` (the BETTER rule of
gradguide.report.verdict):

- Accuracy: the arm beats LoRA on accuracy (paired over (task, seed) cells); the evidence also
  gives each task separately.
- Convergence: the arm's normalised loss AUC (gradguide.metrics.normalised_loss_auc; recorded in
  the run's dynamics, else computed from its loss curve) is lower than LoRA's. The steps to the
  loss threshold are evidence only: runs that never reach the threshold have none, so they do
  not pair on every cell.
"""

from __future__ import annotations

from gradguide.bench.stats import paired_compare
from gradguide.report.analysis import METRIC, Condition, conditions, fmt_p
from gradguide.report.data import BenchData, RunData
from gradguide.report.verdict import (
    ClaimResult,
    Measure,
    arm_conditions,
    metric_value,
    run_keys,
    untestable,
    versus,
)

LORA = "lora"
#: The arms, the full method first, each with what it adds to LoRA.
ARMS = {
    "spectral": "regulariser and filter",
    "spectral-reg": "regulariser only",
    "spectral-filter": "filter only",
}
NOT_RECOVERED = "reported qualitatively; datasets, models and numbers not recovered"
RULES = (
    "Spectral accuracy: for each arm (spectral, spectral-reg, spectral-filter) reproduced when "
    "its mean accuracy beats LoRA's with a paired t-test p < 0.05 over matched (task, seed) "
    "cells; not reproduced when it does not; not testable without LoRA runs or 2 matched pairs. "
    "Per-task numbers are evidence.",
    "Spectral convergence: the same with the normalised loss AUC, lower is better; steps to the "
    "loss threshold are evidence only.",
)


ACCURACY = Measure(METRIC, metric_value(METRIC), percent=True)
LOSS_AUC = Measure("normalised loss AUC", RunData.loss_auc, higher_is_better=False)
STEPS = Measure("steps to the loss threshold", RunData.steps_to_loss_threshold, unit="steps")


def _steps_evidence(cond: Condition, arm: str) -> str:
    """How many runs reached the loss threshold, when, and the paired difference where both did."""
    shown = []
    tasks = cond.common_tasks((arm, LORA))  # LoRA's runs on other tasks would skew its mean
    for v in (arm, LORA):
        runs = [r for r in cond.runs_of(v) if r.task in tasks]
        trained = [r for r in runs if r.loss_auc() is not None]
        reached = [s for r in trained if (s := r.steps_to_loss_threshold()) is not None]
        mean = f"{sum(reached) / len(reached):.1f}" if reached else "n/a"
        shown.append(f"{v} {mean} ({len(reached)}/{len(trained)} runs reached it)")
    text = "steps to the loss threshold (evidence only): " + ", ".join(shown)
    c = paired_compare(STEPS.cells(cond.runs_of(arm)), STEPS.cells(cond.runs_of(LORA)))
    if c is not None:
        text += (
            f"; paired over the {c.n} cells where both reached it: {STEPS.diff(c.mean_diff)}, "
            f"t-test p {fmt_p(c.ttest.p)}"
        )
    return text


def _claims(
    data: BenchData, what: str, paper: str, measure: Measure, per_task: bool, steps: bool
) -> list[ClaimResult]:
    conds = conditions(data.runs)
    out = []
    for arm, adds in ARMS.items():
        claim = f"LoRA + {arm} ({adds}) {what}"
        for cond in arm_conditions(conds, arm):
            j = versus(cond, arm, (LORA,), measure, per_task=per_task)
            evidence = j.evidence
            if steps and cond.runs_of(LORA):
                evidence += ". " + _steps_evidence(cond, arm)
            runs = run_keys(cond, (arm, LORA), j.tasks)
            out.append(
                ClaimResult(
                    claim,
                    paper,
                    cond.title,
                    j.status,
                    evidence,
                    j.headline,
                    runs,
                    measure.name,
                    why=j.why,
                )
            )
    if not out:
        out.append(
            untestable(
                f"LoRA + spectral coordination {what}",
                paper,
                "all runs",
                f"no {', '.join(ARMS)} runs are stored",
            )
        )
    return out


def evaluate(data: BenchData) -> list[ClaimResult]:
    """Every claim of the spectral coordination paper, checked against the stored runs."""
    return [
        *_claims(
            data,
            "beats LoRA on accuracy",
            f"fine-tuning comparisons and few-shot generalisation: better than the baselines; "
            f"{NOT_RECOVERED}",
            ACCURACY,
            per_task=True,
            steps=False,
        ),
        *_claims(
            data,
            "converges faster than LoRA (loss AUC)",
            f"convergence speed: faster than the baselines; {NOT_RECOVERED}",
            LOSS_AUC,
            per_task=False,
            steps=True,
        ),
    ]


__all__ = ["ARMS", "RULES", "evaluate"]
