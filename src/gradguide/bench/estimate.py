"""Rough run-time estimates for a grid on a 2-core CPU (shown by ``gradguide bench --dry-run``).

The constants are estimates, not measurements of this machine: a smollm2-135m LoRA step takes
about 2–4 s for a batch of 8 on SST-2 on a 2-core CPU and evaluation runs at about 10–15
examples/s (measured during development); the other models are scaled from those by size, and the
methods by the extra passes they make (an SGG step adds one Hessian-vector product, in-context
learning lengthens every prompt). With 2 cores, more workers do not shorten the total: each one
gets fewer threads. Treat every number as an order of magnitude.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from gradguide.bench.grid import GridRun
from gradguide.methods import get_method
from gradguide.train import total_steps


@dataclasses.dataclass(frozen=True)
class ModelCost:
    """Per-model constants: load time, seconds per training step of 8 examples, eval throughput."""

    load_s: float
    step_s_per8: float
    eval_per_s: float


MODEL_COSTS: dict[str, ModelCost] = {
    "smollm2-135m": ModelCost(load_s=5.0, step_s_per8=3.0, eval_per_s=12.0),
    "minilm-l6": ModelCost(load_s=2.0, step_s_per8=0.5, eval_per_s=70.0),
    "tiny-llama": ModelCost(load_s=0.1, step_s_per8=0.03, eval_per_s=600.0),
    "tiny-bert": ModelCost(load_s=0.1, step_s_per8=0.03, eval_per_s=600.0),
}
#: Extra cost of a training step, relative to a LoRA step.
STEP_FACTOR: dict[str, float] = {
    "full": 1.5,
    "sgg": 3.0,
    "sgg-dir": 3.0,
    "sgg-mag": 3.0,
    "sgg-align": 4.0,
    # LayerNorm tuning on smollm2-135m, benchmarks/ofa_cost.py (3 steps on a loaded machine,
    # noisy): x1.13-1.30 (step ratio), x4.3 (sharpness, fd JVP, 1 probe, 30 blocks), x4.3 (both)
    "ofa": 4.3,
    "ofa-step": 1.2,
    "ofa-sharp": 4.3,
    # LoRA on smollm2-135m, benchmarks/spectral_cost.py (4 steps on a loaded machine, noisy):
    # 1.02 (reg), 1.02 (filter), 1.18 (both); the graphs cost ~5 s once per run
    "spectral": 1.1,
    "spectral-reg": 1.05,
    "spectral-filter": 1.05,
}
#: In-context learning scores prompts that carry the demonstrations.
ICL_EVAL_FACTOR = 3.0
#: Evaluation examples assumed when the data could not be read.
UNKNOWN_EVAL_SIZE = 1000
#: Starting a worker process: importing torch and transformers, building the first model.
WORKER_START_S = 10.0


def estimate_run_seconds(run: GridRun, eval_size: int | None) -> float:
    """Estimated wall time of one run (model load, training steps, evaluation)."""
    c = run.config
    cost = MODEL_COSTS.get(c.model, MODEL_COSTS["smollm2-135m"])
    seconds = cost.load_s
    try:
        trains = get_method(c.method).trains
    except Exception:
        trains = True
    if trains:
        steps = total_steps(c, c.shots)
        step = cost.step_s_per8 * max(1, c.optim.batch_size) / 8
        factor = STEP_FACTOR.get(c.method, 1.0)
        for name in c.guidance.use.split(","):
            factor *= STEP_FACTOR.get(name.strip(), 1.0)
        if c.guidance.source_task:
            factor += 1.0  # a forward and backward pass on the source batch
        seconds += steps * step * factor
    n_eval = eval_size if eval_size is not None else (c.eval_limit or UNKNOWN_EVAL_SIZE)
    factor = ICL_EVAL_FACTOR if c.method == "icl" else 1.0
    seconds += n_eval / cost.eval_per_s * factor
    if c.layer_diagnostics:  # a forward per example, two block passes per probe (fd JVP)
        passes = 1 + (2 if c.guidance.ofa.jvp == "fd" else 3) * c.guidance.ofa.probes
        seconds += min(c.layer_diagnostics, n_eval) / cost.eval_per_s * factor * passes
    return seconds


def estimate_grid_seconds(
    runs: Sequence[GridRun], eval_sizes: Mapping[str, int], workers: int = 1
) -> float:
    """Estimated total wall time of ``runs`` on a 2-core CPU (workers do not divide it)."""
    if not runs:
        return 0.0
    start = WORKER_START_S * max(1, min(workers, len(runs)))
    return start + sum(estimate_run_seconds(r, eval_sizes.get(r.config.task)) for r in runs)


def format_duration(seconds: float) -> str:
    """``3 h 20 min``, ``12 min``, ``40 s``: durations as people read them."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours = int(minutes // 60)
    return f"{hours} h {minutes - 60 * hours:.0f} min"
