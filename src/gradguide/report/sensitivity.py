"""The sensitivity section: accuracy against each swept setting, the other swept settings at
their usual value.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from gradguide.bench.stats import across_tasks
from gradguide.report import figures
from gradguide.report.analysis import METRIC, conditions, fmt_interval, half_width, method_rank
from gradguide.report.data import BenchData, RunData, cells
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Table


def sensitivity_section(doc: Doc, data: BenchData) -> None:
    """Accuracy against each swept setting, the other swept settings at their usual value."""
    started = False
    for cond in conditions(data.runs):
        by_method: dict[str, list[RunData]] = {}
        for r in cond.runs:
            by_method.setdefault(r.method, []).append(r)
        for method in sorted(by_method, key=method_rank):
            runs = by_method[method]
            keys = sorted({k for r in runs for k in r.settings})
            usual = {k: _mode([_token(r.setting(k)) for r in runs]) for k in keys}
            for key in keys:
                members = [
                    r
                    for r in runs
                    if all(_token(r.setting(k)) == usual[k] for k in keys if k != key)
                ]
                values: dict[str, Any] = {}
                for r in members:
                    values.setdefault(_token(r.setting(key)), r.setting(key))
                if len(values) < 2:
                    continue
                order = sorted(values, key=lambda t: _sort_value(values[t]))
                groups = {t: [r for r in members if _token(r.setting(key)) == t] for t in order}
                tasks = [
                    t
                    for t in dict.fromkeys(r.task for r in members)
                    if all(any(r.task == t for r in g) for g in groups.values())
                ]
                points = []
                rows = []
                for t in order:
                    iv = across_tasks(cells(groups[t], METRIC), tasks)
                    mark = " (the others' value)" if t == usual[key] else ""
                    rows.append((f"{values[t]}{mark}", fmt_interval(iv, percent=True)))
                    v = values[t]
                    if iv is not None and isinstance(v, (int, float)) and not isinstance(v, bool):
                        points.append((float(v), 100 * iv.mean, half_width(iv, 100)))
                if not started:
                    doc.add(Heading("Sensitivity"))
                    started = True
                doc.add(Heading(f"{method}: {key} ({cond.title})", 3))
                doc.add(
                    Table(
                        (key, "accuracy"),
                        tuple(rows),
                        caption=f"Accuracy (%) averaged over {', '.join(tasks)}; every other "
                        "swept setting at the value most runs used.",
                    )
                )
                if len(points) >= 2:
                    logx = all(p[0] > 0 for p in points)
                    doc.figure(
                        f"sensitivity-{method}-{key}-{cond.title}",
                        figures.line_figure(
                            {method: points},
                            title=f"{method}: accuracy vs {key} ({cond.title})",
                            xlabel=key,
                            ylabel="accuracy (%)",
                            xscale="log" if logx else "linear",
                        ),
                        f"Sensitivity of {method} to {key} (mean ± 95% interval over seeds).",
                    )


def _token(value: Any) -> str:
    """A hashable, comparable stand-in for a setting's value."""
    return json.dumps(value, sort_keys=True)


def _mode(tokens: Sequence[str]) -> str:
    """The most common token (the first seen among equals)."""
    counts = Counter(tokens)
    return max(dict.fromkeys(tokens), key=lambda t: counts[t])


def _sort_value(v: object) -> tuple[int, float, str]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))
