"""Settings chosen on the k shots: the tuning grids' cross-validation (gradguide.bench.tune)."""

from __future__ import annotations

from gradguide.bench.tune import choose, record_check
from gradguide.errors import GradguideError
from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Paragraph, Table


def tuning_section(doc: Doc, data: BenchData) -> None:
    """One row per candidate: its mean held-out accuracy, the chosen one marked."""
    if not data.tuning:
        return
    doc.add(Heading("Settings chosen on the k shots"))
    try:
        choices = choose(data.tuning, failed=record_check(data.bench_dir))
    except GradguideError as e:
        doc.add(Paragraph(f"{len(data.tuning)} cross-validation runs, no choice yet: {e}."))
        return
    rows = []
    for ch in choices:
        margin = ch.margin()
        for c in ch.candidates:
            chosen = c is ch.best
            versus = f"fails the gradient check in {c.failed_runs} of {c.runs} runs" * bool(
                c.failed_runs
            )
            if chosen and margin is not None:
                other, diff, won, n = margin
                versus = f"{diff * 100:+.1f} pp vs {other.label()}, higher in {won} of {n} cells"
            rows.append(
                (
                    f"{ch.model} {ch.method} k={ch.shots}",
                    c.label(),
                    f"{c.mean * 100:.1f}",
                    str(len(c.cells)),
                    "chosen" if chosen else "",
                    versus,
                )
            )
    doc.add(
        Table(
            (
                "model, method",
                "setting",
                f"held-out {choices[0].metric} (%)",
                "cells",
                "",
                "margin",
            ),
            tuple(rows),
            caption="Cross-validation on each seed's k shots (`gradguide tune`): every run trains "
            "on all folds but one and scores the held-out fold; a setting's score is its mean over "
            "the folds, then over the (task, seed) cells every candidate completed; a setting with "
            "runs that fail the gradient check is not chosen. These runs "
            "are kept out of every result above: no evaluation set chose a setting.",
        )
    )
