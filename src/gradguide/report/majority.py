"""The majority-class floor of an evaluation set, for records that predate ``data.eval_majority``:
read from the task's own data (gradguide.tasks) by the ids the run scored, when the data is here."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence

from gradguide.errors import GradguideError
from gradguide.tasks import get_task
from gradguide.tasks.dataroot import resolve_data_root


def majority_of(task: str, split: str | None, ids: Sequence[str]) -> float | None:
    """The share of the most common gold label among ``ids`` of ``task``'s ``split`` (None: the
    task, its split or one of the ids is not found here)."""
    if not split or not ids:
        return None
    golds = _golds(task, split)
    if golds is None or any(i not in golds for i in ids):
        return None
    return max(Counter(golds[i] for i in ids).values()) / len(ids)


@functools.lru_cache(maxsize=64)
def _golds(task: str, split: str) -> dict[str, int] | None:
    try:
        root = resolve_data_root()
        return {x.id: x.gold for x in get_task(task).load(split, root)}
    except (GradguideError, OSError, ValueError, KeyError):
        return None
