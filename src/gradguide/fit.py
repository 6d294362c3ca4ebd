"""The optimisation loop: AdamW over a method's trainable tensors, guided, checkpointed.

Each step: the batch's loss closure (task loss + loss terms) → the guided gradient (one HVP for
all gradient penalties, gradguide.guidance.engine) → gradient transforms → clipping → the
optimiser and schedule. A non-finite step is skipped and counted. Checkpoints (every
``checkpoint_every`` steps and at the end) hold the trainable tensors, optimiser, scheduler, RNG
states, the curves so far and the guidance's learnt state, so a resumed run repeats the
uninterrupted one exactly on CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from gradguide.checkpoint import load_checkpoint, load_extra, save_checkpoint
from gradguide.distributed import DistContext
from gradguide.errors import GradguideError
from gradguide.guidance.assembly import Guide
from gradguide.guidance.engine import StepStats
from gradguide.guidance.hvp import norm_of
from gradguide.guidance.priors import MEAN_GRADIENT_FILE, save_vector
from gradguide.methods import Adapted, get_method
from gradguide.metrics import GradientTracker
from gradguide.models import LoadedModel
from gradguide.steplog import StepLogger
from gradguide.train_config import OptimConfig, TrainConfig
from gradguide.train_data import data_order

CURVE_KEYS = (
    "loss",
    "grad_norm",
    "guided_norm",
    "lr",
    "step_seconds",
    "cos_prev",
    "cos_prior",
    "cos_source",
    "penalty_share",
    "clip_scale",
    "penalty_dir",
    "penalty_mag",
    "penalty_align",
)
Curves = dict[str, list[float | None]]


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then linear decay to zero (or constant after warm-up)."""
    warmup = int(config.warmup_ratio * steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.scheduler == "constant":
            return 1.0
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _untrained_curves() -> Curves:
    return {k: [] for k in ("loss", "grad_norm", "lr", "step_seconds")}


@dataclasses.dataclass
class Fitted:
    """What the optimisation leaves for the record (an untrained method's: no steps)."""

    curves: Curves = dataclasses.field(default_factory=_untrained_curves)
    skipped: list[int] = dataclasses.field(default_factory=list)
    train_s: float = 0.0  # training seconds over every session of the run
    resumed_at: int | None = None  # the step a resumed run continued from
    carried_s: float = 0.0  # training seconds of the sessions before the resume
    steps: int = 0
    objective: dict[str, Any] | None = None  # the objective's facts
    guidance: dict[str, Any] = dataclasses.field(default_factory=dict)  # the guidance's facts


@dataclasses.dataclass
class _Loop:
    """The optimisation's moving parts and running state (what a checkpoint holds)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    order: list[list[int]]
    curves: Curves
    skipped: list[int] = dataclasses.field(default_factory=list)
    start: int = 0  # the first step this session runs
    train_s: float = 0.0
    carried_s: float = 0.0
    tracker: GradientTracker = dataclasses.field(default_factory=GradientTracker)

    def restore(self, run_dir: Path, adapted: Adapted, guide: Guide) -> None:
        """Continue from the run's checkpoint: tensors, optimiser, RNG, curves, guidance."""
        state = load_checkpoint(run_dir, adapted, self.optimizer, self.scheduler)
        if state["order_digest"] != _digest(self.order):
            raise GradguideError("checkpoint was written with another data order", file=run_dir)
        self.start, self.curves = state["step"], state["curves"]
        self.skipped, self.train_s = state["skipped"], state["train_s"]
        self.carried_s = self.train_s
        for key in (*CURVE_KEYS, *guide.term_keys()):  # a checkpoint from before a curve existed
            self.curves.setdefault(key, [None] * self.start)
        extra = load_extra(run_dir, guide.device)
        self.tracker.load_state(extra)
        guide.load_state_dict({**state, **extra})

    def save(self, run_dir: Path, adapted: Adapted, guide: Guide, done: int) -> None:
        """Checkpoint after ``done`` steps; the guidance's tensors join the tracker's, its plain
        values state.json ("tau" is always there, null without a magnitude target)."""
        learnt = guide.state_dict()
        tensors = {k: v for k, v in learnt.items() if isinstance(v, torch.Tensor)}
        state = {
            "step": done,
            "curves": self.curves,
            "skipped": self.skipped,
            "train_s": self.train_s,
            "order_digest": _digest(self.order),
            "tau": None,
            **{k: v for k, v in learnt.items() if k not in tensors},
        }
        extra = {**self.tracker.state(), **tensors}
        save_checkpoint(run_dir, adapted, self.optimizer, self.scheduler, state, extra)


def fit(
    *,
    config: TrainConfig,
    run_dir: Path,
    lm: LoadedModel,
    adapted: Adapted,
    items: Sequence[Any],
    steps: int,
    guide: Guide,
    resume: Path | None,
    show_progress: bool,
) -> Fitted:
    """The optimisation itself (from the checkpoint when resuming) over the objective's items."""
    o = config.optim
    params = list(adapted.trainable.values())
    lr = o.lr if o.lr is not None else get_method(config.method).default_lr
    objective = guide.objective
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=objective.weight_decay)
    loop = _Loop(
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, o, steps),
        order=data_order(len(items), objective.batch_size, steps, config.seed),
        curves={k: [] for k in (*CURVE_KEYS, *guide.term_keys())},
    )
    if resume is not None:
        loop.restore(run_dir, adapted, guide)
    dist = guide.dist
    logger = StepLogger(run_dir, loop.start, config.tensorboard) if dist.is_main else None
    lm.model.train()
    bar = tqdm(
        total=steps,
        initial=loop.start,
        desc=f"train {config.method}",
        disable=not show_progress or not dist.is_main,
    )
    try:
        for step in range(loop.start, steps):
            t0 = time.perf_counter()
            batch = [items[i] for i in loop.order[step]]
            loss_fns, first_values = guide.loss_closure(step, batch, adapted.trainable)
            stats = guide.engine.backward(
                loss_fns, params, step, guide.source_fn(step), guide.source_vector
            )
            if dist.active:
                first_values = _summed(dist, first_values)
            values: dict[str, float | None] = {**first_values, **guide.term_share(stats)}
            current_lr = optimizer.param_groups[0]["lr"]
            loss_value = first_values.get("task_loss", stats.loss)
            clip_scale, keep = _apply_step(loop, step, stats, adapted, guide, o, run_dir)
            if guide.transforms:
                values["transform_keep"] = keep
            dt = time.perf_counter() - t0
            loop.train_s += dt
            cos_prev = loop.tracker.observe(stats.gradient) if stats.finite else None
            for key, value in (
                ("loss", _finite_or_none(loss_value)),
                ("grad_norm", _finite_or_none(stats.grad_norm)),
                ("guided_norm", _finite_or_none(stats.guided_norm)),
                ("lr", current_lr),
                ("step_seconds", dt),
                ("cos_prev", cos_prev),
                ("cos_prior", stats.cos_prior),
                ("cos_source", stats.cos_source),
                ("penalty_share", _share(stats)),
                ("clip_scale", clip_scale),
                *((f"penalty_{k}", stats.penalties.get(k)) for k in ("dir", "mag", "align")),
                *((k, values.get(k)) for k in guide.term_keys()),
            ):
                loop.curves.setdefault(key, []).append(
                    _finite_or_none(value) if value is not None else None
                )
            if logger is not None:
                logger.log(
                    {
                        "step": step,
                        "loss": _finite_or_none(loss_value),
                        "grad_norm": _finite_or_none(stats.grad_norm),
                        "lr": current_lr,
                        "seconds": dt,
                    }
                )
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            done = step + 1
            due = done == steps or (config.checkpoint_every and done % config.checkpoint_every == 0)
            if due and dist.is_main:
                loop.save(run_dir, adapted, guide, done)
            if due:
                dist.barrier()
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    mean = loop.tracker.mean_gradient()
    if mean is not None and dist.is_main:
        save_vector(run_dir / MEAN_GRADIENT_FILE, mean, list(adapted.trainable), params)
    resumed_at = loop.start if resume is not None else None
    return Fitted(loop.curves, loop.skipped, loop.train_s, resumed_at, loop.carried_s)


