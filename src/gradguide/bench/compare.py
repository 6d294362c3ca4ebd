"""Several methods on the same k-shot samples and seeds, summarised as mean ± 95% interval.

``compare`` is the library function behind ``gradguide compare``: for each seed the k-shot sample
is drawn once (it depends only on task, shots and seed), so every method sees the same examples.
Besides the methods of gradguide.methods, a name of gradguide.guidance.GUIDANCE (``sgg``,
``sgg-dir``, …) means "the base config's trained method (lora by default) with that guidance",
except where gradguide.guidance.GUIDANCE_METHOD names the guidance's own method (``ofa-step`` and
``ofa-sharp`` train layernorm). A name that is both a method and a guidance (``ofa``) is the method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from gradguide.bench.stats import Interval, mean_ci
from gradguide.guidance import GUIDANCE, GUIDANCE_METHOD
from gradguide.methods import get_method, list_methods
from gradguide.train import TrainConfig, TrainResult, train


@dataclasses.dataclass
class MethodSummary:
    """One method's results over the seeds."""

    method: str
    metrics: dict[str, Interval]
    wall_s: Interval
    trainable_parameters: int
    runs: list[str]


def is_guidance_arm(name: str) -> bool:
    """Whether a compared name means guidance (a name that is also a method means the method)."""
    return name in GUIDANCE and name not in {m.name for m in list_methods()}


def recipe(base: TrainConfig, name: str) -> TrainConfig:
    """The config of one compared arm: a method name, or a guidance name on a trained method."""
    if is_guidance_arm(name):
        method = base.method if get_method(base.method).trains else "lora"
        method = GUIDANCE_METHOD.get(name, method)
        guidance = dataclasses.replace(base.guidance, use=name)
        return dataclasses.replace(base, method=method, guidance=guidance)
    get_method(name)
    return dataclasses.replace(
        base, method=name, guidance=dataclasses.replace(base.guidance, use="")
    )


def compare(
    base: TrainConfig,
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    show_progress: bool = False,
    on_run: Any = None,
) -> list[MethodSummary]:
    """Train/evaluate every method for every seed (``base`` gives everything else)."""
    configs = {m: recipe(base, m) for m in methods}  # fails before any run if a name is wrong
    results: dict[str, list[TrainResult]] = {m: [] for m in methods}
    for seed in seeds:
        for m in methods:
            r = train(dataclasses.replace(configs[m], seed=seed), show_progress=show_progress)
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
