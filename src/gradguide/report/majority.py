"""The majority-class floor of an evaluation set, for records that predate ``data.eval_majority``:
read from the task's own data (gradguide.tasks) by the ids the run scored, when the data is here."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from gradguide.errors import GradguideError
from gradguide.metrics import majority_accuracy
from gradguide.tasks import get_task
from gradguide.tasks.base import Instance
from gradguide.tasks.dataroot import resolve_data_root


def majority_of(task: str, split: str | None, ids: Sequence[str]) -> float | None:
    """``majority_accuracy`` of the ``ids`` of ``task``'s ``split`` (None: the task, its split or
    one of the ids is not found here)."""
    if not split or not ids:
        return None
    by_id = _instances(task, split)
    if by_id is None or any(i not in by_id for i in ids):
        return None
    return majority_accuracy([by_id[i] for i in ids])


@functools.lru_cache(maxsize=64)
def _instances(task: str, split: str) -> dict[str, Instance] | None:
    try:
        return {x.id: x for x in get_task(task).load(split, resolve_data_root())}
    except (GradguideError, OSError, ValueError, KeyError):
        return None
