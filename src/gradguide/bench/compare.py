"""Several methods on the same k-shot samples and seeds, summarised as mean ± 95% interval.

``compare`` is the library function behind ``gradguide compare``: for each seed the k-shot sample
is drawn once (it depends only on task, shots and seed), so every method sees the same examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from gradguide.bench.stats import Interval, mean_ci
from gradguide.methods import get_method
from gradguide.train import TrainConfig, TrainResult, train


@dataclasses.dataclass
class MethodSummary:
    """One method's results over the seeds."""

    method: str
    metrics: dict[str, Interval]
    wall_s: Interval
    trainable_parameters: int
    runs: list[str]


def compare(
    base: TrainConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    show_progress: bool = False,
    on_run: Any = None,
) -> list[MethodSummary]:
    """Train/evaluate every method for every seed (``base`` gives everything else)."""
    for m in methods:
        get_method(m)  # fail before any run if a name is wrong
    results: dict[str, list[TrainResult]] = {m: [] for m in methods}
    for seed in seeds:
        for m in methods:
            r = train(dataclasses.replace(base, method=m, seed=seed), show_progress=show_progress)
            results[m].append(r)
            if on_run is not None:
                on_run(m, seed, r)
    summaries = []
    for m, rs in results.items():
        names = list(rs[0].metrics)
        summaries.append(
            MethodSummary(
                method=m,
                metrics={k: mean_ci([r.metrics[k] for r in rs]) for k in names},
                wall_s=mean_ci([r.record["timings"]["total_s"] for r in rs]),
                trainable_parameters=rs[0].record["trainable_parameters"],
                runs=[str(r.run_dir) for r in rs],
            )
        )
    return summaries
