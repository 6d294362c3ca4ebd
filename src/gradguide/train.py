"""The training loop: one method, a k-shot sample, rank-classification loss, checkpoints, a record.

Flow (DESIGN.md): task → k-shot instances → candidate scores → cross entropy over candidates →
gradient → optimiser. The loop is deliberately small; methods decide *what* is trained
(gradguide.methods) and the loop never looks inside them.

Reproducibility: the data order is a pure function of the seed (a fresh permutation per epoch),
the method's initialisation draws from ``torch.manual_seed(seed)``, and a checkpoint holds the
trainable tensors, optimiser, scheduler, RNG states and the curves so far, so a resumed run ends
with exactly the numbers of an uninterrupted one on CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gradguide.atomic import write_json_atomic
from gradguide.checkpoint import load_checkpoint, load_extra, save_checkpoint
from gradguide.config import EvalConfig, UserTaskOptions, from_dict, to_dict
from gradguide.device import (
    autocast,
    check_device_settings,
    describe,
    enable_checkpointing,
    parse_dtype,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
)
from gradguide.distributed import DistContext
from gradguide.distributed import init as init_distributed
from gradguide.errors import GradguideError
from gradguide.evaluate import evaluate_instances, limit_instances, resolve_task
from gradguide.guidance import (
    BuildContext,
    build_loss_terms,
    build_penalties,
    build_transforms,
    carries_term_options,
    check_guidance_options,
    expand_terms,
    needs_eager_attention,
    needs_penalty_engine,
    parse_guidance,
)
from gradguide.guidance.base import GradientTransform, LossTerm
from gradguide.guidance.engine import HVP_MODES, GuidedGradient, LossFn, StepStats
from gradguide.guidance.priors import (
    MEAN_GRADIENT_FILE,
    PRIOR_FILE,
    EmaPrior,
    FixedPrior,
    Prior,
    build_prior,
    load_vector,
    reference_corpus,
    save_vector,
)
from gradguide.guidance.registry import term_options
from gradguide.layerwise import layer_diagnostics
from gradguide.methods import Adapted, MethodOptions, get_method
from gradguide.methods.base import Objective, OwnObjective
from gradguide.metrics import GradientTracker, dynamics_summary
from gradguide.models import LoadedModel, load_model, model_kind
from gradguide.record import environment, new_run_dir, peak_rss_mb, reset_peak_rss, write_record
from gradguide.scoring import ScoringOptions, candidate_scores, check_options
from gradguide.steplog import StepLogger
from gradguide.tasks import get_task, resolve_data_root, sample_demonstrations, sample_k_shot
from gradguide.tasks.base import Instance, Task

CONFIG_NAME = "config.json"
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
ADAPTER_NAME = "adapter"


@dataclasses.dataclass
class OptimConfig:
    """Optimiser and schedule; ``lr=None`` takes the method's few-shot default."""

    lr: float | None = None
    steps: int | None = None
    epochs: int = 10
    batch_size: int = 8
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    scheduler: str = "linear"
    max_skipped_steps: int = 10


@carries_term_options
@dataclasses.dataclass
class GuidanceConfig:
    """Gradient guidance (SGG): which terms, their weights, the prior, the source, the HVP mode.

    ``use`` lists names from gradguide.guidance.GUIDANCE ("sgg", "sgg-dir", …; "" = none).
    ``tau=None`` targets the first step's gradient norm. ``measure_alignment`` computes d_prior for
    every trained run (baselines included) so that directional alignment is measured alike.
    Each registered guidance family with options adds a field after these (``ofa``, ``spectral``:
    gradguide.guidance.registry).
    """

    use: str = ""
    lambda_dir: float = 0.1
    lambda_mag: float = 0.1
    tau: float | None = None
    lambda_align: float = 0.1
    prior: str = "pretrain"
    prior_corpus: str | None = None
    source_task: str | None = None
    source_shots: int | None = None
    source_run: str | None = None
    two_sided: bool = False
    hvp: str = "fd"
    fd_eps: float = 1e-4
    lazy: int = 1
    measure_alignment: bool = True

    def __getattr__(self, name: str) -> Any:
        """A family's options on a config built before that family registered: its defaults."""
        return term_options(name)


