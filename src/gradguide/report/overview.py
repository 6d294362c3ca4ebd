"""The report's overview: what the bench directory holds (runs, models, tasks, methods, seeds)
and how the numbers below are computed.
"""

from __future__ import annotations

from gradguide.report.analysis import method_rank
from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import BulletList, Heading, Paragraph


def overview_section(doc: Doc, data: BenchData) -> None:
    runs = data.runs
    doc.add(Heading("Overview"))
    wall = sum(r.wall_s for r in runs if r.wall_s is not None)
    items = [
        f"finished runs stored: {len(runs)} (total run time {wall / 3600:.2f} h; the grids, "
        "commits and packages that ran them: Provenance, at the end)",
        "models: " + ", ".join(sorted({r.model for r in runs})),
        "tasks: " + ", ".join(dict.fromkeys(r.task for r in runs)),
        "methods: " + ", ".join(sorted({r.method for r in runs}, key=method_rank)),
        "seeds: " + ", ".join(str(s) for s in sorted({r.seed for r in runs})),
    ]
    if data.failures:
        items.append(
            f"runs that failed and have not finished since: {len({f.key for f in data.failures})}"
        )
    if data.stale_failures:
        items.append(
            "failed runs left out because no stored grid asks for them any more (their grid "
            f"was changed since): {data.stale_failures}"
        )
    if data.missing_records:
        items.append(
            f"stored runs whose record.json is missing (no curves): {len(data.missing_records)}"
        )
    if data.superseded:
        items.append(
            f"stored runs left out, superseded by a later run of the same cell with other "
            f"settings: {len(data.superseded)} (listed at the end)"
        )
    doc.add(BulletList(tuple(items)))
    doc.add(
        Paragraph(
            "Every number below is computed from the results database and the run records. "
            "Intervals are two-sided 95% Student-t intervals over seeds (n = number of seeds); "
            "averages across tasks are taken per seed first, then over seeds, as the papers do. "
            "Accuracies are percentages."
        )
    )
