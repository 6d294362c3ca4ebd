"""Assemble the report from a bench directory: sections that exist only when their data does."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gradguide.atomic import write_bytes_atomic, write_text_atomic
from gradguide.bench.stats import Interval, across_tasks, mean_ci, per_task
from gradguide.metrics import CONVERGENCE_FRACTION, CONVERGENCE_WINDOW
from gradguide.report import figures
from gradguide.report.analysis import (
    ALIGNMENT,
    BASELINES,
    METRIC,
    STABILITY,
    AlignmentColumn,
    Comparison,
    Condition,
    alignment_column,
    average,
    compare,
    conditions,
    fmt_diff,
    fmt_interval,
    fmt_p,
    mean_curve,
    method_rank,
)
from gradguide.report.claims import PAPERS, Paper
from gradguide.report.data import BenchData, RunData, cells, load_bench
from gradguide.report.doc import Doc
from gradguide.report.provenance import provenance_section, relative_paths
from gradguide.report.render import (
    FIGURES_DIR,
    Block,
    BulletList,
    Figure,
    Heading,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)
from gradguide.report.sanity import Limits, Sanity, check, sanity_section
from gradguide.report.spectral_diag import spectral_section
from gradguide.report.summary import summary_section
from gradguide.report.verdict import ClaimResult

ABLATIONS = ("sgg-dir", "sgg-mag", "sgg-align")
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


@dataclasses.dataclass(frozen=True)
class ReportFiles:
    """Where the report was written."""

    markdown: Path
    html: Path
    figures: list[Path]


def _upper_first(text: str) -> str:
    """Capitalise a label's first letter only (``str.capitalize`` would lower tr(P H P^T))."""
    return text[:1].upper() + text[1:]


def _overview(doc: Doc, data: BenchData) -> None:
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


def _claims(doc: Doc, results: Sequence[tuple[Paper, list[ClaimResult]]]) -> None:
    doc.add(Heading("Claims of the papers"))
    doc.add(
        Paragraph(
            "Each claim of the seed papers with a verdict decided by code from the stored runs. "
            "Absolute numbers are not expected to match the papers (other models, a CPU budget); "
            "the verdicts test their comparative statements."
        )
    )
    for paper, claims in results:
        doc.add(Heading(paper.title, 3))
        doc.add(Paragraph("Rules: " + " ".join(paper.rules)))
        doc.add(
            BulletList(
                tuple(
                    f"**{c.claim}** ({c.where}): **{c.status}**. Paper: {c.paper}. "
                    f"Here: {c.evidence}."
                    for c in claims
                )
            )
        )


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


def _results(doc: Doc, data: BenchData, sanity: Sanity) -> None:
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
                    + _failed_arms(cond, sanity)
                ),
            )
        )


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


def _comparison_row(c: Comparison) -> tuple[str, ...]:
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


def _comparisons(doc: Doc, data: BenchData) -> None:
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
                    rows.append(_comparison_row(c))
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


def _sample_size(doc: Doc, data: BenchData) -> None:
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
            tasks = [
                t
                for t in dict.fromkeys(r.task for r in vr)
                if all(any(r.task == t and r.shots == k for r in vr) for k in shots)
            ]
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
            v: [(float(k), 100 * iv.mean, _half(iv, 100)) for k, iv in pts.items()]
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


def _half(iv: Interval, scale: float) -> float | None:
    return scale * iv.half_width if iv.n >= 2 and math.isfinite(iv.half_width) else None


def _domains(doc: Doc, data: BenchData) -> None:
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
                (100 * table[v][t].mean, _half(table[v][t], 100)) if t in table[v] else None
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


def _curves_section(
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
            f"{_upper_first(ylabel)} per training step, mean over tasks and seeds per method, "
            f"{cond.title} "
            f"(runs: {', '.join(counts)}). {column.note() if column else ''}".rstrip(),
        )
    return started