@dataclasses.dataclass
class TrainConfig:
    """A training run: model × task × k-shot sample × method × seed (plus how to train)."""

    model: str = "smollm2-135m"
    task: str = "sst2"
    shots: int = 32
    method: str = "lora"
    seed: int = 1
    data_dir: str | None = None
    cache_dir: str | None = None
    out: str = "runs"
    template: str | None = None
    verbalizer: dict[str, str] | None = None
    user_task: UserTaskOptions = dataclasses.field(default_factory=UserTaskOptions)
    eval_split: str | None = None
    eval_limit: int | None = None
    icl_shots: int = 4
    bf16: bool = False
    #: where the run computes (auto, cpu, cuda, cuda:N) and the weights' precision (fp32, bf16)
    device: str = "auto"
    dtype: str = "fp32"
    #: recompute each block's activations in the backward pass (less memory, one more forward)
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0
    tensorboard: bool = False
    #: per-layer diagnostics (gradguide.layerwise) on this many evaluation examples; 0 = off
    layer_diagnostics: int = 0
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    method_options: MethodOptions = dataclasses.field(default_factory=MethodOptions)
    scoring: ScoringOptions = dataclasses.field(default_factory=ScoringOptions)
    guidance: GuidanceConfig = dataclasses.field(default_factory=GuidanceConfig)


@dataclasses.dataclass
class TrainResult:
    """What a finished run produced; the same facts are in ``run_dir/record.json``."""

    metrics: dict[str, float]
    record: dict[str, Any]
    run_dir: Path
    adapted: Adapted | None = None
    is_main: bool = True  # False on the other ranks of a distributed run (empty record, metrics)


def validate(config: TrainConfig) -> None:
    """Reject impossible settings before anything is loaded (field named in the error)."""
    method = get_method(config.method)
    check_device_settings(config)
    o = config.optim
    checks = [
        (config.shots > 0, "shots", f"must be positive, got {config.shots}"),
        (
            o.lr is None or (o.lr > 0 and math.isfinite(o.lr)),
            "optim.lr",
            f"must be > 0, got {o.lr}",
        ),
        (o.steps is None or o.steps > 0, "optim.steps", f"must be positive, got {o.steps}"),
        (o.epochs > 0, "optim.epochs", f"must be positive, got {o.epochs}"),
        (o.batch_size > 0, "optim.batch_size", f"must be positive, got {o.batch_size}"),
        (0 <= o.warmup_ratio < 1, "optim.warmup_ratio", f"must be in [0, 1), got {o.warmup_ratio}"),
        (o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}"),
        (o.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 = off), got {o.grad_clip}"),
        (o.scheduler in ("linear", "constant"), "optim.scheduler", "must be linear or constant"),
        (o.max_skipped_steps >= 0, "optim.max_skipped_steps", "must be >= 0"),
        (config.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0 = at the end only)"),
        (config.icl_shots > 0 or method.name != "icl", "icl_shots", "must be positive for icl"),
        (config.layer_diagnostics >= 0, "layer_diagnostics", "must be >= 0 (0 = off)"),
    ]
    g = config.guidance
    checks += [
        (g.hvp in HVP_MODES, "guidance.hvp", f"must be one of {', '.join(HVP_MODES)}"),
        (g.lazy >= 1, "guidance.lazy", f"must be >= 1, got {g.lazy}"),
        (g.fd_eps > 0, "guidance.fd_eps", f"must be > 0, got {g.fd_eps}"),
        (g.tau is None or g.tau >= 0, "guidance.tau", f"must be >= 0, got {g.tau}"),
        (not (g.source_task and g.source_run), "guidance.source_run", "give a task or a run"),
    ]
    checks += [
        (getattr(g, k) >= 0, f"guidance.{k}", f"must be >= 0, got {getattr(g, k)}")
        for k in ("lambda_dir", "lambda_mag", "lambda_align")
    ]
    for ok, name, message in checks:
        if not ok:
            raise GradguideError(message, field=name)
    check_options(config.scoring)
    names = parse_guidance(g.use)
    if config.bf16 and g.hvp == "fd" and needs_penalty_engine(names):
        raise GradguideError(
            "bf16 with a finite-difference HVP is refused: its step is below bf16's resolution "
            "(relative error ~40 measured); use guidance.hvp=exact or turn bf16 off",
            field="guidance.hvp",
        )
    if g.two_sided and g.source_run:
        raise GradguideError(
            "two_sided differentiates through the source batch's gradient; a saved run "
            "(guidance.source_run) gives a constant vector: use guidance.source_task",
            field="guidance.two_sided",
        )
    if names and not method.trains:
        raise GradguideError(f"guidance needs a trained method, not {method.name}", field="method")
    check_guidance_options(g, method.name, expand_terms(names))
    validate_run = getattr(method, "validate_run", None)
    if validate_run is not None:  # a method's own checks (SetFit: its settings, no decoder)
        validate_run(model_kind(config.model), config.model, config.method_options)


