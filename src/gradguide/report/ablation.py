"""The ablation section: SGG against each of its terms alone, with the gradient measures the
terms act on.
"""

from __future__ import annotations

from gradguide.bench.stats import Interval
from gradguide.report import figures
from gradguide.report.analysis import (
    ALIGNMENT,
    BASELINES,
    METRIC,
    STABILITY,
    Condition,
    alignment_column,
    average,
    compare,
    conditions,
    fmt_interval,
    half_width,
)
from gradguide.report.comparisons import comparison_row
from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Table

ABLATIONS = ("sgg-dir", "sgg-mag", "sgg-align")


def ablation_section(doc: Doc, data: BenchData) -> None:
    started = False
    for cond in conditions(data.runs):
        variants = cond.variants()
        present = [v for v in variants if v in ABLATIONS]
        if not present:
            continue
        shown = [v for v in variants if v in ("sgg", *ABLATIONS) or v in BASELINES]
        tasks = cond.common_tasks(shown)
        avgs = {v: average(cond, v, METRIC, tasks) for v in shown}
        if not started:
            doc.add(Heading("Ablation"))
            started = True
        doc.add(Heading(cond.title, 3))
        doc.add(_ablation_measures(cond, avgs, tasks))
        rows = []
        if "sgg" in variants:
            for v in present:
                c = compare(cond, v, "sgg", METRIC)
                if c is not None:
                    rows.append(comparison_row(c))
        if rows:
            doc.add(
                Table(
                    (
                        "term alone",
                        "versus",
                        "measure",
                        "pairs",
                        "mean",
                        "sgg mean",
                        "difference",
                        "bootstrap 95%",
                        "t-test p",
                        "Wilcoxon p",
                        "same samples",
                    ),
                    tuple(rows),
                    caption="Each SGG term alone against the full SGG objective (paired).",
                )
            )
        doc.figure(
            f"ablation-{cond.title}",
            figures.bar_figure(
                list(avgs),
                {
                    "average accuracy": [
                        (100 * iv.mean, half_width(iv, 100)) if iv is not None else None
                        for iv in avgs.values()
                    ]
                },
                title=f"Ablation ({cond.title})",
                ylabel="accuracy (%)",
            ),
            f"Accuracy averaged over {', '.join(tasks)} for SGG, each of its terms alone and the "
            "baselines present (mean ± 95% interval over seeds).",
        )


def _ablation_measures(
    cond: Condition, accuracy: dict[str, Interval | None], tasks: list[str]
) -> Table:
    """Accuracy (already averaged per arm) and the gradient measures the SGG terms act on."""
    column = alignment_column(cond, list(accuracy))

    def measure(v: str, m: str) -> str:
        text = fmt_interval(average(cond, v, m, tasks), percent=False)
        return column.cell(v, text) if m == ALIGNMENT else text

    measures = (STABILITY, ALIGNMENT, "source_alignment")
    rows = tuple(
        (
            v,
            str(len({r.seed for r in cond.runs_of(v)})),
            fmt_interval(acc, percent=True),
            *(measure(v, m) for m in measures),
        )
        for v, acc in accuracy.items()
    )
    return Table(
        (
            "arm",
            "seeds",
            "accuracy",
            "gradient stability",
            column.header,
            "source alignment",
        ),
        rows,
        caption=f"Averaged over {', '.join(tasks) or 'no task'} per seed, then mean ± 95% "
        "interval over seeds. Directional alignment: mean cos(g, d_prior); source alignment: "
        "mean cos(g_target, g_source), recorded only by arms with a source task (n/a: not "
        f"recorded). {column.note()}".rstrip(),
    )
