"""Rough run-time estimates for a grid on a 2-core CPU (shown by ``gradguide bench --dry-run``).

The constants are estimates, not measurements of this machine: a smollm2-135m LoRA step takes
about 2–4 s for a batch of 8 on SST-2 on a 2-core CPU and evaluation runs at about 10–15
examples/s (measured during development); the other models are scaled from those by size, and the
methods by the extra passes they make (an SGG step adds one Hessian-vector product, in-context
learning lengthens every prompt; a model's constants are declared with it, ``ModelSpec.cost`` in
gradguide.models). With 2 cores, more workers do not shorten the total: each one
gets fewer threads. Treat every number as an order of magnitude.

Training steps and evaluation scale with the characters the model reads per instance against
SST-2's, on which the constants were measured (gradguide.bench.workload): a decoder whose label
words are single tokens reads each prompt once (an RTE pair 2.8x an SST-2 sentence); one whose
candidates are several tokens reads one row per candidate in training (LegalBench's 9 clause
types, 9 rows) and each shared prefix once in evaluation (a MultiRC passage once for all its
questions' answer options); an encoder reads the prompt and each candidate apart.

Runs already stored in the bench directory correct the formula (``Calibration``): a run like a
stored one (same model, task, method and shots) is estimated at their median wall time, and any
other run on a stored (model, task) pair by the formula times the median measured/formula ratio
of that pair, which carries what the formula cannot know (long RTE or BoolQ inputs, this CPU).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence

from gradguide.bench.checks import DataCheck
from gradguide.bench.spec import GridRun
from gradguide.bench.store import RunRow, arm_name
from gradguide.bench.workload import read_chars
from gradguide.config import from_dict, to_dict
from gradguide.errors import GradguideError
from gradguide.guidance import guidance_cost
from gradguide.methods import get_method, list_methods
from gradguide.models import ModelCost, model_kind, model_spec
from gradguide.objective import total_steps
from gradguide.tasks import get_task
from gradguide.train_config import TrainConfig

#: The model whose costs stand in for a directory or hub id (the registry knows only its own).
FALLBACK_MODEL = "smollm2-135m"


def model_cost(name: str) -> ModelCost:
    """A model's estimator constants: its spec's, else the fallback model's."""
    spec = model_spec(name) or model_spec(FALLBACK_MODEL)
    assert spec is not None, f"{FALLBACK_MODEL} is registered by gradguide.models"
    return spec.cost


#: Extra cost of a training step of a method, relative to a LoRA step: each method declares its
#: own (Method.step_factor), as a guidance does (gradguide.guidance.guidance_cost).
STEP_FACTOR: dict[str, float] = {
    m.name: m.step_factor for m in list_methods() if m.step_factor != 1
}
#: Evaluation cost relative to scoring each example's candidates (Method.eval_factor): in-context
#: learning scores prompts that carry the demonstrations; SetFit embeds each example once.
EVAL_FACTOR: dict[str, float] = {
    m.name: m.eval_factor for m in list_methods() if m.eval_factor != 1
}
SETFIT_EVAL = EVAL_FACTOR["setfit"]
ICL_EVAL_FACTOR = EVAL_FACTOR["icl"]
#: Mean characters of an SST-2 training instance (prompt and longest answer): the constants' scale.
REFERENCE_CHARS = 132.0
#: Evaluation examples assumed when the data could not be read.
UNKNOWN_EVAL_SIZE = 1000
#: Starting a worker process: importing torch and transformers, building the first model.
WORKER_START_S = 10.0


def _planned_items(c: TrainConfig) -> tuple[int, int, int]:
    """(items, items per step, epochs) a run trains on: its shots, or a method's own units
    (SetFit's pairs, counted from the shots and the task's number of labels)."""
    try:
        plan = getattr(get_method(c.method), "planned_items", None)
    except GradguideError:
        plan = None
    if plan is None:
        return c.shots, c.optim.batch_size, c.optim.epochs
    try:
        n_labels = len(get_task(c.task).labels)
    except GradguideError:  # a user file: its labels are only known from its data
        n_labels = 2
    items, batch, epochs = plan(c.shots, n_labels, c.method_options)
    return int(items), int(batch), int(epochs)


def _read_chars(c: TrainConfig, data: DataCheck | None, reads: str) -> tuple[float, float]:
    """Characters per instance the run's model reads (training pool, evaluation set) on the
    scoring path ``c`` takes (``reads``: its method's, Method.reads); zeros when the data was
    not read."""
    texts = data.texts.get(c.task) if data else None
    if texts is None or data is None:
        return 0.0, 0.0
    kind = model_kind(c.model) if reads == "prompts" else None  # the text alone: one reading
    one_pass = data.one_pass.get((c.model, c.task))
    if one_pass is not None:
        one_pass = one_pass and c.scoring.fast_path
    pool, evals = texts
    return (
        read_chars(pool, kind, one_pass, cache=False),
        read_chars(evals, kind, one_pass, cache=c.scoring.prefix_cache),
    )


