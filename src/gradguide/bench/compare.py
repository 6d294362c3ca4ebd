"""Several methods on the same k-shot samples and seeds, summarised as mean ± 95% interval.

``compare`` is the library function behind ``gradguide compare``: for each seed the k-shot sample
is drawn once (it depends only on task, shots and seed), so every method sees the same examples.
Besides the methods of gradguide.methods, a name of gradguide.guidance.GUIDANCE (``sgg``,
``sgg-dir``, …) means "the base config's trained method (lora by default) with that guidance",
except where gradguide.guidance.GUIDANCE_METHOD names the guidance's own method (``ofa-step`` and
``ofa-sharp`` train layernorm). A name that is both a method and a guidance (``ofa``) is the method.
A method and guidance joined by ``+``, in either order (``setfit+sgg``, or ``sgg+setfit`` as the
store names the arm, gradguide.bench.store.arm_name), trains that method with that guidance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from gradguide.bench.stats import Interval, mean_ci
from gradguide.errors import GradguideError
from gradguide.guidance import GUIDANCE, GUIDANCE_METHOD
from gradguide.methods import get_method, list_methods
from gradguide.train import TrainResult, train
from gradguide.train_config import TrainConfig


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


def composite_arm(name: str) -> tuple[str, str] | None:
    """(method, guidance) of ``METHOD+GUIDANCE`` or ``GUIDANCE+METHOD``; None for a plain name.

    The guidance side may list several names (``ofa-step,ofa-sharp+layernorm``). A part that is
    both a method and a guidance (``ofa``) is the method only where no other part is one.
    """
    if "+" not in name:
        return None
    methods = {m.name for m in list_methods()}
    parts = [p.strip() for p in name.split("+")]
    only = [p for p in parts if p in methods and p not in GUIDANCE]
    either = [p for p in parts if p in methods]
    chosen = only if only else either
    if len(chosen) != 1:
        raise GradguideError(
            f"compared arm {name!r} must join one method and guidance names with '+' (e.g. "
            "setfit+sgg)",
            field="methods",
        )
    method = chosen[0]
    guidance = [g.strip() for p in parts if p != method for g in p.split(",") if g.strip()]
    unknown = [g for g in guidance if g not in GUIDANCE]
    if unknown or not guidance:
        raise GradguideError(
            f"compared arm {name!r}: {unknown[0] if unknown else 'nothing'} is not a guidance; "
            f"known: {', '.join(GUIDANCE)}",
            field="methods",
        )
    if not get_method(method).trains:
        raise GradguideError(
            f"compared arm {name!r}: guidance needs a trained method, not {method}",
            field="methods",
        )
    return method, ",".join(guidance)


def arm_method(name: str) -> str:
    """The method a compared name trains by itself (guidance names: their own, else LoRA)."""
    composite = composite_arm(name)
    if composite is not None:
        return composite[0]
    return GUIDANCE_METHOD.get(name, "lora") if is_guidance_arm(name) else name


def recipe(base: TrainConfig, name: str) -> TrainConfig:
    """The config of one compared arm: a method name, a guidance name on a trained method, or a
    method and its guidance joined by ``+``."""
    composite = composite_arm(name)
    if composite is not None:
        method, use = composite
        guidance = dataclasses.replace(base.guidance, use=use)
        return dataclasses.replace(base, method=method, guidance=guidance)
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
