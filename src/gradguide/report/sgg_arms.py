"""The SGG arms of the report's conditions and the grid cells they were planned for, shared by
the SGG claims (gradguide.report.claims_sgg, claims_sgg_domains)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from gradguide.report.analysis import Condition, conditions
from gradguide.report.data import BenchData, RunData

SGG = "sgg"


def sgg_conditions(data: BenchData) -> list[Condition]:
    """The conditions in which some SGG arm ran."""
    return [c for c in conditions(data.runs) if sgg_variants(c)]


def condition_label(cond: Condition, variant: str) -> str:
    """The condition, and the swept settings of the SGG variant judged in it."""
    swept = cond.runs_of(variant)[0].settings_label
    return f"{cond.title}; {swept}" if swept else cond.title


def sgg_variants(cond: Condition) -> list[str]:
    """The SGG arms of ``cond``: the default weights, then each swept setting (a weight chosen
    on the k shots runs as one), each judged apart: pooled, one could hide the other."""
    return [v for v in cond.variants() if cond.runs_of(v)[0].method == SGG]


def planned_cells(data: BenchData, runs: Sequence[RunData]) -> set[tuple[str, int]]:
    """The (task, seed) cells the stored grids that ran ``runs`` ask for at their model and
    shots."""
    out: set[tuple[str, int]] = set()
    for r in runs:
        spec = data.grids.get(r.grid) or {}
        if r.model in spec.get("models", ()) and r.shots in spec.get("shots", ()):
            out.update(itertools.product(spec.get("tasks", ()), spec.get("seeds", ())))
    return out


def ran_cells(cond: Condition, variants: Sequence[str]) -> set[tuple[str, int]]:
    """The (task, seed) cells every one of ``variants`` has a run on."""
    sets = [{(r.task, r.seed) for r in cond.runs_of(v)} for v in variants]
    return set.intersection(*sets) if sets else set()