def data_order(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Indices of each step's batch: a fresh seeded permutation per epoch, cut into batches."""
    rng = random.Random(f"gradguide-order-{seed}")
    batches: list[list[int]] = []
    while len(batches) < steps:
        perm = list(range(n))
        rng.shuffle(perm)
        batches.extend(perm[i : i + batch_size] for i in range(0, n, batch_size))
    return batches[:steps]


def total_steps(
    config: TrainConfig, n_train: int, batch_size: int | None = None, epochs: int | None = None
) -> int:
    """``optim.steps`` if set, else epochs × batches per epoch (the optim's unless given: an
    objective of a method's own, SetFit's pairs, brings its batch size and epochs)."""
    o = config.optim
    size = batch_size or o.batch_size
    return o.steps or (epochs or o.epochs) * math.ceil(n_train / size)


@dataclasses.dataclass
class RankObjective:
    """Rank classification (DESIGN.md): cross entropy of the gold candidate, per instance."""

    lm: LoadedModel
    scoring: ScoringOptions
    batch_size: int
    epochs: int
    weight_decay: float
    name: str = "rank-classification"

    def items(self, instances: Sequence[Instance]) -> list[Instance]:
        """The instances themselves."""
        return list(instances)

    def loss(self, batch: Sequence[Instance]) -> torch.Tensor:
        """Cross entropy over the batch's candidate scores."""
        return rank_loss(self.lm, batch, self.scoring)

    def finish(self, instances: Sequence[Instance]) -> dict[str, Any]:
        """Nothing to do after the optimisation."""
        return {}


def objective_for(config: TrainConfig, lm: LoadedModel, adapted: Adapted) -> Objective:
    """The run's objective: the method's own (SetFit's pairs) or rank classification."""
    method = get_method(config.method)
    if isinstance(method, OwnObjective):
        return method.objective(adapted)
    o = config.optim
    return RankObjective(lm, config.scoring, o.batch_size, o.epochs, o.weight_decay)


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


def rank_loss(lm: LoadedModel, batch: Sequence[Instance], options: ScoringOptions) -> torch.Tensor:
    """Cross entropy of the gold candidate over the candidates' scores (rank classification)."""
    scores = candidate_scores(lm, batch, "", options)
    gold = torch.tensor([x.gold for x in batch], device=scores.device)
    return F.cross_entropy(scores, gold)


@dataclasses.dataclass
class _Setup:
    task: Task
    data_root: Path | None
    train: list[Instance]
    eval: list[Instance]


def _prepare_data(config: TrainConfig) -> _Setup:
    data_root = resolve_data_root(config.data_dir)
    task = resolve_task(as_eval_config(config))
    pool = task.load(task.train_split, data_root)
    train = sample_k_shot(pool, config.shots, config.seed)
    split = config.eval_split or task.eval_split
    eval_set = limit_instances(task.load(split, data_root), config.eval_limit)
    return _Setup(task, data_root, train, eval_set)


def as_eval_config(config: TrainConfig) -> EvalConfig:
    """The evaluation settings that name a run's model and task (to resolve the task)."""
    return EvalConfig(
        model=config.model,
        task=config.task,
        template=config.template,
        verbalizer=config.verbalizer,
        user_task=config.user_task,
    )


def train(
    config: TrainConfig, *, resume: Path | None = None, show_progress: bool = True
) -> TrainResult:
    """Train ``config.method`` on a k-shot sample, evaluate, save, and write the run record.

    With ``resume`` (a run directory) the run continues from its last checkpoint, with the
    configuration stored in that directory.
    """
    started = time.perf_counter()
    own_peak = reset_peak_rss()
    validate(config)
    method = get_method(config.method)
    if method.default_guidance and not config.guidance.use:
        config = dataclasses.replace(
            config, guidance=dataclasses.replace(config.guidance, use=method.default_guidance)
        )
    dist = init_distributed(config.device)
    device = dist.device
    reset_peak_memory(device)
    if dist.world > config.optim.batch_size:
        raise GradguideError(
            f"{dist.world} processes need a batch of at least {dist.world} examples",
            field="optim.batch_size",
        )
    setup = _prepare_data(config)
    if resume is None:
        run_dir = None
        if dist.is_main:
            extra = [] if config.guidance.use == method.default_guidance else [config.guidance.use]
            arm = "+".join([config.method, *extra]).replace(",", "+")
            name = f"{config.model}-{setup.task.name}-{arm}-k{config.shots}-s{config.seed}"
            run_dir = new_run_dir(config.out, f"train-{name}")
            write_json_atomic(run_dir / CONFIG_NAME, to_dict(config))
        run_dir = Path(dist.broadcast(str(run_dir)))
    else:
        run_dir = resume
    eager = needs_eager_attention(parse_guidance(config.guidance.use), config.guidance)
    eager = eager or (config.layer_diagnostics > 0 and config.guidance.ofa.jvp == "exact")
    attn = "eager" if eager else None  # SDPA has no forward-mode derivative
    lm = load_model(
        config.model,
        cache_dir=config.cache_dir,
        seed=config.seed,
        attn_implementation=attn,
        dtype=parse_dtype(config.dtype),
        device=device,
    )
    if config.layer_diagnostics and lm.kind != "causal":
        raise GradguideError(
            f"layer diagnostics need a decoder LM (logit lens), not the {lm.kind} {lm.name}",
            field="layer_diagnostics",
        )
    load_s = time.perf_counter() - started
    torch.manual_seed(config.seed)
    adapted = method.apply(lm, config.method_options) if method.trains else None
    model_lm = adapted.as_lm(lm) if adapted is not None else lm
    if config.gradient_checkpointing and adapted is not None:
        enable_checkpointing(lm.model, lm.name)

    fit = _Fitted({k: [] for k in ("loss", "grad_norm", "lr", "step_seconds")}, [], 0.0)
    steps = 0
    guide_info: dict[str, Any] = {}
    objective_info: dict[str, Any] | None = None
    if adapted is not None:
        objective = objective_for(config, model_lm, adapted)
        items = objective.items(setup.train)
        steps = total_steps(config, len(items), objective.batch_size, objective.epochs)
        guide = _guidance(config, model_lm, adapted, setup, run_dir, resume, steps, dist, objective)
        guide_info = guide.info
        try:
            fit = _fit(
                config, run_dir, model_lm, adapted, items, steps, resume, show_progress, guide
            )
            guide_info["term_summaries"] = guide.summaries()
        finally:
            guide.close()
        objective_info = {
            "name": objective.name,
            "items": len(items),
            "batch_size": objective.batch_size,
            "epochs": objective.epochs,
            "weight_decay": objective.weight_decay,
            **objective.finish(setup.train),
        }
        if dist.is_main:
            method.save(adapted, run_dir / ADAPTER_NAME, config.model)
    if not dist.is_main:  # rank 0 evaluates and writes the record
        dist.barrier()
        return TrainResult({}, {}, run_dir, adapted, is_main=False)

    demos: list[Instance] = []
    if method.name == "icl":
        demos = sample_demonstrations(
            setup.train, min(config.icl_shots, len(setup.train)), config.seed
        )
    model_lm.model.eval()
    metrics, _scored, facts = evaluate_instances(
        model_lm,
        setup.task,
        setup.eval,
        demonstrations=demos,
        options=config.scoring,
        show_progress=show_progress,
    )
    diagnostics = None
    if config.layer_diagnostics:
        diagnostics = layer_diagnostics(
            model_lm,
            setup.eval[: config.layer_diagnostics],
            demos,
            config.scoring,
            config.guidance.ofa,
            config.seed,
        )
    record = {
        "kind": "train",
        "method": config.method,
        "config": to_dict(config),
        "seed": config.seed,
        "environment": environment(),
        "model": {"name": lm.name, "kind": lm.kind, **lm.info},
        "task": {
            "name": setup.task.name,
            "suite": setup.task.suite,
            "template": setup.task.template,
            "verbalizer": dict(setup.task.verbalizer),
            "metrics": list(setup.task.metrics),
            "data_root": str(setup.data_root) if setup.data_root else None,
        },
        "data": {
            "train_split": setup.task.train_split,
            "train_ids": [x.id for x in setup.train],
            "eval_split": config.eval_split or setup.task.eval_split,
            "eval_size": len(setup.eval),
            "eval_ids": [x.id for x in setup.eval],
            "demonstration_ids": [x.id for x in demos],
        },
        "trainable_parameters": adapted.n_trainable() if adapted is not None else 0,
        "objective": objective_info,
        "steps": steps,
        "skipped_steps": fit.skipped,
        "curves": fit.curves,
        "dynamics": dynamics_summary(fit.curves) if adapted is not None else None,
        "guidance": guide_info,
        "scoring": {
            **to_dict(config.scoring),
            **{k: v for k, v in facts.items() if k != "seconds"},
        },
        "metrics": metrics,
        "layer_diagnostics": diagnostics,
        "timings": {
            "model_load_s": load_s,
            "train_s": fit.train_s,
            "step_s_median": _median(fit.curves["step_seconds"]),
            "eval_s": facts["seconds"],
            # a resumed run's wall time counts the training of its earlier sessions too
            "total_s": time.perf_counter() - started + fit.carried_s,
            "resumed_at_step": fit.resumed_at,
            "peak_rss_mb": peak_rss_mb(),
            "peak_device_mb": peak_memory_mb(device),
        },
        "device": {
            **describe(device, lm.info["dtype"], config.bf16),
            "world": dist.world,
            "backend": dist.backend,  # the process group's (None: not launched distributed)
        },
        # "run": the peak of this run alone; "process": of its whole process (earlier runs too)
        "peak_rss_scope": "run" if own_peak else "process",
    }
    write_record(run_dir, record)
    dist.barrier()
    return TrainResult(metrics, record, run_dir, adapted)


class _Fitted(NamedTuple):
    """What the optimisation leaves for the record."""

    curves: Curves
    skipped: list[int]
    train_s: float  # training seconds over every session of the run
    resumed_at: int | None = None  # the step a resumed run continued from
    carried_s: float = 0.0  # training seconds of the sessions before the resume


def _fit(
    config: TrainConfig,
    run_dir: Path,
    lm: LoadedModel,
    adapted: Adapted,
    train_set: Sequence[Any],
    steps: int,
    resume: Path | None,
    show_progress: bool,
    guide: _Guide,
) -> _Fitted:
    """The optimisation itself (from the checkpoint when resuming) over the objective's items."""
    o = config.optim
    params = list(adapted.trainable.values())
    lr = o.lr if o.lr is not None else get_method(config.method).default_lr
    objective = guide.objective
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=objective.weight_decay)
    scheduler = make_scheduler(optimizer, o, steps)
    order = data_order(len(train_set), objective.batch_size, steps, config.seed)
    curves: Curves = {k: [] for k in (*CURVE_KEYS, *guide.term_keys())}
    skipped: list[int] = []
    start_step, train_s, carried_s = 0, 0.0, 0.0
    tracker = GradientTracker()
    if resume is not None:
        state = load_checkpoint(run_dir, adapted, optimizer, scheduler)
        if state["order_digest"] != _digest(order):
            raise GradguideError("checkpoint was written with another data order", file=run_dir)
        start_step, curves, skipped, train_s = (
            state["step"],
            state["curves"],
            state["skipped"],
            state["train_s"],
        )
        carried_s = train_s
        for key in (*CURVE_KEYS, *guide.term_keys()):  # a checkpoint from before a curve existed
            curves.setdefault(key, [None] * start_step)
        extra = load_extra(run_dir, guide.device)
        tracker.load_state(extra)
        prior = guide.engine.prior
        if isinstance(prior, EmaPrior) and "ema" in extra:
            prior.mean = extra["ema"]
        guide.set_tau(state.get("tau"))
    dist = guide.dist
    logger = StepLogger(run_dir, start_step, config.tensorboard) if dist.is_main else None
    lm.model.train()
    bar = tqdm(
        total=steps,
        initial=start_step,
        desc=f"train {config.method}",
        disable=not show_progress or not guide.dist.is_main,
    )
    try:
        for step in range(start_step, steps):
            t0 = time.perf_counter()
            batch = [train_set[i] for i in order[step]]
            loss_fn, first_values = guide.loss_closure(step, batch, adapted.trainable)
            stats = guide.engine.backward(
                loss_fn, params, step, guide.source_fn(step), guide.source_vector
            )
            if dist.active:
                first_values = _summed(dist, first_values)
            norm = stats.grad_norm
            current_lr = optimizer.param_groups[0]["lr"]
            loss_value = first_values.get("task_loss", stats.loss)
            clip_scale: float | None = None
            if not stats.finite:
                skipped.append(step)
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if len(skipped) > o.max_skipped_steps:
                    raise GradguideError(
                        f"{len(skipped)} steps had non-finite loss or gradients (limit "
                        f"optim.max_skipped_steps={o.max_skipped_steps}); stopped, the last "
                        "checkpoint is intact: lower the learning rate or turn off bf16",
                        file=run_dir,
                    )
            else:
                for transform in guide.transforms:
                    transform.apply(adapted.trainable)
                if o.grad_clip:
                    applied = float(torch.nn.utils.clip_grad_norm_(params, o.grad_clip))
                    clip_scale = min(1.0, o.grad_clip / applied) if applied > 0 else 1.0
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            train_s += dt
            cos_prev = tracker.observe(stats.gradient) if stats.finite else None
            for key, value in (
                ("loss", _finite_or_none(loss_value)),
                ("grad_norm", _finite_or_none(norm)),
                ("guided_norm", _finite_or_none(stats.guided_norm)),
                ("lr", current_lr),
                ("step_seconds", dt),
                ("cos_prev", cos_prev),
                ("cos_prior", stats.cos_prior),
                ("cos_source", stats.cos_source),
                ("penalty_share", _share(stats)),
                ("clip_scale", clip_scale),
                *((f"penalty_{k}", stats.penalties.get(k)) for k in ("dir", "mag", "align")),
                *((k, first_values.get(k)) for k in guide.term_keys()),
            ):
                curves.setdefault(key, []).append(
                    _finite_or_none(value) if value is not None else None
                )
            if logger is not None:
                logger.log(
                    {
                        "step": step,
                        "loss": _finite_or_none(loss_value),
                        "grad_norm": _finite_or_none(norm),
                        "lr": current_lr,
                        "seconds": dt,
                    }
                )
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            done = step + 1
            due = done == steps or (config.checkpoint_every and done % config.checkpoint_every == 0)
            if due and dist.is_main:
                state = {
                    "step": done,
                    "curves": curves,
                    "skipped": skipped,
                    "train_s": train_s,
                    "order_digest": _digest(order),
                    "tau": guide.tau(),
                }
                save_checkpoint(run_dir, adapted, optimizer, scheduler, state, guide.extra(tracker))
            if due:
                dist.barrier()
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    mean = tracker.mean_gradient()
    if mean is not None and dist.is_main:
        save_vector(run_dir / MEAN_GRADIENT_FILE, mean, list(adapted.trainable), params)
    resumed_at = start_step if resume is not None else None
    return _Fitted(curves, skipped, train_s, resumed_at, carried_s)


