"""Settings chosen by cross-validation on the k shots, never on the evaluation set.

A tuning grid sets ``base.cv_folds`` and sweeps ``cv_fold`` over every fold beside the settings to
choose from (the ``tune-lr`` preset): each run trains on the other folds of its k shots and scores
the held-out one (gradguide.train_data.cv_split). ``choose`` reads those runs from a bench store.
A candidate's score on one (task, seed) cell is its mean over the folds; its score is the mean over
the cells that every candidate of its (model, method, shots) completed, all folds included. The
highest mean among the candidates none of whose runs failed the gradient check (gradguide.health)
is chosen (a tie goes to the candidate listed first in the grid): a setting whose update was not
the task's is no choice, whatever it scored. The choice is compared with the runner-up cell by
cell, so a reader sees whether it is a choice or a coin toss.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from gradguide.bench.store import RunRow
from gradguide.errors import GradguideError

Cell = tuple[str, int]  # (task, seed)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One combination of the tuned settings and its held-out scores."""

    settings: dict[str, Any]
    #: (task, seed) → mean held-out metric over the folds
    cells: dict[Cell, float]
    #: its runs in those cells, and how many of them failed the gradient check
    runs: int = 0
    failed_runs: int = 0

    @property
    def mean(self) -> float:
        """The mean over cells of the per-cell fold means."""
        return statistics.fmean(self.cells.values())

    def label(self) -> str:
        """``optim.lr=0.003`` (settings joined by spaces)."""
        return " ".join(f"{k}={v}" for k, v in self.settings.items()) or "(defaults)"


@dataclasses.dataclass(frozen=True)
class Choice:
    """The candidates tried for one (model, method, shots) and the one chosen."""

    model: str
    method: str
    shots: int
    metric: str
    folds: int
    candidates: list[Candidate]
    #: cells left out because some candidate lacks a fold there (a run failed or is still to run)
    incomplete: list[Cell]

    @property
    def best(self) -> Candidate | None:
        """The highest mean of the candidates that pass the gradient check (the first listed
        among equals); None when every candidate has a failing run."""
        passing = [c for c in self.candidates if not c.failed_runs]
        return max(passing, key=lambda c: c.mean) if passing else None  # max keeps the first

    def runner_up(self) -> Candidate | None:
        """The best of the other passing candidates (None without one)."""
        best = self.best
        others = [c for c in self.candidates if c is not best and not c.failed_runs]
        return max(others, key=lambda c: c.mean) if others else None

    def margin(self) -> tuple[Candidate, float, int, int] | None:
        """The runner-up, and best minus it: mean paired difference, cells won, cells compared."""
        best, other = self.best, self.runner_up()
        if best is None or other is None:
            return None
        diffs = [best.cells[c] - other.cells[c] for c in best.cells]
        return other, statistics.fmean(diffs), sum(d > 0 for d in diffs), len(diffs)


def is_cv_row(row: RunRow) -> bool:
    """Whether a stored run scored a held-out fold of its shots (a tuning run)."""
    return bool(row.config.get("cv_folds"))


def record_check(bench_dir: str | Path) -> Callable[[RunRow], bool]:
    """Whether a stored run failed its gradient check, from its record under ``bench_dir``
    (a run whose record is missing counts as failed: nothing shows it passed)."""

    def failed(row: RunRow) -> bool:
        try:
            record = json.loads((Path(bench_dir) / row.run_dir / "record.json").read_text())
        except (OSError, ValueError):
            return True
        return bool((record.get("gradient_check") or {}).get("failed"))

    return failed


def choose(
    rows: Iterable[RunRow],
    metric: str = "accuracy",
    failed: Callable[[RunRow], bool] = lambda _row: False,
) -> list[Choice]:
    """The choice per (model, method, shots) from the tuning runs among ``rows`` (others ignored);
    ``failed`` says whether a run failed its gradient check (``record_check(bench_dir)``).

    GradguideError when a tuning run lacks ``metric`` or no cell is complete for a group.
    """
    groups: dict[tuple[str, str, int], list[RunRow]] = {}
    for row in rows:
        if is_cv_row(row):
            groups.setdefault((row.model, row.method, row.shots), []).append(row)
    return [_choice(key, members, metric, failed) for key, members in groups.items()]


