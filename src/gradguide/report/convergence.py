"""The convergence section: loss AUC, steps to the loss threshold and step time per method."""

from __future__ import annotations

from gradguide.bench.stats import across_tasks
from gradguide.metrics import CONVERGENCE_FRACTION, CONVERGENCE_WINDOW
from gradguide.report.analysis import conditions, fmt_interval
from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Paragraph, Table


def convergence_section(doc: Doc, data: BenchData) -> None:
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