def _apply_step(
    loop: _Loop,
    step: int,
    stats: StepStats,
    adapted: Adapted,
    guide: Guide,
    o: OptimConfig,
    run_dir: Path,
) -> tuple[float | None, float | None]:
    """Transform, clip and apply a finite step's gradient, or skip the step; the clip scale and
    what the transforms kept of the gradient, ‖transformed‖/‖guided g‖ (None where not taken)."""
    clip_scale: float | None = None
    keep: float | None = None
    if not stats.finite:
        loop.skipped.append(step)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scheduler.step()
        if len(loop.skipped) > o.max_skipped_steps:
            raise GradguideError(
                f"{len(loop.skipped)} steps had non-finite loss or gradients (limit "
                f"optim.max_skipped_steps={o.max_skipped_steps}); stopped, the last "
                "checkpoint is intact: lower the learning rate or turn off bf16",
                file=run_dir,
            )
        return None, None
    if guide.transforms:
        for transform in guide.transforms:
            transform.apply(adapted.trainable)
        after = norm_of([p.grad for p in adapted.trainable.values() if p.grad is not None])
        keep = after / stats.guided_norm if stats.guided_norm > 0 else None
    if o.grad_clip:
        applied = float(
            torch.nn.utils.clip_grad_norm_(list(adapted.trainable.values()), o.grad_clip)
        )
        clip_scale = min(1.0, o.grad_clip / applied) if applied > 0 else 1.0
    loop.optimizer.step()
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)
    return clip_scale, keep


def _summed(dist: DistContext, values: dict[str, float]) -> dict[str, float]:
    """Per-rank weighted values summed over ranks: the global batch's values."""
    keys = sorted(values)
    local = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=dist.device)
    total = dist.sum(local)  # on the device: NCCL rejects CPU tensors
    return dict(zip(keys, total.tolist(), strict=True))


def _share(stats: StepStats) -> float | None:
    """The penalties' share of the applied gradient, ‖guided − g‖/‖guided‖ (None if not applied)."""
    if not (stats.penalty_applied and stats.finite) or stats.guided_norm == 0.0:
        return None
    return stats.penalty_norm / stats.guided_norm


def _finite_or_none(x: float) -> float | None:
    """Curves are JSON: a skipped step's non-finite value is recorded as null."""
    return x if math.isfinite(x) else None


def _digest(order: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(order).encode()).hexdigest()[:16]
