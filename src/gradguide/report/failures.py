"""The runs that failed and have not finished since (their latest error)."""

from __future__ import annotations

from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Table


def failures_section(doc: Doc, data: BenchData) -> None:
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
