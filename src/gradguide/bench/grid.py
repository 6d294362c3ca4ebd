"""Experiment grids: a YAML spec (models × tasks × methods × shots × seeds × sweeps) made into runs.

A grid file::

    name: my-grid
    models: [smollm2-135m]          # or model: smollm2-135m
    tasks: [rte, cb]
    methods: [zero-shot, lora]
    shots: [32]
    seeds: [1, 2, 3]
    base: {optim: {epochs: 10}, eval_limit: 500}   # any TrainConfig setting, nested or dotted
    method_base: {sgg: {guidance.source_task: sst2}}  # optional: settings of one method only
    model_base: {minilm-l6: {optim.lr: 3.0e-3}}    # optional: settings of one model only
    sweep:                                         # optional
      - {methods: [lora], optim.lr: [1.0e-4, 1.0e-3]}

A method is a name of gradguide.methods or a guidance name of gradguide.guidance (``sgg``,
``sgg-dir``, …: LoRA trained with that guidance; ``ofa-step``, ``ofa-sharp``: LayerNorm tuning with
it; as in ``gradguide compare``). ``method_base`` gives settings to some methods only and
``model_base`` to some models only (a learning rate that suits one model, say); they are part of
the run, not of its swept settings. Later blocks win: base, model_base, method_base, sweep.
``sweep`` is one mapping (the cross product of its lists) or a list of them (their union: one
block per swept setting gives a one-at-a-time sensitivity grid). A block's ``methods`` limits it to
those methods; methods no block covers run once with the base settings, and a block of
``methods`` alone (``- {methods: [sgg]}``) runs them with the base settings beside their swept
variants. Expansion is deterministic (model, shots, seed, task, method, sweep order) and every run
gets a stable key, the hash of its full configuration, which the results store uses to skip
finished runs. Every problem (unknown method, task, model or setting, a bad value) is a
GradguideError naming the file and the field before anything runs.

Here the spec (gradguide.bench.spec) is expanded into its runs; run keys are in
gradguide.bench.keys and the checks before a grid runs in gradguide.bench.checks. Their public
names are importable from here as well.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gradguide.bench.checks import DataCheck, check_data, check_guidance, check_models
from gradguide.bench.compare import arm_method, composite_arm, is_guidance_arm, recipe
from gradguide.bench.keys import KEY_VERSION, PENALTY_REVISION, _has_active_penalty, run_key
from gradguide.bench.spec import (
    AXES,
    PLANNED_METHODS,
    PRESETS_DIR,
    GridRun,
    GridSpec,
    SweepBlock,
    departures_from_preset,
    list_presets,
    load_grid,
    parse_grid,
    preset_path,
    setting_type,
    spec_from_stored,
)
from gradguide.bench.store import RunRow
from gradguide.config import from_dict, merge, nest
from gradguide.errors import GradguideError
from gradguide.train_config import TrainConfig, validate

__all__ = [
    "AXES",
    "KEY_VERSION",
    "PENALTY_REVISION",
    "PLANNED_METHODS",
    "PRESETS_DIR",
    "DataCheck",
    "GridRun",
    "GridSpec",
    "SweepBlock",
    "_has_active_penalty",
    "check_data",
    "check_models",
    "departures_from_preset",
    "expand_grid",
    "grid_keys",
    "list_presets",
    "load_grid",
    "parse_grid",
    "preset_path",
    "run_key",
    "setting_type",
    "spec_from_stored",
    "stored_grid_keys",
    "stored_grid_rows",
    "stored_grid_runs",
    "sweeps_cv_fold",
]


def _combos_for(spec: GridSpec, method: str) -> list[dict[str, Any]]:
    blocks = [b for b in spec.sweep if b.methods is None or method in b.methods]
    if not blocks:
        return [{}]
    return [combo for b in blocks for combo in b.combos()]


def expand_grid(spec: GridSpec) -> list[GridRun]:
    """Every run of the grid in a deterministic order, validated, duplicates (same key) merged."""
    base_nested = nest(spec.base)
    runs: list[GridRun] = []
    seen: set[str] = set()
    for model, shots, seed, task, method in itertools.product(
        spec.models, spec.shots, spec.seeds, spec.tasks, spec.methods
    ):
        own = spec.method_base.get(method, {})
        for_model = spec.model_base.get(model, {})
        as_guidance = is_guidance_arm(method) or composite_arm(method) is not None
        trained = arm_method(method)
        axes = {"model": model, "task": task, "method": trained, "shots": shots, "seed": seed}
        # base < model_base < method_base, then each swept combination on top
        fixed = merge(merge(merge(base_nested, axes), nest(for_model)), nest(own))
        for combo in _combos_for(spec, method):
            data = merge(fixed, nest(combo))
            try:
                config = from_dict(TrainConfig, data, source=spec.source)
                if as_guidance:
                    config = recipe(config, method)
                validate(config)
                check_guidance(config)
            except GradguideError as e:
                field = e.field or ""
                if field in combo:
                    field = f"sweep.{field}"
                elif field in own:
                    field = f"method_base.{method}.{field}"
                elif field in for_model:
                    field = f"model_base.{model}.{field}"
                elif field in spec.base:
                    field = f"base.{field}"
                elif field in AXES:
                    field = AXES[field]
                raise GradguideError(e.message, file=spec.source, field=field or None) from None
            key = run_key(config)
            if key in seen:
                continue
            seen.add(key)
            runs.append(GridRun(len(runs), key, config, dict(combo)))
    return runs


def grid_keys(spec: GridSpec) -> set[str]:
    """The run keys a grid asks for, including runs another grid already finished for it."""
    return {run.key for run in expand_grid(spec)}


def stored_grid_runs(name: str, stored: Mapping[str, Any], root: Path) -> dict[str, dict[str, Any]]:
    """Run key → swept settings of the stored grid ``name`` (a store's ``grids()``) as this
    version of gradguide expands it: its own runs and those another grid had already finished
    for it (stored with that grid's settings)."""
    if name not in stored:
        known = ", ".join(stored) or "none"
        raise GradguideError(f"no grid {name!r} is stored here (stored: {known})", file=root)
    try:
        return {run.key: run.settings for run in expand_grid(spec_from_stored(stored[name]))}
    except GradguideError as e:
        raise GradguideError(
            f"the stored grid {name!r} no longer expands ({e}); use the whole directory",
            file=root,
        ) from None


def stored_grid_keys(name: str, stored: Mapping[str, Any], root: Path) -> set[str]:
    """The run keys of the stored grid ``name`` (``stored_grid_runs``)."""
    return set(stored_grid_runs(name, stored, root))


def stored_grid_rows(
    rows: Iterable[RunRow], name: str, stored: Mapping[str, Any], root: Path
) -> list[RunRow]:
    """The stored rows the grid ``name`` asks for (its own and those another grid finished for
    it), each named by this grid's swept settings rather than those of the grid that ran it."""
    wanted = stored_grid_runs(name, stored, root)
    return [dataclasses.replace(r, settings=wanted[r.key]) for r in rows if r.key in wanted]


def sweeps_cv_fold(stored: Mapping[str, Any]) -> bool:
    """Whether a stored grid spec is a tuning grid: one of its sweep blocks sweeps ``cv_fold``."""
    return any("cv_fold" in (block.get("values") or {}) for block in stored.get("sweep") or [])
