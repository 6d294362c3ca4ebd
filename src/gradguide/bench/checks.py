"""Pre-run checks of a grid's runs: guidance that can run, data that is there, models installed.

Each problem is found before the grid trains anything, not mid-grid.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from gradguide.bench.spec import GridRun
from gradguide.bench.workload import TaskText, single_token
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
    #: what a model reads per instance of each task: (training pool, evaluation set)
    texts: dict[str, tuple[TaskText, TaskText]] = dataclasses.field(default_factory=dict)
    #: whether a decoder scores a task's candidates in one pass (all single tokens), by
    #: (model, task); only where the model's tokenizer could be loaded
    one_pass: dict[tuple[str, str], bool] = dataclasses.field(default_factory=dict)


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


def check_data(
    runs: Sequence[GridRun], source: str = "<grid>", *, tokenizers: bool = False
) -> DataCheck:
    """Load each task's data once: is it there, are there enough examples for every ``shots``.
    With ``tokenizers``, also load each decoder's tokenizer to tell its scoring path (for the
    run-time estimate)."""
    groups: dict[str, list[GridRun]] = {}
    for r in runs:
        groups.setdefault(_data_signature(r.config), []).append(r)
    sizes: dict[str, int] = {}
    texts: dict[str, tuple[TaskText, TaskText]] = {}
    one_pass: dict[tuple[str, str], bool] = {}
    problems: list[str] = []
    for group in groups.values():
        c = group[0].config
        try:
            root = resolve_data_root(c.data_dir)
            task = resolve_task(as_eval_config(c))
            pool = task.load(task.train_split, root)
            evals = limit_instances(task.load(c.eval_split or task.eval_split, root), c.eval_limit)
            sizes[c.task] = len(evals)
            texts[c.task] = (TaskText.of(pool, cache=False), TaskText.of(evals))
            if tokenizers:
                one_pass.update(_one_pass(group, [*pool, *evals]))
            most = max(r.config.shots for r in group)
            sample_k_shot(pool, most, 0)
        except GradguideError as e:
            problems.append(f"{source}: task {c.task}: {e}")
    return DataCheck(sizes, problems, texts, one_pass)


def _one_pass(group: Sequence[GridRun], instances: Sequence[Any]) -> dict[tuple[str, str], bool]:
    """Whether each decoder of ``group`` whose tokenizer loads reads the task in one pass."""
    from gradguide.models import load_tokenizer

    task = group[0].config.task
    out: dict[tuple[str, str], bool] = {}
    for model in sorted({r.config.model for r in group}):
        tokenizer = load_tokenizer(model) if model_kind(model) == "causal" else None
        if tokenizer is not None:
            out[(model, task)] = single_token(
                tokenizer, (c for x in instances for c in x.candidates)
            )
    return out


def check_models(runs: Sequence[GridRun], source: str = "<grid>") -> list[str]:
    """Registered models that are not installed here (each a line saying how to install it)."""
    from gradguide.models import list_models

    wanted = {r.config.model for r in runs}
    return [
        f"{source}: model {m.name} is not available here: {m.where}"
        for m in list_models()
        if m.name in wanted and not m.available
    ]
