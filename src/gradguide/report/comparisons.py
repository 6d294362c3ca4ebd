"""The paired comparisons: each method against each baseline (and swept variants against their
defaults) on the (task, seed) cells both ran.
"""

from __future__ import annotations

from gradguide.report.analysis import (
    ALIGNMENT,
    BASELINES,
    METRIC,
    STABILITY,
    Comparison,
    Condition,
    alignment_column,
    compare,
    conditions,
    fmt_diff,
    fmt_p,
)
from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Paragraph, Table


def _pairs(cond: Condition) -> list[tuple[str, str]]:
    """Pairs to compare: methods vs baselines, swept variants vs their defaults."""
    # Without a non-baseline method, the baselines are compared among themselves.
    variants = cond.variants()
    method = {r.variant: r.method for r in cond.runs}
    plain = [v for v in variants if v == method[v]]
    proposed = [v for v in plain if method[v] not in BASELINES]
    baselines = [v for v in plain if method[v] in BASELINES]
    if proposed:
        pairs = [(p, b) for p in proposed for b in baselines]
    else:
        pairs = [(a, b) for i, b in enumerate(baselines) for a in baselines[i + 1 :]]
    pairs += [(v, method[v]) for v in variants if v != method[v] and method[v] in plain]
    return pairs


def comparison_row(c: Comparison) -> tuple[str, ...]:
    percent = c.metric == METRIC
    r = c.result
    scale = 100.0 if percent else 1.0
    digits = 1 if percent else 3
    return (
        c.a,
        c.b,
        c.metric,
        str(r.n),
        f"{scale * r.mean_a:.{digits}f}",
        f"{scale * r.mean_b:.{digits}f}",
        fmt_diff(r.mean_diff, percent=percent),
        f"[{scale * r.bootstrap.low:+.{digits}f}, {scale * r.bootstrap.high:+.{digits}f}]",
        fmt_p(r.ttest.p),
        fmt_p(r.wilcoxon.p),
        f"{c.identical_samples}/{r.n}",
    )


def comparisons_section(doc: Doc, data: BenchData) -> None:
    sections = []
    for cond in conditions(data.runs):
        rows = []
        comparable = alignment_column(cond, cond.variants()).shown
        for a, b in _pairs(cond):
            for metric in (METRIC, STABILITY, ALIGNMENT):
                if metric == ALIGNMENT and not (a in comparable and b in comparable):
                    continue  # cosines with different priors are different quantities
                c = compare(cond, a, b, metric)
                if c is not None:
                    rows.append(comparison_row(c))
        if rows:
            sections.append((cond, rows))
    if not sections:
        return
    doc.add(Heading("Paired comparisons"))
    doc.add(
        Paragraph(
            "Each method against each baseline on the (task, seed) cells both ran: the mean "
            "difference (first minus second), its 95% paired bootstrap interval (10,000 "
            "resamples, seed 0), the paired t-test and Wilcoxon signed-rank p-values, and how "
            "many pairs used exactly the same training sample and evaluation set."
        )
    )
    for cond, rows in sections:
        doc.add(Heading(cond.title, 3))
        doc.add(
            Table(
                (
                    "method",
                    "baseline",
                    "measure",
                    "pairs",
                    "mean",
                    "baseline mean",
                    "difference",
                    "bootstrap 95%",
                    "t-test p",
                    "Wilcoxon p",
                    "same samples",
                ),
                tuple(rows),
            )
        )
