"""Pre-run checks of a grid's runs: guidance that can run, data that is there, models installed.

Each problem is found before the grid trains anything, not mid-grid.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from gradguide.bench.spec import GridRun
from gradguide.config import to_dict
from gradguide.errors import GradguideError
from gradguide.evaluate import limit_instances, resolve_task
from gradguide.guidance import build_penalties, parse_guidance
from gradguide.guidance.priors import check_prior_fits
from gradguide.models import model_kind
from gradguide.tasks import get_task, resolve_data_root, sample_k_shot
from gradguide.train_config import TrainConfig, as_eval_config


def check_guidance(config: TrainConfig) -> None:
    """Guidance that cannot run (alignment without a source, the pretrain prior on an encoder)
    fails here, not mid-grid."""
    g = config.guidance
    penalties = build_penalties(
        parse_guidance(g.use), g, has_source=bool(g.source_task or g.source_run)
    )
    if g.source_task:
        get_task(g.source_task)
    if any(p.needs_prior for p in penalties):
        check_prior_fits(g.prior, config.model, model_kind(config.model))


@dataclasses.dataclass(frozen=True)
class DataCheck:
    """What checking the data found: evaluation-set sizes per task and any problems."""

    eval_sizes: dict[str, int]
    problems: list[str]
    #: mean characters of a (prompt + longest answer) per task: (training pool, evaluation set)
    chars: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)


def _data_signature(config: TrainConfig) -> str:
    return json.dumps(
        [
            config.task,
            config.template,
            config.verbalizer,
            to_dict(config.user_task),
            config.data_dir,
            config.eval_split,
            config.eval_limit,
        ],
        sort_keys=True,
    )


def check_data(runs: Sequence[GridRun], source: str = "<grid>") -> DataCheck:
    """Load each task's data once: is it there, are there enough examples for every ``shots``."""
    groups: dict[str, list[GridRun]] = {}
    for r in runs:
        groups.setdefault(_data_signature(r.config), []).append(r)
    sizes: dict[str, int] = {}
    chars: dict[str, tuple[float, float]] = {}
    problems: list[str] = []
    for group in groups.values():
        c = group[0].config
        try:
            root = resolve_data_root(c.data_dir)
            task = resolve_task(as_eval_config(c))
            pool = task.load(task.train_split, root)
            evals = limit_instances(task.load(c.eval_split or task.eval_split, root), c.eval_limit)
            sizes[c.task] = len(evals)
            chars[c.task] = (_mean_chars(pool), _mean_chars(evals))
            most = max(r.config.shots for r in group)
            sample_k_shot(pool, most, 0)
        except GradguideError as e:
            problems.append(f"{source}: task {c.task}: {e}")
    return DataCheck(sizes, problems, chars)


def _mean_chars(instances: Sequence[Any]) -> float:
    """Mean length of what a model reads per instance: the prompt and its longest answer."""
    if not instances:
        return 0.0
    return sum(len(i.prompt) + max(map(len, i.candidates)) for i in instances) / len(instances)


def check_models(runs: Sequence[GridRun], source: str = "<grid>") -> list[str]:
    """Registered models that are not installed here (each a line saying how to install it)."""
    from gradguide.models import list_models

    wanted = {r.config.model for r in runs}
    return [
        f"{source}: model {m.name} is not available here: {m.where}"
        for m in list_models()
        if m.name in wanted and not m.available
    ]
