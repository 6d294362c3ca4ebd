"""Evaluation without training: zero-shot and in-context learning, with a run record.

``evaluate`` is the library function behind ``gradguide eval``; training runs reuse
``evaluate_instances`` so that every method is measured by the same code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gradguide.atomic import write_text_atomic
from gradguide.config import EvalConfig, to_dict
from gradguide.device import (
    describe,
    model_device,
    peak_memory_mb,
    reset_peak_memory,
)
from gradguide.errors import GradguideError
from gradguide.metrics import compute_metrics, label_counts
from gradguide.models import LoadedModel, load_configured
from gradguide.record import (
    environment,
    new_run_dir,
    peak_rss_mb,
    reset_peak_rss,
    scoring_section,
    write_record,
)
from gradguide.scoring import TRUNCATION_POLICY, ScoringOptions, build_prefix, score_dataset
from gradguide.tasks import get_task, resolve_data_root, user_task
from gradguide.tasks.base import Instance, Task
from gradguide.tasks.sampling import sample_demonstrations

USER_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


@dataclass
class EvalResult:
    """Metrics, per-instance predictions and the record that was written (``run_dir`` if any)."""

    metrics: dict[str, float]
    predictions: list[int]
    scores: list[list[float]]
    record: dict[str, Any]
    run_dir: Path | None = None
    instances: list[Instance] = field(default_factory=list)


def resolve_task(config: EvalConfig) -> Task:
    """A registered task by name, or a user task when ``config.task`` is a data file."""
    if config.task.endswith(USER_FILE_SUFFIXES):
        opts = config.user_task
        return user_task(
            Path(config.task),
            Path(opts.eval_file) if opts.eval_file else None,
            text_fields=tuple(f.strip() for f in opts.text_fields.split(",") if f.strip()),
            label_field=opts.label_field,
            label_words=opts.label_words,
            template=config.template,
        )
    return get_task(config.task, template=config.template, verbalizer=config.verbalizer)


def limit_instances(instances: Sequence[Instance], limit: int | None) -> list[Instance]:
    """The first ``limit`` units in file order (a unit is a MultiRC question, else an instance)."""
    if limit is None:
        return list(instances)
    if limit <= 0:
        raise GradguideError(f"limit must be positive, got {limit}", field="limit")
    kept: list[Instance] = []
    units: set[str] = set()
    for x in instances:
        unit = x.group if x.group is not None else x.id
        if unit not in units:
            if len(units) == limit:
                break
            units.add(unit)
        kept.append(x)
    return kept


def evaluate_instances(
    lm: LoadedModel,
    task: Task,
    instances: Sequence[Instance],
    *,
    demonstrations: Sequence[Instance] = (),
    options: ScoringOptions | None = None,
    show_progress: bool = True,
) -> tuple[dict[str, float], Any, dict[str, Any]]:
    """Score a set and compute the task's metrics; returns metrics, scored set, timing facts."""
    options = options or ScoringOptions()
    prefix = build_prefix(demonstrations, options.demo_separator)
    start = time.perf_counter()
    with tqdm(
        total=len(instances), desc=f"eval {task.name}", unit="ex", disable=not show_progress
    ) as bar:
        scored = score_dataset(lm, instances, prefix, options, progress=bar.update)
    seconds = time.perf_counter() - start
    metrics = compute_metrics(task.metrics, instances, scored.predictions)
    facts = {
        "seconds": seconds,
        "examples_per_s": len(instances) / seconds if seconds > 0 else None,
        "fast_path": scored.fast_path,
        "sequences": scored.sequences,
        "truncated_sequences": scored.truncated,
        "shared_prefixes": scored.shared_prefixes,
        "truncation_policy": TRUNCATION_POLICY,
        "label_counts": label_counts(instances, scored.predictions),
    }
    return metrics, scored, facts


def evaluate(
    config: EvalConfig,
    *,
    lm: LoadedModel | None = None,
    write: bool = True,
    show_progress: bool = True,
) -> EvalResult:
    """Evaluate a model on a task's evaluation split, zero-shot or with demonstrations."""
    own_peak = reset_peak_rss()
    if config.shots < 0:
        raise GradguideError(f"shots must be 0 or more, got {config.shots}", field="shots")
    data_root = resolve_data_root(config.data_dir)
    task = resolve_task(config)
    split = config.split or task.eval_split
    instances = limit_instances(task.load(split, data_root), config.limit)
    demos: list[Instance] = []
    if config.shots:
        pool = task.load(task.train_split, data_root)
        demos = sample_demonstrations(pool, config.shots, config.seed)
    load_start = time.perf_counter()
    if lm is None:
        lm = load_configured(config)
    load_seconds = time.perf_counter() - load_start
    reset_peak_memory(model_device(lm.model))
    metrics, scored, facts = evaluate_instances(
        lm,
        task,
        instances,
        demonstrations=demos,
        options=config.scoring,
        show_progress=show_progress,
    )
    record: dict[str, Any] = {
        "kind": "eval",
        "method": "icl" if demos else "zero-shot",
        "config": to_dict(config),
        "seed": config.seed,
        "environment": environment(),
        "model": {"name": lm.name, "kind": lm.kind, **lm.info},
        "task": {
            "name": task.name,
            "suite": task.suite,
            "template": task.template,
            "verbalizer": dict(task.verbalizer),
            "metrics": list(task.metrics),
            "data_root": str(data_root) if data_root else None,
            "files": {k: str(v) for k, v in task.files(data_root).items()},
        },
        "data": {
            "eval_split": split,
            "eval_size": len(instances),
            "eval_ids": [x.id for x in instances],
            "demonstration_split": task.train_split if demos else None,
            "demonstration_ids": [x.id for x in demos],
        },
        "scoring": scoring_section(config.scoring, facts),
        "metrics": metrics,
        "predictions": facts["label_counts"],
        "timings": {
            "model_load_s": load_seconds,
            "eval_s": facts["seconds"],
            "peak_rss_mb": peak_rss_mb(),
            "peak_device_mb": peak_memory_mb(model_device(lm.model)),
        },
        "device": describe(model_device(lm.model), lm.info.get("dtype", "?"), False),
        # "run": this evaluation alone (model load included unless the model was given)
        "peak_rss_scope": "run" if own_peak else "process",
    }
    run_dir = None
    if write:
        run_dir = new_run_dir(
            config.out,
            f"eval-{lm.name}-{task.name}-{f'icl{len(demos)}' if demos else 'zs'}-s{config.seed}",
        )
        write_record(run_dir, record)
        write_predictions(run_dir, instances, scored)
    return EvalResult(metrics, scored.predictions, scored.scores, record, run_dir, list(instances))


def write_predictions(run_dir: Path, instances: Sequence[Instance], scored: Any) -> None:
    """``predictions.jsonl``: each scored instance's id, gold index, prediction and scores."""
    lines = [
        json.dumps({"id": x.id, "gold": x.gold, "prediction": p, "scores": s})
        for x, p, s in zip(instances, scored.predictions, scored.scores, strict=True)
    ]
    write_text_atomic(run_dir / "predictions.jsonl", "\n".join(lines) + "\n")
