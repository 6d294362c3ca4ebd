"""The superseded runs: runs of a cell that a later run with other settings replaced."""

from __future__ import annotations

from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Table


def superseded_section(doc: Doc, data: BenchData) -> None:
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
