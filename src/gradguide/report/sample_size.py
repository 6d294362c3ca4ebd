"""The sample-size curves: accuracy against the number of shots, per model."""

from __future__ import annotations

from gradguide.bench.stats import Interval, across_tasks
from gradguide.report import figures
from gradguide.report.analysis import METRIC, curve_tasks, fmt_interval, half_width
from gradguide.report.data import BenchData, RunData, cells
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Table


def sample_size_section(doc: Doc, data: BenchData) -> None:
    by_model: dict[str, list[RunData]] = {}
    for r in data.runs:
        by_model.setdefault(r.model, []).append(r)
    started = False
    for model, runs in by_model.items():
        curves: dict[str, dict[int, Interval]] = {}
        task_sets: dict[str, list[str]] = {}
        for v in sorted({r.variant for r in runs}):
            vr = [r for r in runs if r.variant == v]
            shots = sorted({r.shots for r in vr})
            if len(shots) < 2:
                continue
            tasks = curve_tasks(vr)
            points = {}
            for k in shots:
                iv = across_tasks(cells([r for r in vr if r.shots == k], METRIC), tasks)
                if iv is not None:
                    points[k] = iv
            if len(points) >= 2:
                curves[v] = points
                task_sets[v] = tasks
        if not curves:
            continue
        if not started:
            doc.add(Heading("Sample-size curves"))
            started = True
        all_shots = sorted({k for pts in curves.values() for k in pts})
        rows = tuple(
            (
                v,
                ", ".join(task_sets[v]),
                *(fmt_interval(pts.get(k), percent=True) for k in all_shots),
            )
            for v, pts in curves.items()
        )
        doc.add(Heading(model, 3))
        doc.add(
            Table(
                ("method", "tasks averaged", *(f"{k} shots" for k in all_shots)),
                rows,
                caption="Accuracy (%) averaged over the tasks run at every number of shots.",
            )
        )
        series = {
            v: [(float(k), 100 * iv.mean, half_width(iv, 100)) for k, iv in pts.items()]
            for v, pts in curves.items()
        }
        doc.figure(
            f"sample-size-{model}",
            figures.line_figure(
                series,
                title=f"Accuracy vs training examples ({model})",
                xlabel="shots (training examples)",
                ylabel="accuracy (%)",
                xscale="log2",
                xticks=[float(k) for k in all_shots],
            ),
            f"Accuracy against the number of shots on {model} (mean ± 95% interval over seeds).",
        )