def estimate_run_seconds(run: GridRun, data: DataCheck | None = None) -> float:
    """Estimated wall time of one run (model load, training steps, evaluation)."""
    return estimate_config_seconds(run.config, data)


def estimate_config_seconds(c: TrainConfig, data: DataCheck | None = None) -> float:
    """The formula estimate of one run's wall time, from its configuration and its task's data."""
    try:
        method = get_method(c.method)
        trains, reads = method.trains, getattr(method, "reads", "prompts")
    except Exception:
        trains, reads = True, "prompts"
    eval_size = data.eval_sizes.get(c.task) if data else None
    train_chars, eval_chars = _read_chars(c, data, reads)
    train_scale = train_chars / REFERENCE_CHARS if train_chars else 1.0
    eval_scale = eval_chars / REFERENCE_CHARS if eval_chars else 1.0
    cost = model_cost(c.model)
    seconds = cost.load_s
    if trains:
        items, batch, epochs = _planned_items(c)
        steps = total_steps(c, items, batch, epochs)
        step = cost.step_s_per8 * max(1, batch) / 8
        factor = STEP_FACTOR.get(c.method, 1.0)
        for name in c.guidance.use.split(","):
            factor *= guidance_cost(name.strip())
        if c.guidance.source_task:
            factor += 1.0  # a forward and backward pass on the source batch
        seconds += steps * step * factor * train_scale
    n_eval = eval_size if eval_size is not None else (c.eval_limit or UNKNOWN_EVAL_SIZE)
    factor = EVAL_FACTOR.get(c.method, 1.0) * eval_scale
    seconds += n_eval / cost.eval_per_s * factor
    if c.layer_diagnostics:  # a forward per example, two block passes per probe (fd JVP)
        passes = 1 + (2 if c.guidance.ofa.jvp == "fd" else 3) * c.guidance.ofa.probes
        seconds += min(c.layer_diagnostics, n_eval) / cost.eval_per_s * factor * passes
    return seconds


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What the stored runs of a bench directory say about run times."""

    #: median wall time of stored runs, by (model, task, method arm, shots)
    same: Mapping[tuple[str, str, str, int], float]
    #: median measured/formula ratio of stored runs, by (model, task)
    ratio: Mapping[tuple[str, str], float]

    data: DataCheck | None = None

    @classmethod
    def from_rows(cls, rows: Sequence[RunRow], data: DataCheck | None = None) -> Calibration:
        """Calibrate on stored runs that recorded their wall time (``data``: the grid's tasks)."""
        walls: dict[tuple[str, str, str, int], list[float]] = {}
        ratios: dict[tuple[str, str], list[float]] = {}
        for row in rows:
            if not row.wall_s:
                continue
            walls.setdefault((row.model, row.task, row.method, row.shots), []).append(row.wall_s)
            if data is None or row.task not in data.eval_sizes:  # the formula needs the data
                continue
            try:
                config = from_dict(TrainConfig, row.config)
            except Exception:  # a row written by another version: its wall time still counts
                continue
            formula = estimate_config_seconds(config, data)
            ratios.setdefault((row.model, row.task), []).append(row.wall_s / formula)
        return cls(
            same={k: statistics.median(v) for k, v in walls.items()},
            ratio={k: statistics.median(v) for k, v in ratios.items()},
            data=data,
        )

    def seconds(self, run: GridRun) -> tuple[float, str]:
        """Estimated wall time of ``run`` and how: ``measured``, ``scaled`` or ``formula``."""
        c = run.config
        same = self.same.get((c.model, c.task, arm_name(to_dict(c)), c.shots))
        if same is not None:
            return same, "measured"
        formula = estimate_config_seconds(c, self.data)
        ratio = self.ratio.get((c.model, c.task))
        if ratio is not None:
            return formula * ratio, "scaled"
        return formula, "formula"


def estimate_grid_seconds(
    runs: Sequence[GridRun], calibration: Calibration, workers: int = 1
) -> float:
    """Estimated total wall time of ``runs`` on a 2-core CPU (workers do not divide it)."""
    if not runs:
        return 0.0
    start = WORKER_START_S * max(1, min(workers, len(runs)))
    return start + sum(calibration.seconds(r)[0] for r in runs)


def format_duration(seconds: float) -> str:
    """``3 h 20 min``, ``12 min``, ``40 s``: durations as people read them."""
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest} min"
