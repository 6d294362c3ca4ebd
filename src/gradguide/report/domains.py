"""The domain tasks: accuracy on each domain set, table and bar figure per condition."""

from __future__ import annotations

from gradguide.bench.stats import per_task
from gradguide.report import figures
from gradguide.report.analysis import METRIC, conditions, fmt_interval, half_width
from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Table


def domains_section(doc: Doc, data: BenchData) -> None:
    conds = conditions(r for r in data.runs if r.suite == "domain")
    if not conds:
        return
    doc.add(Heading("Domain tasks"))
    for cond in conds:
        variants = cond.variants()
        tasks = cond.tasks()
        table = {v: per_task(cond.cells(v, METRIC)) for v in variants}
        doc.add(Heading(cond.title, 3))
        doc.add(
            Table(
                ("method", *tasks),
                tuple(
                    (v, *(fmt_interval(table[v].get(t), percent=True) for t in tasks))
                    for v in variants
                ),
                caption="Accuracy (%) on each domain task (mean ± 95% interval over seeds).",
            )
        )
        series = {
            v: [
                (100 * table[v][t].mean, half_width(table[v][t], 100)) if t in table[v] else None
                for t in tasks
            ]
            for v in variants
        }
        doc.figure(
            f"domains-{cond.title}",
            figures.bar_figure(
                tasks,
                series,
                title=f"Domain tasks ({cond.title})",
                ylabel="accuracy (%)",
                hline=75.0,
            ),
            f"Accuracy per domain task, {cond.title}; dashed line: the paper's 75% claim.",
        )
