"""SetFit, the strongest few-shot peer, against every other arm, by number of shots.

The per-condition tables pair two arms on whatever cells they share; this section pools one task
suite's tasks on one set of cells per row, the (task, seed) cells SetFit ran, so the arms of a row
are measured on the same samples and a row reads across. Per model and suite: each arm's mean
accuracy over those cells with its paired difference from SetFit (95% t interval over the cells),
a figure of the differences against the shots, and the median wall time per run.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from gradguide.bench.stats import Cell, Interval, mean_ci
from gradguide.report import figures
from gradguide.report.analysis import METRIC, Condition, conditions, half_width
from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Paragraph, Table

SETFIT = "setfit"


def peer_rows(cond: Condition) -> tuple[list[Cell], dict[str, dict[Cell, float]], dict[str, int]]:
    """SetFit's cells in ``cond``, the accuracy per cell of every variant that ran all of them
    (SetFit first), and how many of them each other variant ran (the arms left out)."""
    own = cond.cells(SETFIT, METRIC)
    keys = sorted(own)
    arms: dict[str, dict[Cell, float]] = {}
    partial: dict[str, int] = {}
    for v in cond.variants():
        values = cond.cells(v, METRIC)
        have = sum(k in values for k in keys)
        if have == len(keys):
            arms[v] = {k: values[k] for k in keys}
        elif have:
            partial[v] = have
    arms = {SETFIT: arms.pop(SETFIT), **arms}
    return keys, arms, partial


def difference(arm: dict[Cell, float], setfit: dict[Cell, float]) -> Interval:
    """The arm's mean paired difference from SetFit over the cells, with its t interval."""
    return mean_ci([arm[k] - setfit[k] for k in setfit])


def _cell(arm: dict[Cell, float], d: Interval | None) -> str:
    """The arm's mean and, unless it is SetFit (``d`` None), its difference from SetFit."""
    mean = f"{100 * statistics.fmean(arm.values()):.1f}"
    if d is None:
        return mean
    if d.n < 2 or not math.isfinite(d.half_width):
        return f"{mean} ({100 * d.mean:+.1f})"
    return f"{mean} ({100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}])"


def _median_wall(cond: Condition, variant: str, keys: Sequence[Cell]) -> str:
    wanted = set(keys)
    walls = [
        r.wall_s
        for r in cond.runs_of(variant)
        if (r.task, r.seed) in wanted and r.wall_s is not None
    ]
    return f"{statistics.median(walls):.0f}" if walls else "n/a"


def peers_section(doc: Doc, data: BenchData) -> None:
    """The section, for every (model, task suite) where SetFit ran."""
    groups = sorted({(r.model, r.suite) for r in data.runs if r.method == SETFIT})
    if not groups:
        return
    doc.add(Heading("SetFit against the other methods"))
    doc.add(
        Paragraph(
            "Per model and task suite, one row per number of shots, on the (task, seed) cells "
            "SetFit ran: each arm's mean accuracy (%) over those cells and, in brackets, its mean "
            "paired difference from SetFit in points with a 95% t interval over the cells. An arm "
            "appears in a row only if it ran every one of the row's cells; the arms that ran some "
            "are named under the table."
        )
    )
    for model, suite in groups:
        conds = conditions(r for r in data.runs if r.model == model and r.suite == suite)
        rows = []
        for cond in conds:
            if not cond.cells(SETFIT, METRIC):
                continue
            keys, arms, partial = peer_rows(cond)
            rows.append((cond, keys, arms, partial))
        if not rows:
            continue
        columns = list(dict.fromkeys(v for _, _, arms, _ in rows for v in arms))
        accuracy, walls, left_out = [], [], []
        series: dict[str, list[tuple[float, float, float | None]]] = {}
        for cond, keys, arms, partial in rows:
            tasks = sorted({t for t, _ in keys})
            diffs = {v: difference(arms[v], arms[SETFIT]) for v in arms if v != SETFIT}
            accuracy.append(
                (
                    str(cond.shots),
                    f"{len(keys)} ({len(tasks)} task{'s' if len(tasks) != 1 else ''})",
                    *(_cell(arms[v], diffs.get(v)) if v in arms else "—" for v in columns),
                )
            )
            walls.append(
                (
                    str(cond.shots),
                    *(_median_wall(cond, v, keys) if v in arms else "—" for v in columns),
                )
            )
            for v, d in diffs.items():
                series.setdefault(v, []).append(
                    (float(cond.shots), 100 * d.mean, half_width(d, 100))
                )
            left_out += [
                f"{v} at {cond.shots} shots ({n} of {len(keys)})" for v, n in partial.items()
            ]
        title = f"{model}, {suite}"
        doc.add(Heading(title, 3))
        caption = (
            f"Accuracy (%) on {suite} tasks, {model}: mean over SetFit's (task, seed) cells; in "
            "brackets the paired difference from SetFit (points, 95% t interval)."
        )
        if left_out:
            caption += (
                " Ran only some of a row's cells, so not shown there: " + "; ".join(left_out) + "."
            )
        doc.add(Table(("shots", "cells", *columns), tuple(accuracy), caption=caption))
        doc.add(
            Table(
                ("shots", *columns),
                tuple(walls),
                caption=f"Median wall time per run (s) on those cells, {title}.",
            )
        )
        if series:
            shots = sorted({int(x) for pts in series.values() for x, _, _ in pts})
            doc.figure(
                f"setfit-peers-{model}-{suite}",
                figures.line_figure(
                    series,
                    title=f"Each arm minus SetFit ({title})",
                    xlabel="shots (training examples)",
                    ylabel="accuracy difference from SetFit (points)",
                    xscale="log2",
                    xticks=[float(k) for k in shots],
                    reference=(0.0, "SetFit"),
                ),
                f"Paired accuracy difference from SetFit against the number of shots, {title} "
                "(mean ± 95% t interval over SetFit's cells).",
            )
