"""A training run's data: its k-shot sample, its evaluation set and the order of its batches.

All three are pure functions of the configuration and the seed (never of global RNG state), so a
resumed run, a re-evaluation and a prediction see exactly the instances the run trained on.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from gradguide.evaluate import limit_instances, resolve_task
from gradguide.tasks import resolve_data_root, sample_k_shot
from gradguide.tasks.base import Instance, Task
from gradguide.train_config import TrainConfig, as_eval_config


@dataclasses.dataclass
class RunData:
    """The task, where its data lives, the k-shot training sample and the evaluation set."""

    task: Task
    data_root: Path | None
    train: list[Instance]
    eval: list[Instance]


def prepare_data(config: TrainConfig) -> RunData:
    """Load the task, draw the run's k-shot sample and cut its evaluation set."""
    data_root = resolve_data_root(config.data_dir)
    task = resolve_task(as_eval_config(config))
    pool = task.load(task.train_split, data_root)
    train = sample_k_shot(pool, config.shots, config.seed)
    if config.cv_folds:
        train, held_out = cv_split(train, config.cv_folds, config.cv_fold, config.seed)
        return RunData(task, data_root, train, held_out)
    split = config.eval_split or task.eval_split
    eval_set = limit_instances(task.load(split, data_root), config.eval_limit)
    return RunData(task, data_root, train, eval_set)


def cv_split(
    shots: list[Instance], folds: int, fold: int, seed: int
) -> tuple[list[Instance], list[Instance]]:
    """The k shots without fold ``fold`` (in their order) and that fold: label-stratified,
    seeded folds of whole groups (MultiRC's questions), so each fold is held out once."""
    units: dict[str, list[Instance]] = {}
    for x in shots:
        units.setdefault(x.group if x.group is not None else x.id, []).append(x)
    by_label: dict[str, list[str]] = {}
    for unit, members in units.items():
        by_label.setdefault(members[0].label, []).append(unit)
    rng = random.Random(f"gradguide-cv-{seed}")
    dealt: list[str] = []
    for label in sorted(by_label):
        ids = sorted(by_label[label])
        rng.shuffle(ids)
        dealt.extend(ids)
    held = {unit for i, unit in enumerate(dealt) if i % folds == fold}
    inside = [x for x in shots if (x.group if x.group is not None else x.id) not in held]
    outside = [x for x in shots if (x.group if x.group is not None else x.id) in held]
    return inside, outside


def data_order(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Indices of each step's batch: a fresh seeded permutation per epoch, cut into batches."""
    rng = random.Random(f"gradguide-order-{seed}")
    batches: list[list[int]] = []
    while len(batches) < steps:
        perm = list(range(n))
        rng.shuffle(perm)
        batches.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return batches[:steps]
