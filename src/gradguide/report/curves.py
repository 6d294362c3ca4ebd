"""Per-step curves averaged per method (one figure per condition), and the loss-curves section
built from them.
"""

from __future__ import annotations

from collections.abc import Callable

from gradguide.report import figures
from gradguide.report.analysis import (
    AlignmentColumn,
    Condition,
    conditions,
    mean_curve,
    upper_first,
)
from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading


def curves_section(
    doc: Doc,
    data: BenchData,
    title: str | None,
    name: str,
    ylabel: str,
    yscale: str = "linear",
    only: Callable[[Condition], AlignmentColumn] | None = None,
) -> bool:
    """One figure per condition of ``curves[name]`` averaged per method; True if any.

    ``title`` is the section heading added before the first figure (None: no heading); with
    ``only``, a condition's figure shows only the arms its alignment column shows, and says why.
    """
    started = False
    for cond in conditions(data.runs):
        series = {}
        counts = []
        column = only(cond) if only is not None else None
        for v in cond.variants():
            if column is not None and v not in column.shown:
                continue
            runs = cond.runs_of(v)
            curve = mean_curve(runs, name)
            if curve is not None:
                series[v] = curve
                n = sum(1 for r in runs if len(r.curves.get(name) or []) >= 2)
                counts.append(f"{v} {n}")
        if not series:
            continue
        if not started and title is not None:
            doc.add(Heading(title))
        started = True
        doc.figure(
            f"{name}-{cond.title}",
            figures.curve_figure(
                series,
                title=f"{ylabel} ({cond.title})",
                xlabel="% of training steps",
                ylabel=ylabel,
                yscale=yscale,
            ),
            f"{upper_first(ylabel)} per training step, mean over tasks and seeds per method, "
            f"{cond.title} "
            f"(runs: {', '.join(counts)}). {column.note() if column else ''}".rstrip(),
        )
    return started


def loss_curves_section(doc: Doc, data: BenchData) -> None:
    """The training-loss curves, one figure per condition."""
    curves_section(doc, data, "Loss curves", "loss", "training loss")