@dataclasses.dataclass
class _Guide:
    """The run's guidance: the engine, the source batches or vector, facts for the record."""

    engine: GuidedGradient
    info: dict[str, Any]
    objective: Objective
    bf16: bool
    source_batches: list[list[Any]] | None = None
    source_vector: torch.Tensor | None = None
    loss_terms: list[LossTerm] = dataclasses.field(default_factory=list)
    transforms: list[GradientTransform] = dataclasses.field(default_factory=list)
    dist: DistContext = dataclasses.field(default_factory=DistContext)

    @property
    def device(self) -> torch.device:
        """Where the run computes (its process's device)."""
        return self.dist.device

    def term_keys(self) -> list[str]:
        """Curve names of the loss terms' per-step values."""
        return [f"term_{t.name}" for t in self.loss_terms]

    def loss_closure(
        self, step: int, batch: list[Any], params: dict[str, torch.nn.Parameter]
    ) -> tuple[LossFn, dict[str, float]]:
        """The step's loss closure (task loss + loss terms) and the values of its first call.

        The HVP may call the closure at perturbed parameters; the recorded values (task loss and
        each term) are those of the first call, at the step's own parameters. In a distributed
        run the closure sees this rank's shard, weighted by its share of the batch.
        """
        for term in self.loss_terms:
            term.begin_step(step)
        first: dict[str, float] = {}
        local, share = self._shard(batch)

        def loss() -> torch.Tensor:
            with self._autocast():
                task = self.objective.loss(local) * share
                total = task
                for term in self.loss_terms:
                    value = term.loss(params) * share
                    total = total + value
                    first.setdefault(f"term_{term.name}", float(value.detach()))
            first.setdefault("task_loss", float(task.detach()))
            return total

        return loss, first

    def summaries(self) -> dict[str, Any]:
        """Each loss term's and transform's run-level facts, by name."""
        out = {t.name: t.summary() for t in self.loss_terms}
        out.update({t.name: t.summary() for t in self.transforms})
        return out

    def close(self) -> None:
        for term in self.loss_terms:
            term.close()

    def source_fn(self, step: int) -> LossFn | None:
        """Loss closure on this step's source-task batch (None without a source task)."""
        if self.source_batches is None:
            return None
        local, share = self._shard(self.source_batches[step])

        def loss() -> torch.Tensor:
            with self._autocast():
                return self.objective.loss(local) * share

        return loss

    def _shard(self, batch: list[Any]) -> tuple[list[Any], float]:
        """This rank's part of a global batch and its weight in the batch's mean loss."""
        local = self.dist.shard(batch)
        return local, self.dist.share(len(local), len(batch))

    def _autocast(self) -> torch.autocast:
        return autocast(self.device, self.bf16)

    def tau(self) -> float | None:
        """The magnitude target in force (set at the first step when not configured)."""
        for p in self.engine.penalties:
            if p.name == "mag":
                return getattr(p, "tau", None)
        return None

    def extra(self, tracker: GradientTracker) -> dict[str, torch.Tensor]:
        """Tensors an exact resume needs: the tracker's memories and the EMA prior."""
        out = tracker.state()
        prior = self.engine.prior
        if isinstance(prior, EmaPrior) and prior.mean is not None:
            out["ema"] = prior.mean
        return out

    def set_tau(self, tau: float | None) -> None:
        for p in self.engine.penalties:
            if p.name == "mag" and tau is not None:
                p.tau = tau  # type: ignore[attr-defined]


