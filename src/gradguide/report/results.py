"""The results tables (Table-1 analogue): accuracy per task and averaged, with gradient
stability and directional alignment, one table per condition.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradguide.bench.stats import per_task
from gradguide.report.analysis import (
    ALIGNMENT,
    METRIC,
    STABILITY,
    Condition,
    alignment_column,
    average,
    conditions,
    fmt_interval,
    pct,
)
from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Table
from gradguide.report.sanity import Sanity


def _eval_sizes(cond: Condition) -> str:
    sizes: dict[str, int] = {}
    for r in cond.runs:
        if r.eval_size is not None:
            sizes.setdefault(r.task, r.eval_size)
    return ", ".join(f"{t} {n}" for t, n in sizes.items())


def _average_tasks(cond: Condition, variants: list[str]) -> tuple[list[str], str]:
    """The tasks to average over: those more than half of the methods ran, so that neither one
    method run on fewer tasks (a baseline from another grid) shrinks every average nor one run on
    more tasks (domain sets) leaves the others without one; and the methods left without an
    average, with the tasks they ran."""
    ran = {v: set(cond.common_tasks([v])) for v in variants}
    tasks = [t for t in cond.tasks() if 2 * sum(t in r for r in ran.values()) > len(variants)]
    short = [v for v in variants if not set(tasks) <= ran[v]]
    partial = ", ".join(f"{v} ({', '.join(t for t in cond.tasks() if t in ran[v])})" for v in short)
    return tasks, partial


def _failed_arms(cond: Condition, sanity: Sanity) -> str:
    """A caption sentence naming the arms with runs that failed a sanity check ("" if none)."""
    failed = sanity.failures()
    arms = []
    for v in cond.variants():
        runs = cond.runs_of(v)
        bad = sum(r.key in failed for r in runs)
        if bad:
            arms.append(f"{v} ({bad} of {len(runs)} runs)")
    if not arms:
        return ""
    return f" Runs that failed a sanity check (see Sanity checks): {', '.join(arms)}."


def majority_floors(cond: Condition, tasks: Sequence[str]) -> dict[str, float]:
    """Per task, the accuracy of always answering the evaluation set's most common label (from
    the runs' records; a task whose runs hold none, or disagree, is left out)."""
    out = {}
    for t in tasks:
        found = {r.eval_majority for r in cond.runs if r.task == t and r.eval_majority is not None}
        if len(found) == 1:
            out[t] = found.pop()
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known and len(known) == len(values) else None


def results_section(doc: Doc, data: BenchData, sanity: Sanity) -> None:
    conds = conditions(data.runs)
    if not conds:
        return
    doc.add(Heading("Results (Table-1 analogue)"))
    for cond in conds:
        variants = cond.variants()
        tasks = cond.tasks()
        avg_tasks, partial = _average_tasks(cond, variants)
        column = alignment_column(cond, variants)
        rows = []
        for v in variants:
            by_task = per_task(cond.cells(v, METRIC))
            avg = average(cond, v, METRIC, avg_tasks)
            seeds = len({r.seed for r in cond.runs_of(v)})
            rows.append(
                (
                    v,
                    *(fmt_interval(by_task.get(t), percent=True) for t in tasks),
                    fmt_interval(avg, percent=True),
                    str(seeds),
                    fmt_interval(average(cond, v, STABILITY, avg_tasks), percent=False),
                    column.cell(
                        v, fmt_interval(average(cond, v, ALIGNMENT, avg_tasks), percent=False)
                    ),
                )
            )
        majority = majority_floors(cond, tasks)
        if majority:
            rows.append(
                (
                    "majority class",
                    *(pct(majority.get(t)) for t in tasks),
                    pct(_mean([majority.get(t) for t in avg_tasks])),
                    "",
                    "",
                    "",
                )
            )
        doc.add(Heading(cond.title, 3))
        doc.add(
            Table(
                ("method", *tasks, "avg", "seeds", "gradient stability", column.header),
                tuple(rows),
                caption=(
                    f"Accuracy (%) per task and averaged over {', '.join(avg_tasks) or 'no task'}"
                    f" (the tasks {'most methods' if partial else 'every method'} ran"
                    + (f"; no average for {partial}" if partial else "")
                    + "); gradient stability and directional alignment "
                    "averaged the same way (n/a: not recorded, e.g. untrained methods). "
                    f"{column.note()}Evaluation examples: {_eval_sizes(cond)}."
                    + (
                        " Majority class: the accuracy of always answering the evaluation "
                        "set's most common label (from runs that recorded it)."
                        if majority
                        else ""
                    )
                    + _failed_arms(cond, sanity)
                ),
            )
        )
