"""A training run's settings: the config dataclasses and the checks made before anything loads.

``TrainConfig`` names a run (model × task × k-shot sample × method × seed) and how it trains
(``OptimConfig``, ``GuidanceConfig``, the method's and the scoring's options). ``validate``
rejects impossible settings with the offending field named. Every field goes into the run's
config.json and record, and (bench/keys.py) into its run key.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from gradguide.config import EvalConfig, UserTaskOptions, option
from gradguide.device import check_device_settings
from gradguide.errors import GradguideError
from gradguide.guidance import (
    carries_term_options,
    check_guidance_options,
    expand_terms,
    needs_penalty_engine,
    parse_guidance,
)
from gradguide.guidance.engine import HVP_MODES
from gradguide.guidance.registry import term_options
from gradguide.methods import MethodOptions, get_method
from gradguide.models import model_kind
from gradguide.scoring import ScoringOptions, check_options


@dataclasses.dataclass
class OptimConfig:
    """Optimiser and schedule; ``lr=None`` takes the method's few-shot default."""

    lr: float | None = option(None, "learning rate (default: the method's)")
    steps: int | None = option(None, "optimisation steps (default: epochs × batches)")
    epochs: int = option(10, "passes over the k-shot sample (default 10)")
    batch_size: int = option(8, "training examples per step (default 8)")
    warmup_ratio: float = option(0.1, "fraction of steps of linear warm-up")
    weight_decay: float = option(0.0, "AdamW weight decay")
    grad_clip: float = option(1.0, "clip the gradient norm (0 = off)")
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

    use: str = option(
        "",
        "comma-separated: {guidance} (a family's settings: "
        "--set guidance.ofa.NAME=VALUE, guidance.spectral.NAME=VALUE, …)",
        flag="--guidance",
    )
    lambda_dir: float = option(0.1, "weight of the direction penalty")
    lambda_mag: float = option(0.1, "weight of the magnitude penalty")
    tau: float | None = option(None, "target gradient norm (default: the first step's)")
    lambda_align: float = option(0.1, "weight of the alignment penalty")
    prior: str = option("pretrain", "d_prior: pretrain, task:RUN_DIR, ema:BETA, file:PATH, none")
    prior_corpus: str | None = option(
        None, "text file (one passage per line) for the pretrain prior"
    )
    source_task: str | None = option(None, "task whose gradient the alignment term follows")
    source_shots: int | None = None
    source_run: str | None = option(None, "a run whose mean gradient is the (constant) source")
    two_sided: bool = option(False, "R_align through g_source")
    hvp: str = option("fd", "Hessian-vector products: fd (default) or exact")
    fd_eps: float = 1e-4
    lazy: int = option(1, "apply the penalty gradient every k-th step, weight k")
    measure_alignment: bool = True

    def __getattr__(self, name: str) -> Any:
        """A family's options on a config built before that family registered: its defaults."""
        return term_options(name)


#: Fields that say where files live, where and how thriftily a run computes, or how often it saves:
#: not what it computes. Not part of a run key (gradguide.bench.keys), not a departure from a
#: preset (gradguide.bench.spec), not a difference between two runs of one cell (gradguide.report).
NO_RESULT_FIELDS = (
    "out",
    "cache_dir",
    "device",
    "gradient_checkpointing",
    "micro_batch_tokens",
    "checkpoint_every",
    "keep_checkpoint",
    "tensorboard",
)


@dataclasses.dataclass
class TrainConfig:
    """A training run: model × task × k-shot sample × method × seed (plus how to train)."""

    model: str = "smollm2-135m"
    task: str = "sst2"
    shots: int = option(32, "size of the k-shot training sample (default 32)")
    method: str = "lora"
    seed: int = option(1, "seed of the sample, the data order and the init")
    data_dir: str | None = None
    cache_dir: str | None = None
    out: str = "runs"
    template: str | None = None
    verbalizer: dict[str, str] | None = None
    user_task: UserTaskOptions = dataclasses.field(default_factory=UserTaskOptions)
    eval_split: str | None = None
    eval_limit: int | None = option(None, "evaluate on the first N examples only")
    #: cross-validation on the k shots (gradguide.bench.tune): the run trains on all folds but
    #: one and evaluates on that one, so settings are chosen without the evaluation set
    cv_folds: int = option(0, "split the k shots into N folds and hold one out (0 = off)")
    cv_fold: int = option(0, "the held-out fold, 0 to cv_folds - 1")
    icl_shots: int = option(4, "demonstrations for the icl method (default 4)")
    bf16: bool = option(False, "bf16 autocast (fp32 weights)")
    #: where the run computes (auto, cpu, cuda, cuda:N) and the weights' precision (fp32, bf16)
    device: str = "auto"
    dtype: str = "fp32"
    #: recompute each block's activations in the backward pass (less memory, one more forward)
    gradient_checkpointing: bool = option(
        False, "recompute activations in the backward pass (less memory)"
    )
    #: a training batch whose scoring pass would exceed this many padded tokens (candidate rows
    #: x their longest row) is split into micro-batches whose gradients add up to the batch's
    #: (gradguide.objective): 77 Banking77 intents x 8 queries are 28k tokens, 44 GB of LoRA
    #: activations on smollm2-135m. It bounds memory, not the result (the batch is the same)
    micro_batch_tokens: int = option(
        4096, "split a batch scoring more padded tokens than this into micro-batches (0 = never)"
    )
    checkpoint_every: int = option(0, "checkpoint every N steps (0 = at end)")
    #: a finished run's checkpoint repeats its saved weights plus the optimiser's moments (about
    #: 3x the trained tensors): removed once the record is written, unless kept to train on
    keep_checkpoint: bool = option(False, "keep the last checkpoint after the run has finished")
    tensorboard: bool = option(False, "also log to TB")
    #: per-layer diagnostics (gradguide.layerwise) on this many evaluation examples; 0 = off
    layer_diagnostics: int = 0
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    method_options: MethodOptions = dataclasses.field(default_factory=MethodOptions)
    scoring: ScoringOptions = dataclasses.field(default_factory=ScoringOptions)
    guidance: GuidanceConfig = dataclasses.field(default_factory=GuidanceConfig)


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
        (config.micro_batch_tokens >= 0, "micro_batch_tokens", "must be >= 0 (0 = never split)"),
        (config.icl_shots > 0 or method.name != "icl", "icl_shots", "must be positive for icl"),
        (config.layer_diagnostics >= 0, "layer_diagnostics", "must be >= 0 (0 = off)"),
        *_cv_checks(config),
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


def _cv_checks(config: TrainConfig) -> list[tuple[bool, str, str]]:
    """The cross-validation checks: a held-out fold of the shots replaces the evaluation set."""
    folds, fold = config.cv_folds, config.cv_fold
    if folds == 0:
        return [(fold == 0, "cv_fold", "needs cv_folds (cross-validation is off)")]
    return [
        (2 <= folds <= config.shots, "cv_folds", f"must be 0 or 2 to shots, got {folds}"),
        (0 <= fold < folds, "cv_fold", f"must be 0 to {folds - 1}, got {fold}"),
        (
            config.eval_split is None and config.eval_limit is None,
            "cv_folds",
            "the held-out fold is the evaluation set: eval_split and eval_limit must be unset",
        ),
    ]


def as_eval_config(config: TrainConfig) -> EvalConfig:
    """The evaluation settings that name a run's model and task (to resolve the task)."""
    return EvalConfig(
        model=config.model,
        task=config.task,
        template=config.template,
        verbalizer=config.verbalizer,
        user_task=config.user_task,
    )