def _guidance(
    config: TrainConfig,
    lm: LoadedModel,
    adapted: Adapted,
    setup: _Setup,
    run_dir: Path,
    resume: Path | None,
    steps: int,
    dist: DistContext,
    objective: Objective,
) -> _Guide:
    """Build penalties, prior and source for a run (the prior is saved with the run)."""
    g = config.guidance
    names = parse_guidance(g.use)
    params = list(adapted.trainable.values())
    keys = list(adapted.trainable)
    info: dict[str, Any] = {"use": names, "hvp": g.hvp, "lazy": g.lazy}
    source_batches, source_vector = None, None
    if g.source_task:
        task = get_task(g.source_task)
        pool = task.load(task.train_split, setup.data_root)
        source_seed = config.seed + 1000
        sample = sample_k_shot(pool, min(g.source_shots or config.shots, len(pool)), source_seed)
        units = objective.items(sample)  # the source task trains on the same kind of item
        order = data_order(len(units), objective.batch_size, steps, source_seed)
        source_batches = [[units[i] for i in b] for b in order]
        info["source"] = {"task": task.name, "seed": source_seed, "ids": [x.id for x in sample]}
    elif g.source_run:
        source_vector = load_vector(Path(g.source_run) / MEAN_GRADIENT_FILE, keys, params)
        info["source"] = {"run": g.source_run}
    has_source = source_batches is not None or source_vector is not None
    penalties = build_penalties(names, g, has_source)
    info["terms"] = [p.name for p in penalties]
    prior: Prior | None = None
    wants_prior = any(p.needs_prior for p in penalties)
    if (wants_prior or g.measure_alignment) and g.prior not in ("", "none"):
        saved = run_dir / PRIOR_FILE
        if resume is not None and saved.exists():
            made = None
            if g.prior == "pretrain":  # the corpus it was measured on, for the record
                made = {"corpus": reference_corpus(setup.data_root, g.prior_corpus).info()}
            prior = FixedPrior(load_vector(saved, keys, params), g.prior, made)
        else:
            try:
                prior = build_prior(g.prior, lm, adapted.trainable, setup.data_root, g.prior_corpus)
            except GradguideError as err:
                if wants_prior:
                    raise
                info["prior_note"] = f"directional alignment not measured: {err}"
            if isinstance(prior, FixedPrior) and dist.is_main:
                save_vector(saved, prior.vector, keys, params)
    info["prior"] = prior.name if prior is not None else None
    if isinstance(prior, FixedPrior) and prior.info:
        info["prior_made_from"] = prior.info
    engine = GuidedGradient(
        penalties,
        hvp=g.hvp,
        lazy=g.lazy,
        fd_eps=g.fd_eps,
        prior=prior,
        two_sided=g.two_sided,
        reduce=dist.sum if dist.active else None,
    )
    ctx = BuildContext(lm=lm, adapted=adapted, config=g, seed=config.seed, run_dir=run_dir)
    loss_terms = build_loss_terms(names, ctx)
    transforms = build_transforms(names, ctx)
    info["loss_terms"] = [t.name for t in loss_terms]
    info["transforms"] = [t.name for t in transforms]
    return _Guide(
        engine,
        info,
        objective,
        config.bf16,
        source_batches,
        source_vector,
        loss_terms,
        transforms,
        dist,
    )


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


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _finite_or_none(x: float) -> float | None:
    """Curves are JSON: a skipped step's non-finite value is recorded as null."""
    return x if math.isfinite(x) else None


