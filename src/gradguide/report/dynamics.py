"""The gradient-dynamics section: gradient-norm curves, stability and alignment bars, and the
cosine-with-prior curves.
"""

from __future__ import annotations

from gradguide.bench.stats import Interval
from gradguide.report import figures
from gradguide.report.analysis import (
    ALIGNMENT,
    STABILITY,
    alignment_column,
    average,
    conditions,
    half_width,
)
from gradguide.report.curves import curves_section
from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading


def dynamics_section(doc: Doc, data: BenchData) -> None:
    started = curves_section(doc, data, "Gradient dynamics", "grad_norm", "gradient norm", "log")
    for cond in conditions(data.runs):
        variants = cond.variants()
        tasks = cond.common_tasks(variants)
        column = alignment_column(cond, variants)
        stab = {v: average(cond, v, STABILITY, tasks) for v in variants}
        align = {
            v: average(cond, v, ALIGNMENT, tasks) if v in column.shown else None for v in variants
        }
        shown = [v for v in variants if stab[v] is not None or align[v] is not None]
        if not shown:
            continue
        if not started:
            doc.add(Heading("Gradient dynamics"))
            started = True

        doc.figure(
            f"dynamics-{cond.title}",
            figures.bar_figure(
                shown,
                {
                    "gradient stability": _bars(stab, shown),
                    "directional alignment": _bars(align, shown),
                },
                title=f"Gradient stability and directional alignment ({cond.title})",
                ylabel="value",
            ),
            "Gradient stability 1/(1+CV of the gradient norm) and mean cosine with the prior "
            f"direction, averaged over tasks then seeds, {cond.title}. {column.note()}".rstrip(),
        )
    if started:
        curves_section(
            doc,
            data,
            None,
            "cos_prior",
            "cosine with the prior direction",
            only=lambda cond: alignment_column(cond, cond.variants()),
        )


def _bars(
    values: dict[str, Interval | None], variants: list[str]
) -> list[tuple[float, float | None] | None]:
    """Bar heights and half-widths for ``variants`` (None where a value is missing)."""
    out: list[tuple[float, float | None] | None] = []
    for v in variants:
        iv = values[v]
        out.append(None if iv is None else (iv.mean, half_width(iv, 1.0)))
    return out