def _choice(
    key: tuple[str, str, int], rows: list[RunRow], metric: str, failed: Callable[[RunRow], bool]
) -> Choice:
    model, method, shots = key
    folds = {int(r.config["cv_folds"]) for r in rows}
    if len(folds) != 1:
        raise GradguideError(
            f"{model} {method} k={shots}: tuning runs with different cv_folds {sorted(folds)}"
        )
    (n_folds,) = folds
    scores: dict[tuple[tuple[tuple[str, Any], ...], Cell], dict[int, float]] = {}
    failing: dict[tuple[tuple[tuple[str, Any], ...], Cell], int] = {}
    order: list[tuple[tuple[str, Any], ...]] = []
    for r in rows:
        if metric not in r.metrics:
            raise GradguideError(
                f"tuning run {r.run_dir} has no {metric!r} (it has {', '.join(r.metrics)})",
                field="--metric",
            )
        tuned = tuple((k, v) for k, v in r.settings.items() if k != "cv_fold")
        if tuned not in order:
            order.append(tuned)
        fold = int(r.config.get("cv_fold", 0))
        scores.setdefault((tuned, (r.task, r.seed)), {})[fold] = float(r.metrics[metric])
        if failed(r):
            failing[(tuned, (r.task, r.seed))] = failing.get((tuned, (r.task, r.seed)), 0) + 1
    cells = sorted({cell for _, cell in scores})
    complete = [
        cell
        for cell in cells
        if all(len(scores.get((tuned, cell), {})) == n_folds for tuned in order)
    ]
    if not complete:
        raise GradguideError(
            f"{model} {method} k={shots}: no (task, seed) has every fold of every candidate "
            "(run the tuning grid to the end)"
        )
    candidates = [
        Candidate(
            dict(tuned),
            {cell: statistics.fmean(scores[(tuned, cell)].values()) for cell in complete},
            runs=n_folds * len(complete),
            failed_runs=sum(failing.get((tuned, cell), 0) for cell in complete),
        )
        for tuned in order
    ]
    incomplete = [c for c in cells if c not in complete]
    return Choice(model, method, shots, metric, n_folds, candidates, incomplete)


def choice_lines(choices: Sequence[Choice]) -> list[str]:
    """A plain-text table per choice: each candidate's mean held-out score, the chosen one marked,
    the margin over the runner-up and the setting to pass to a grid."""
    lines: list[str] = []
    for ch in choices:
        cells = ch.candidates[0].cells
        tasks = sorted({task for task, _ in cells})
        seeds = sorted({seed for _, seed in cells})
        lines.append(
            f"{ch.model} {ch.method} k={ch.shots}: {ch.metric} on the held-out fold, mean of "
            f"{ch.folds} folds, then over {len(cells)} cells (tasks "
            f"{', '.join(tasks)}; seeds {', '.join(map(str, seeds))})"
        )
        width = max(len(c.label()) for c in ch.candidates)
        for c in ch.candidates:
            mark = "  <- chosen" if c is ch.best else ""
            if c.failed_runs:
                mark = f"  fails the gradient check in {c.failed_runs} of {c.runs} runs"
            per_task = "  ".join(
                f"{task} {statistics.fmean(v for (t, _), v in c.cells.items() if t == task):.3f}"
                for task in tasks
            )
            lines.append(f"  {c.label():<{width}}  {c.mean:.3f}   ({per_task}){mark}")
        margin = ch.margin()
        if margin is not None:
            other, diff, won, n = margin
            lines.append(
                f"  chosen over {other.label()}: {diff:+.3f} mean paired difference, "
                f"higher in {won} of {n} cells"
            )
        if ch.incomplete:
            lines.append(f"  left out (a fold missing): {len(ch.incomplete)} cells")
        if ch.best is None:
            lines.append("  no choice: every candidate has runs that fail the gradient check")
            continue
        sets = " ".join(f"--set base.{k}={v}" for k, v in ch.best.settings.items())
        lines.append(f"  in a grid: {sets}" if sets else "")
    return [line for line in lines if line]