def _convergence(doc: Doc, data: BenchData) -> None:
    """Convergence speed and step time per method, from each run's curves (metrics.py)."""
    sections = []
    for cond in conditions(data.runs):
        rows = []
        for v in cond.variants():
            auc: dict[tuple[str, int], float] = {}
            step_s: dict[tuple[str, int], float] = {}
            reached, trained = [], 0
            for r in cond.runs_of(v):
                a = r.loss_auc()
                if a is None:
                    continue
                trained += 1
                auc[(r.task, r.seed)] = a
                times = [t for t in r.curves.get("step_seconds") or [] if t is not None]
                if times:
                    step_s[(r.task, r.seed)] = sorted(times)[len(times) // 2]
                s = r.steps_to_loss_threshold()
                if s is not None:
                    reached.append(s)
            if not trained:
                continue
            tasks = cond.common_tasks(cond.variants())
            mean_steps = f"{sum(reached) / len(reached):.1f}" if reached else "n/a"
            rows.append(
                (
                    v,
                    fmt_interval(across_tasks(auc, tasks), percent=False),
                    f"{mean_steps} ({len(reached)}/{trained} runs)",
                    fmt_interval(across_tasks(step_s, tasks), percent=False),
                )
            )
        if rows:
            sections.append((cond, rows))
    if not sections:
        return
    doc.add(Heading("Convergence"))
    doc.add(
        Paragraph(
            "Loss AUC: the area under the training-loss curve divided by steps × the initial loss "
            f"(mean of the first {CONVERGENCE_WINDOW} losses); 1 = no progress, lower = faster. "
            f"Steps to threshold: first step at which the mean loss of the last "
            f"{CONVERGENCE_WINDOW} steps is at most {CONVERGENCE_FRACTION:g} × the initial loss, "
            "averaged over the runs that got there. Step time: median seconds per training step. "
            "AUC and step time are averaged over tasks then seeds (mean ± 95% interval)."
        )
    )
    for cond, rows in sections:
        doc.add(Heading(cond.title, 3))
        doc.add(Table(("method", "loss AUC", "steps to threshold", "step time (s)"), tuple(rows)))


def _cost(doc: Doc, data: BenchData) -> None:
    """What each method costs per task: trainable parameters, step time, time per run."""
    sections = []
    for cond in conditions(data.runs):
        rows = []
        for task in sorted({r.task for r in cond.runs}):
            for v in cond.variants():
                runs = [r for r in cond.runs_of(v) if r.task == task and r.timings]
                if not runs:
                    continue

                def over_seeds(name: str, runs: list[RunData] = runs) -> str:
                    values = [r.timings[name] for r in runs if name in r.timings]
                    return fmt_interval(mean_ci(values), percent=False) if values else "n/a"

                loads = [
                    f"{load[2]:.1f}/{r.environment.get('cpu_count')}"
                    for r in runs
                    if isinstance(load := r.environment.get("load_average"), list)
                ]
                trainable = sorted({r.trainable for r in runs if r.trainable is not None})
                rows.append(
                    (
                        task,
                        v,
                        "/".join(f"{n:,}" for n in trainable) or "n/a",
                        over_seeds("step_s_median"),
                        over_seeds("train_s"),
                        over_seeds("total_s"),
                        over_seeds("peak_rss_mb"),
                        str(len(runs)),
                        " ".join(loads) or "n/a",
                    )
                )
        if rows:
            sections.append((cond, rows))
    if not sections:
        return
    doc.add(Heading("Cost"))
    doc.add(
        Paragraph(
            "From each run's record: trainable parameters; median seconds per training step; "
            "seconds of training and of the whole run (model load, training, evaluation); "
            "the run's peak resident memory (n/a for records that only kept their process's "
            "peak, which includes earlier runs of an in-process grid); mean ± 95% interval over "
            "the runs (seeds) of each task. Times are wall-clock on the "
            "machine that ran the grid, where runs may have shared its cores: compare methods "
            "within one grid, not across machines (benchmarks/ measures speed side by side). "
            "Load/cores is each run's 15-minute load average when its record was written over "
            "the machine's cores: a load above the core count means the run shared its cores."
        )
    )
    header = (
        "task",
        "method",
        "trainable parameters",
        "step time (s)",
        "training per run (s)",
        "wall time per run (s)",
        "peak memory (MiB)",
        "runs",
        "load/cores",
    )
    for cond, rows in sections:
        doc.add(Heading(cond.title, 3))
        doc.add(Table(header, tuple(rows)))


def _dynamics(doc: Doc, data: BenchData) -> None:
    started = _curves_section(doc, data, "Gradient dynamics", "grad_norm", "gradient norm", "log")
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
        _curves_section(
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
        out.append(None if iv is None else (iv.mean, _half(iv, 1.0)))
    return out


def _ablation(doc: Doc, data: BenchData) -> None:
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
                    rows.append(_comparison_row(c))
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
                        (100 * iv.mean, _half(iv, 100)) if iv is not None else None
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


def _sensitivity(doc: Doc, data: BenchData) -> None:
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
                        points.append((float(v), 100 * iv.mean, _half(iv, 100)))
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


def _failures(doc: Doc, data: BenchData) -> None:
    if not data.failures:
        return
    latest = {f.key: f for f in data.failures}
    doc.add(Heading("Runs that failed"))
    doc.add(
        Table(
            ("run", "error", "when"),
            tuple((f.label, f.error, f.at) for f in latest.values()),
            caption="Latest failure of each run that has not finished since (re-run the grid "
            "to retry them).",
        )
    )


def _superseded(doc: Doc, data: BenchData) -> None:
    if not data.superseded:
        return
    doc.add(Heading("Superseded runs"))
    rows = tuple(
        (
            s.cell,
            s.dropped,
            s.kept,
            "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in s.differences.items()) or "none",
        )
        for s in data.superseded
    )
    doc.add(
        Table(
            ("cell", "left out", "kept", "settings (left out → kept)"),
            rows,
            caption="Runs of a cell that a later run of the same cell replaced: they differ in "
            "settings no grid swept, so the report shows only the latest (report one grid with "
            "`--grid NAME`, move or delete the older run directories, or sweep the setting, to "
            "compare them).",
        )
    )


#: per-layer quantities of gradguide.layerwise: record key, axis label, what the index means
LAYER_QUANTITIES = (
    ("probe_accuracy", "probe accuracy (%)", "layer (0 = embeddings, last = model output)"),
    ("probe_loss", "probe loss", "layer (0 = embeddings, last = model output)"),
    ("sharpness", "sharpness tr(P H P^T) per token", "block t"),
    ("step_ratio", "step ratio s(t+1)/s(t)", "block t"),
)


def _layerwise(doc: Doc, data: BenchData) -> None:
    """The OFA paper's per-layer figures, from the runs that recorded layer diagnostics."""
    started = False
    for cond in conditions(data.runs):
        with_layers = [r for r in cond.runs if r.layers]
        tasks = list(dict.fromkeys(r.task for r in with_layers))
        if not tasks:
            continue
        if not started:
            doc.add(Heading("Per-layer diagnostics"))
            doc.add(Paragraph(_LAYERWISE_TEXT))
            started = True
        doc.add(Heading(cond.title, 3))
        for key, label, xlabel in LAYER_QUANTITIES:
            scale = 100.0 if key == "probe_accuracy" else 1.0
            for task in tasks:
                series = {}
                for v in cond.variants():
                    rows = [
                        r.layers[key]
                        for r in cond.runs_of(v)
                        if r.task == task and isinstance(r.layers.get(key), list) and r.layers[key]
                    ]
                    if rows and all(len(x) == len(rows[0]) for x in rows):
                        series[v] = _layer_points(rows, scale)
                if not series:
                    continue
                own = [r for r in with_layers if r.task == task]
                seeds = sorted({r.seed for r in own})
                n = own[0].layers.get("n_examples")
                doc.figure(
                    f"layers-{key}-{task}-{cond.title}",
                    figures.line_figure(
                        series, title=f"{label}, {task} ({cond.title})", xlabel=xlabel, ylabel=label
                    ),
                    f"{_upper_first(label)} per layer on {task}, {cond.title}: mean over seeds "
                    f"{', '.join(map(str, seeds))} ± 95% interval, {n} evaluation examples.",
                )


_LAYERWISE_TEXT = (
    "Per-layer diagnostics as in the OFA paper's Figures 1-3 (gradguide.layerwise). Probe: the "
    "hidden state after each block read out through the final normalisation and the output "
    "head (logit lens, gradguide's choice), the task's candidates scored as the model's own "
    "output is; accuracy and cross entropy over the candidates. Sharpness: Hutchinson's "
    "estimate of tr(P_t H_t P_t^T) per token with P_t the gain of block t's input "
    "normalisation, read through the residual update u_t (its Jacobian ~ -P_t H_t); it is "
    "signed. Step ratio: s_(t+1)/(s_t + eps), s_t the norm of block t's residual update per "
    "token. Both averaged over the non-padding tokens of the scored sequences (in-context "
    "demonstrations included)."
)


def _layer_points(rows: list[list[float]], scale: float) -> list[figures.Point]:
    """(layer, mean over runs, 95% half width) for equally long per-layer lists."""
    points: list[figures.Point] = []
    for i in range(len(rows[0])):
        values = [x[i] for x in rows if x[i] is not None and math.isfinite(x[i])]
        if values:
            iv = mean_ci(values)
            points.append((float(i), scale * iv.mean, _half(iv, scale)))
    return points


def build_report(data: BenchData, limits: Limits | None = None) -> tuple[str, list[Block]]:
    """The report's title and blocks for the runs of one bench directory: the verdicts and the
    figure a reader wants first, the sanity checks, the details, and provenance at the end.
    ``limits``: where the sanity checks fail a run (gradguide.report.sanity)."""
    doc = Doc()
    names = ", ".join(data.grids) or data.bench_dir.name
    title = f"gradguide report: {names}"
    if not data.runs:
        doc.add(Paragraph("No finished runs are stored in this bench directory yet."))
        _failures(doc, data)
        return title, relative_paths(doc.blocks, data.bench_dir)
    sanity = check(data, limits)
    results = [(paper, paper.checked(data, sanity)) for paper in PAPERS]
    summary_section(doc, data, results, sanity)
    sanity_section(doc, data, sanity)
    _overview(doc, data)
    _claims(doc, results)
    _results(doc, data, sanity)
    _comparisons(doc, data)
    _sample_size(doc, data)
    _domains(doc, data)
    _curves_section(doc, data, "Loss curves", "loss", "training loss")
    _convergence(doc, data)
    spectral_section(doc, data)
    _cost(doc, data)
    _dynamics(doc, data)
    _ablation(doc, data)
    _layerwise(doc, data)
    _sensitivity(doc, data)
    _failures(doc, data)
    _superseded(doc, data)
    provenance_section(doc, data)
    return title, relative_paths(doc.blocks, data.bench_dir)


def write_report(
    bench_dir: str | Path,
    out_dir: str | Path | None = None,
    grids: Sequence[str] | None = None,
    limits: Limits | None = None,
) -> ReportFiles:
    """Read a bench directory and write report.md (+ its PNGs) and a self-contained report.html.

    ``grids`` restricts the report to the runs those stored grids ask for (``load_bench``);
    ``limits`` sets where the sanity checks fail a run.
    """
    data = load_bench(bench_dir, grids)
    target = Path(out_dir) if out_dir is not None else Path(bench_dir)
    title, blocks = build_report(data, limits)
    written = []
    for b in blocks:
        if isinstance(b, Figure):
            written.append(write_bytes_atomic(target / FIGURES_DIR / f"{b.name}.png", b.png))
    md = write_text_atomic(target / REPORT_MD, to_markdown(title, blocks))
    page = write_text_atomic(target / REPORT_HTML, to_html(title, blocks))
    return ReportFiles(md, page, written)


def summary_lines(files: ReportFiles) -> list[str]:
    """What the command line prints after writing a report."""
    return [
        f"report: {files.markdown}",
        f"        {files.html} (self-contained, {len(files.figures)} figures embedded)",
    ]
