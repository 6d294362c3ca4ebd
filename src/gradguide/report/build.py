"""Assemble the report from a bench directory: the sections in order, each from its own module.

Every section appends to one ``Doc`` (gradguide.report.doc) and exists only when its data does;
this module calls them in the report's order and writes report.md and report.html.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from gradguide.atomic import write_bytes_atomic, write_text_atomic
from gradguide.report.ablation import ablation_section
from gradguide.report.claims import PAPERS
from gradguide.report.claims_section import claims_section
from gradguide.report.comparisons import comparisons_section
from gradguide.report.convergence import convergence_section
from gradguide.report.cost import cost_section
from gradguide.report.curves import loss_curves_section
from gradguide.report.data import BenchData, load_bench
from gradguide.report.doc import Doc
from gradguide.report.domains import domains_section
from gradguide.report.dynamics import dynamics_section
from gradguide.report.failures import failures_section
from gradguide.report.one_label import one_label_section
from gradguide.report.overview import overview_section
from gradguide.report.peers import peers_section
from gradguide.report.per_layer import per_layer_section
from gradguide.report.provenance import provenance_section, relative_paths
from gradguide.report.render import FIGURES_DIR, Block, Figure, Paragraph, to_html, to_markdown
from gradguide.report.results import results_section
from gradguide.report.sample_size import sample_size_section
from gradguide.report.sanity import Limits, check, sanity_section
from gradguide.report.sensitivity import sensitivity_section
from gradguide.report.spectral_diag import spectral_section
from gradguide.report.summary import summary_section
from gradguide.report.superseded import superseded_section
from gradguide.report.tuning import tuning_section

REPORT_MD = "report.md"
REPORT_HTML = "report.html"


@dataclasses.dataclass(frozen=True)
class ReportFiles:
    """Where the report was written."""

    markdown: Path
    html: Path
    figures: list[Path]


_NAMED_GRIDS = 3  # more grids than this are counted in the title, and listed under Provenance


def _subject(data: BenchData) -> str:
    """What the title says the report is about: its grids by name, or counted when many."""
    if not data.grids:
        return data.bench_dir.name
    if len(data.grids) <= _NAMED_GRIDS:
        return ", ".join(data.grids)
    return f"{len(data.runs)} runs of {len(data.grids)} grids (listed under Provenance)"


def build_report(data: BenchData, limits: Limits | None = None) -> tuple[str, list[Block]]:
    """The report's title and blocks for the runs of one bench directory: the verdicts and the
    figure a reader wants first, the sanity checks, the details, and provenance at the end.
    ``limits``: where the sanity checks fail a run (gradguide.report.sanity)."""
    doc = Doc()
    title = f"gradguide report: {_subject(data)}"
    if not data.runs:
        doc.add(Paragraph("No finished runs are stored in this bench directory yet."))
        tuning_section(doc, data)
        failures_section(doc, data)
        return title, relative_paths(doc.blocks, data.bench_dir)
    sanity = check(data, limits)
    results = [(paper, paper.checked(data, sanity)) for paper in PAPERS]
    summary_section(doc, data, results, sanity)
    sanity_section(doc, data, sanity)
    one_label_section(doc, data)
    overview_section(doc, data)
    claims_section(doc, results)
    results_section(doc, data, sanity)
    peers_section(doc, data)
    comparisons_section(doc, data)
    sample_size_section(doc, data)
    domains_section(doc, data)
    loss_curves_section(doc, data)
    convergence_section(doc, data)
    spectral_section(doc, data)
    cost_section(doc, data)
    dynamics_section(doc, data)
    ablation_section(doc, data)
    per_layer_section(doc, data)
    sensitivity_section(doc, data)
    tuning_section(doc, data)
    failures_section(doc, data)
    superseded_section(doc, data)
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
