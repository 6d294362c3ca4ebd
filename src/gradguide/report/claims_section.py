"""The papers' claims section: each seed paper's rules and its claims' verdicts, paper by paper
(the verdicts themselves: gradguide.report.claims).
"""

from __future__ import annotations

from collections.abc import Sequence

from gradguide.report.claims import Paper
from gradguide.report.doc import Doc
from gradguide.report.render import BulletList, Heading, Paragraph
from gradguide.report.verdict import ClaimResult


def claims_section(doc: Doc, results: Sequence[tuple[Paper, list[ClaimResult]]]) -> None:
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
