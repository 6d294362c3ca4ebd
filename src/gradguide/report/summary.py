"""What a reader wants first: every claim's verdict in one table, and each method against LoRA.

The table lists every claim of the three papers (gradguide.report.claims) with its verdict and
its headline difference; the figure shows, per condition and task, each method's accuracy minus
LoRA's, paired on seeds, with its 95% interval. The details follow in the rest of the report.
"""

from __future__ import annotations

from collections.abc import Sequence

from gradguide.bench.spec import departures_from_preset
from gradguide.bench.stats import mean_ci
from gradguide.report import figures
from gradguide.report.analysis import METRIC, Condition, conditions
from gradguide.report.claims import Paper
from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import BulletList, Heading, Paragraph, Table
from gradguide.report.sanity import Sanity
from gradguide.report.verdict import ClaimResult

LORA = "lora"

_CAPTION = (
    "Every claim of the three papers, decided by code from the stored runs (rules and evidence: "
    "Claims of the papers, below). Headline: the difference from the baseline the method does "
    "least well against (method − baseline; pp: percentage points) with its 95% paired "
    "bootstrap interval over matched (task, seed) cells; for the sample-size claim the gain "
    "from the fewest to the most shots, for the domain claim the lowest task's accuracy with "
    "its 95% interval over seeds. A claim without a verdict says why in a few words (the "
    "evidence has the rest); one whose runs failed a sanity check gets no headline."
)


def summary_section(
    doc: Doc, data: BenchData, results: Sequence[tuple[Paper, list[ClaimResult]]], sanity: Sanity
) -> None:
    """The opening: the verdict table and the accuracy-against-LoRA figure."""
    doc.add(Heading("Verdicts"))
    rows = tuple(
        (paper.short, r.claim, r.where, r.status, _headline_or_why(r))
        for paper, claims in results
        for r in claims
    )
    doc.add(
        Table(
            (
                "paper",
                "claim",
                "model",
                "verdict",
                "headline difference [95% interval], or why there is no verdict",
            ),
            rows,
            caption=_CAPTION,
            badge_column=3,
        )
    )
    cuts = reductions(data, [r for _, claims in results for r in claims])
    if cuts:
        doc.add(
            Paragraph(
                "Grids these verdicts rest on that were reduced from their presets to fit this "
                "machine (Provenance, at the end, lists every grid):"
            )
        )
        doc.add(BulletList(tuple(cuts)))
    _versus_lora(doc, data, sanity)


def _headline_or_why(r: ClaimResult) -> str:
    """The verdict table's last cell: the headline, and for a claim without a verdict why not."""
    if r.why and r.headline:
        return f"{r.why}; {r.headline}"
    return r.why or r.headline or "—"


def reductions(data: BenchData, claims: Sequence[ClaimResult]) -> list[str]:
    """For each grid some claim's runs came from, how it departs from its preset's axes and base
    settings (its name aside): what was reduced, as the issue's rule asks a report to say."""
    keys = {k for c in claims for k in c.runs}
    cited = [r for r in data.runs if r.key in keys]
    out = []
    for name in dict.fromkeys(r.grid for r in cited):
        spec = data.grids.get(name)
        if not spec:
            continue
        cut = departures_from_preset(spec, name=False)
        # a grid relaunched on other tasks keeps them all in its spec: say which went unrun
        for model in dict.fromkeys(r.model for r in cited if r.grid == name):
            ran = {r.task for r in cited if r.grid == name and r.model == model}
            unrun = [t for t in spec.get("tasks", ()) if t not in ran]
            if unrun:
                cut.append(f"{model} has no run behind these verdicts on " + ", ".join(unrun))
        if cut:
            out.append(f"{name}: " + "; ".join(cut))
    return out


def _differences(cond: Condition, variant: str, task: str) -> list[float]:
    """The variant's accuracy minus LoRA's on ``task``, one value per seed both ran."""
    mine = {s: v for (t, s), v in cond.cells(variant, METRIC).items() if t == task}
    lora = {s: v for (t, s), v in cond.cells(LORA, METRIC).items() if t == task}
    return [mine[s] - lora[s] for s in sorted(set(mine) & set(lora))]


def _versus_lora(doc: Doc, data: BenchData, sanity: Sanity) -> None:
    failed = set(sanity.failures())
    panels: list[figures.Panel] = []
    for cond in conditions(data.runs):
        if not cond.runs_of(LORA):
            continue
        method = {r.variant: r.method for r in cond.runs}
        variants = [v for v in cond.variants() if v == method[v] and v != LORA]
        tasks = [t for t in cond.tasks() if any(r.task == t for r in cond.runs_of(LORA))]
        series: dict[str, list[tuple[float, float | None] | None]] = {}
        for v in variants:
            bars: list[tuple[float, float | None] | None] = []
            for t in tasks:
                diffs = _differences(cond, v, t)
                iv = mean_ci(diffs) if diffs else None
                half = iv.half_width if iv is not None and iv.n >= 2 else None
                bars.append(
                    None if iv is None else (100 * iv.mean, None if half is None else 100 * half)
                )
            if any(b is not None for b in bars):
                bad = any(r.key in failed for r in cond.runs_of(v))
                series[v + (" (failed sanity check)" if bad else "")] = bars
        if series:
            panels.append((cond.title, tasks, series))
    if not panels:
        doc.add(Paragraph("No stored condition has LoRA runs to compare the methods with."))
        return
    doc.figure(
        "accuracy-vs-lora",
        figures.panel_bars(panels, ylabel="accuracy − LoRA (pp)"),
        "Each method's accuracy minus LoRA's per task (percentage points), paired on seeds: "
        "mean ± 95% Student-t interval over the seeds both ran (no bar: the method did not run "
        "the task). Swept variants are in Sensitivity; the methods' own accuracies are in "
        "Results.",
    )
