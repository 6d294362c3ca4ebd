"""Settings chosen on the k shots: the tuning grids' cross-validation (gradguide.bench.tune)."""

from __future__ import annotations

from gradguide.bench.grid import stored_grid_rows, sweeps_cv_fold
from gradguide.bench.store import RunRow
from gradguide.bench.tune import Choice, choose, record_check
from gradguide.errors import GradguideError
from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Paragraph, Table


def tuning_grids(data: BenchData) -> dict[str, list[RunRow]]:
    """Per stored tuning grid, the cross-validation runs it asks for (its own and those another
    grid finished for it), named by its own swept settings: each tuning grid is one choice, so
    the candidates of two grids (learning rates, step counts) are never ranked against each
    other."""
    out: dict[str, list[RunRow]] = {}
    for name, spec in data.grids.items():
        if not sweeps_cv_fold(spec):
            continue
        try:
            mine = stored_grid_rows(data.tuning, name, data.grids, data.bench_dir)
        except GradguideError:  # a spec this version no longer expands: the rows it stored
            mine = [r for r in data.tuning if r.grid == name]
        if mine:
            out[name] = mine
    claimed = {r.key for rows in out.values() for r in rows}
    for r in data.tuning:  # rows of a grid the store does not describe
        if r.key not in claimed:
            out.setdefault(r.grid, []).append(r)
    return out


def tuning_section(doc: Doc, data: BenchData) -> None:
    """One row per candidate of each tuning grid: its mean held-out accuracy, the chosen one
    marked."""
    if not data.tuning:
        return
    doc.add(Heading("Settings chosen on the k shots"))
    failed = record_check(data.bench_dir)
    choices: list[tuple[str, Choice]] = []
    for name, rows_of_grid in tuning_grids(data).items():
        try:
            choices += [(name, ch) for ch in choose(rows_of_grid, failed=failed)]
        except GradguideError as e:
            doc.add(
                Paragraph(f"{name}: {len(rows_of_grid)} cross-validation runs, no choice yet: {e}.")
            )
    if not choices:
        return
    rows = []
    for grid, ch in choices:
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
                    grid,
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
                "tuning grid",
                "model, method",
                "setting",
                f"held-out {choices[0][1].metric} (%)",
                "cells",
                "",
                "margin",
            ),
            tuple(rows),
            caption="Cross-validation on each seed's k shots (`gradguide tune`): every run trains "
            "on all folds but one and scores the held-out fold; a setting's score is its mean over "
            "the folds, then over the (task, seed) cells every candidate completed, one choice per "
            "tuning grid (a run another grid finished for it counts, under its settings); a "
            "setting with "
            "runs that fail the gradient check is not chosen. These runs "
            "are kept out of every result above: no evaluation set chose a setting.",
        )
    )