def _digest(order: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(order).encode()).hexdigest()[:16]


def load_run_config(run_dir: Path) -> TrainConfig:
    """The configuration a run directory was started with (for resume, eval and predict)."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise GradguideError(
            "not a gradguide training run directory (no config.json)", file=run_dir
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GradguideError(f"cannot read the run's config: {e}", file=path) from None
    return from_dict(TrainConfig, data, source=str(path))


@dataclasses.dataclass
class TrainedRun:
    """A finished run loaded back: its config, task and the adapted model ready for scoring."""

    config: TrainConfig
    task: Task
    lm: LoadedModel
    demonstrations: list[Instance]
    record: dict[str, Any]


def load_trained(run_dir: str | Path, device: str | None = None) -> TrainedRun:
    """Rebuild a finished run's model (base model + saved adapter) for evaluation or prediction,
    on ``device`` (auto, cpu, cuda, cuda:N; None: the device setting the run was trained with)."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if device is not None:  # a run trained on a GPU, evaluated on another machine
        config = dataclasses.replace(config, device=device)
    record_path = run_dir / "record.json"
    if not record_path.is_file():
        raise GradguideError("run has not finished (no record.json); resume it first", file=run_dir)
    record = json.loads(record_path.read_text())
    method = get_method(config.method)
    lm = load_model(
        config.model,
        cache_dir=config.cache_dir,
        seed=config.seed,
        dtype=parse_dtype(config.dtype),
        device=resolve_device(config.device),
    )
    if method.trains:
        lm = method.load(lm, run_dir / ADAPTER_NAME, config.method_options).as_lm(lm)
    lm.model.eval()
    setup = _prepare_data(config)
    by_id = {x.id: x for x in setup.train}
    demos = [by_id[i] for i in record["data"]["demonstration_ids"]]
    return TrainedRun(config, setup.task, lm, demos, record)


def reevaluate(
    run_dir: str | Path, *, show_progress: bool = True, device: str | None = None
) -> dict[str, float]:
    """Evaluate a finished run again on its evaluation set (must match its record), on
    ``device`` (None: the run's own setting)."""
    run = load_trained(run_dir, device)
    setup = _prepare_data(run.config)
    metrics, _, _ = evaluate_instances(
        run.lm,
        run.task,
        setup.eval,
        demonstrations=run.demonstrations,
        options=run.config.scoring,
        show_progress=show_progress,
    )
    return metrics
