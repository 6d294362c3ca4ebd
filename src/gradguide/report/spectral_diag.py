"""The spectral paper's diagnostics: the update's size and high-frequency share, graph spectra.

Read from each spectral run's record (``guidance.term_summaries``, gradguide.guidance.spectral):
plain LoRA runs build no graphs, so they have no high-frequency share to show.
"""

from __future__ import annotations

from typing import Any

from gradguide.bench.stats import mean_ci
from gradguide.report import figures
from gradguide.report.analysis import conditions, fmt_interval
from gradguide.report.data import BenchData, RunData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Paragraph, Table

QUANTITIES = (("delta_norm", 1.0), ("high_share", 100.0), ("energy", 1.0), ("build_s", 1.0))
SPECTRA_SHOWN = 3

_TEXT = (
    "From the records of the runs with a spectral term. ‖ΔW‖: Frobenius norm of the update over "
    "every graphed matrix at the end of training (LoRA: s·B·A). High-frequency share: the part "
    "of ‖ΔW‖² in the upper half of each graph's spectrum (by rank), pooled over matrices; lower "
    "means a smoother update over the graph. Energy: Σ tr(ΔWᵀ L ΔW). Graph build: seconds to "
    "build and eigendecompose every graph (once per model; later runs load the cached bases "
    "and show the first build). Mean ± 95% interval over seeds. Plain LoRA builds no graphs, so "
    "it has no share here."
)


def spectral_summary(run: RunData) -> dict[str, Any] | None:
    """The run's spectral term summary (both terms share one set of graphs), None without one."""
    for name, summary in run.term_summaries.items():
        if name.startswith("spectral") and isinstance(summary, dict):
            return summary
    return None


def spectral_section(doc: Doc, data: BenchData) -> None:
    """A table of the update's size and smoothness per arm and task, and a few graph spectra."""
    started = False
    for cond in conditions(data.runs):
        summaries = {r.key: s for r in cond.runs if (s := spectral_summary(r)) is not None}
        with_graphs = [r for r in cond.runs if r.key in summaries]
        if not with_graphs:
            continue
        if not started:
            doc.add(Heading("Spectral diagnostics"), Paragraph(_TEXT))
            started = True
        doc.add(Heading(cond.title, 3))
        rows = []
        for task in dict.fromkeys(r.task for r in with_graphs):
            for v in cond.variants():
                own = [summaries[r.key] for r in with_graphs if r.variant == v and r.task == task]
                if not own:
                    continue
                cells = []
                for key, scale in QUANTITIES:
                    values = [
                        scale * float(s[key]) for s in own if isinstance(s.get(key), (int, float))
                    ]
                    cells.append(fmt_interval(mean_ci(values), percent=False) if values else "n/a")
                graphs = sorted({int(s.get("graphs", 0)) for s in own})
                rows.append((task, v, "/".join(map(str, graphs)), *cells, str(len(own))))
        doc.add(
            Table(
                (
                    "task",
                    "method",
                    "graphs",
                    "‖ΔW‖",
                    "high-frequency share (%)",
                    "energy",
                    "graph build (s)",
                    "runs",
                ),
                tuple(rows),
            )
        )
        first = with_graphs[0]
        spectra = summaries[first.key].get("spectra") or {}
        series = {
            name.removeprefix("base_model.model."): [
                (i / max(len(lam) - 1, 1), float(x), None) for i, x in enumerate(lam)
            ]
            for name, lam in list(spectra.items())[:SPECTRA_SHOWN]
            if isinstance(lam, list) and lam
        }
        if series:
            doc.figure(
                f"graph-spectra-{cond.title}",
                figures.line_figure(
                    series,
                    title=f"Laplacian spectra ({cond.title})",
                    xlabel="rank / (nodes - 1)",
                    ylabel="eigenvalue",
                ),
                f"Laplacian eigenvalues of the first {len(series)} graphs of {cond.model} "
                f"(from {first.variant} on {first.task}, seed {first.seed}), at evenly spaced "
                "ranks.",
            )
