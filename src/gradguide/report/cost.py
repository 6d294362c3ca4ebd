"""The cost section: trainable parameters, step time, time and memory per run."""

from __future__ import annotations

from gradguide.bench.stats import mean_ci
from gradguide.report.analysis import conditions, fmt_interval
from gradguide.report.data import BenchData, RunData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Paragraph, Table


def cost_section(doc: Doc, data: BenchData) -> None:
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
