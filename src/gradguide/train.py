"""The training recipe: setup → fit → evaluate → record, for one method on a k-shot sample.

Flow (DESIGN.md): task → k-shot instances → candidate scores → cross entropy over candidates →
gradient → guidance → optimiser. The loop is deliberately small; methods decide *what* is trained
(gradguide.methods), guidance *how the gradient is shaped* (gradguide.guidance.assembly), and the
loop never looks inside either. Each stage lives in its module: the settings
(gradguide.train_config), the data (gradguide.train_data), the objective (gradguide.objective),
the optimisation loop and its checkpoints (gradguide.fit), the record (gradguide.record) and
reading a finished run back (gradguide.trained); their public names are re-exported here.

Reproducibility: the data order is a pure function of the seed (a fresh permutation per epoch),
the method's initialisation draws from ``torch.manual_seed(seed)``, and a checkpoint holds the
trainable tensors, optimiser, scheduler, RNG states, the guidance's learnt state and the curves
so far, so a resumed run ends with exactly the numbers of an uninterrupted one on CPU.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from gradguide.atomic import write_json_atomic
from gradguide.checkpoint import remove_checkpoint
from gradguide.config import to_dict
from gradguide.device import enable_checkpointing, reset_peak_memory
from gradguide.distributed import DistContext
from gradguide.distributed import init as init_distributed
from gradguide.errors import GradguideError
from gradguide.evaluate import evaluate_instances, write_predictions
from gradguide.fit import CURVE_KEYS, Fitted, make_scheduler
from gradguide.fit import fit as optimise
from gradguide.guidance import needs_eager_attention, parse_guidance
from gradguide.guidance.assembly import assemble
from gradguide.health import GradientWarning, check_gradients, finite_curves, warning_text
from gradguide.layerwise import layer_diagnostics
from gradguide.methods import Adapted, Method, get_method
from gradguide.models import LoadedModel, load_configured
from gradguide.objective import RankObjective, objective_for, rank_loss, total_steps
from gradguide.record import new_run_dir, reset_peak_rss, train_record, write_record
from gradguide.tasks import sample_demonstrations
from gradguide.tasks.base import Instance
from gradguide.train_config import (
    GuidanceConfig,
    OptimConfig,
    TrainConfig,
    as_eval_config,
    validate,
)
from gradguide.train_data import RunData, data_order, prepare_data
from gradguide.trained import (
    ADAPTER_NAME,
    CONFIG_NAME,
    TrainedRun,
    load_run_config,
    load_trained,
    reevaluate,
)

__all__ = [
    "ADAPTER_NAME",
    "CONFIG_NAME",
    "CURVE_KEYS",
    "Fitted",
    "GuidanceConfig",
    "OptimConfig",
    "RankObjective",
    "TrainConfig",
    "TrainResult",
    "TrainedRun",
    "as_eval_config",
    "data_order",
    "load_run_config",
    "load_trained",
    "make_scheduler",
    "objective_for",
    "rank_loss",
    "reevaluate",
    "total_steps",
    "train",
    "validate",
]


@dataclasses.dataclass
class TrainResult:
    """What a finished run produced; the same facts are in ``run_dir/record.json``."""

    metrics: dict[str, float]
    record: dict[str, Any]
    run_dir: Path
    adapted: Adapted | None = None
    is_main: bool = True  # False on the other ranks of a distributed run (empty record, metrics)


def train(
    config: TrainConfig, *, resume: Path | None = None, show_progress: bool = True
) -> TrainResult:
    """Train ``config.method`` on a k-shot sample, evaluate, save, and write the run record.

    With ``resume`` (a run directory) the run continues from its last checkpoint, with the
    configuration stored in that directory.
    """
    started = time.perf_counter()
    own_peak = reset_peak_rss()

    # setup: the settings checked, the processes joined, the data drawn, the run directory made,
    # the model loaded and the method's trainable parameters initialised from the seed
    config, method = _settled(config)
    dist = init_distributed(config.device)
    reset_peak_memory(dist.device)
    if dist.world > config.optim.batch_size:
        raise GradguideError(
            f"{dist.world} processes need a batch of at least {dist.world} examples",
            field="optim.batch_size",
        )
    data = prepare_data(config)
    run_dir = resume if resume is not None else _new_run_dir(config, method, data, dist)
    lm = _load_model(config, dist.device)
    load_s = time.perf_counter() - started
    torch.manual_seed(config.seed)
    adapted = method.apply(lm, config.method_options) if method.trains else None
    model_lm = adapted.as_lm(lm) if adapted is not None else lm
    if config.gradient_checkpointing and adapted is not None:
        enable_checkpointing(lm.model, lm.name)

    # fit: optimise the trainable parameters (from the checkpoint when resuming) and save them
    fit = Fitted()
    if adapted is not None:
        fit = _fit_method(
            config,
            model_lm,
            adapted,
            data,
            run_dir=run_dir,
            resume=resume,
            dist=dist,
            show_progress=show_progress,
        )
        if dist.is_main:
            method.save(adapted, run_dir / ADAPTER_NAME, config.model)
    if not dist.is_main:  # rank 0 evaluates and writes the record
        dist.barrier()
        return TrainResult({}, {}, run_dir, adapted, is_main=False)

    # evaluate: score the evaluation set (after the icl method's demonstrations), diagnostics
    demos: list[Instance] = []
    if method.name == "icl":
        demos = sample_demonstrations(
            data.train, min(config.icl_shots, len(data.train)), config.seed
        )
    model_lm.model.eval()
    metrics, scored, facts = evaluate_instances(
        model_lm,
        data.task,
        data.eval,
        demonstrations=demos,
        options=config.scoring,
        show_progress=show_progress,
    )
    diagnostics = None
    if config.layer_diagnostics:
        diagnostics = layer_diagnostics(
            model_lm,
            data.eval[: config.layer_diagnostics],
            demos,
            config.scoring,
            config.guidance.ofa,
            config.seed,
        )

    # record: everything a reader needs to trust the numbers, written atomically
    record = train_record(
        config=config,
        lm=lm,
        data=data,
        demos=demos,
        adapted=adapted,
        fit=fit,
        metrics=metrics,
        facts=facts,
        diagnostics=diagnostics,
        started=started,
        load_s=load_s,
        dist=dist,
        own_peak=own_peak,
    )
    _check_gradients(config, record)
    write_predictions(run_dir, data.eval, scored)
    write_record(run_dir, record)
    dist.barrier()  # the other ranks are past every read of the checkpoint
    if not config.keep_checkpoint:
        remove_checkpoint(run_dir)  # the record and the saved weights are the finished run
    return TrainResult(metrics, record, run_dir, adapted)


def _check_gradients(config: TrainConfig, record: dict[str, Any]) -> None:
    """A guided run checks its own gradient curves (gradguide.health), records the result and
    warns when its update was not the task's: the run itself notices, not only the report."""
    if not (record.get("guidance") or {}).get("use"):
        return
    curves, nonfinite = finite_curves(record.get("curves") or {})
    checked = check_gradients(
        curves,
        clip_limit=config.optim.grad_clip,
        nonfinite=nonfinite,
        skipped_steps=len(record.get("skipped_steps") or ()),
    )
    if checked is None:
        return
    record["gradient_check"] = checked.summary()
    if checked.failed:
        warnings.warn(warning_text(record["gradient_check"]), GradientWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# setup


def _settled(config: TrainConfig) -> tuple[TrainConfig, Method]:
    """The validated config, with the method's default guidance when it names none."""
    validate(config)
    method = get_method(config.method)
    if method.default_guidance and not config.guidance.use:
        config = dataclasses.replace(
            config, guidance=dataclasses.replace(config.guidance, use=method.default_guidance)
        )
    return config, method


def _new_run_dir(config: TrainConfig, method: Method, data: RunData, dist: DistContext) -> Path:
    """A fresh run directory holding config.json (made by rank 0, its name sent to the rest)."""
    run_dir = None
    if dist.is_main:
        extra = [] if config.guidance.use == method.default_guidance else [config.guidance.use]
        arm = "+".join([config.method, *extra]).replace(",", "+")
        name = f"{config.model}-{data.task.name}-{arm}-k{config.shots}-s{config.seed}"
        run_dir = new_run_dir(config.out, f"train-{name}")
        write_json_atomic(run_dir / CONFIG_NAME, to_dict(config))
    return Path(dist.broadcast(str(run_dir)))


def _load_model(config: TrainConfig, device: torch.device) -> LoadedModel:
    """The base model, with eager attention where guidance differentiates through it."""
    eager = needs_eager_attention(parse_guidance(config.guidance.use), config.guidance)
    eager = eager or (config.layer_diagnostics > 0 and config.guidance.ofa.jvp == "exact")
    attn = "eager" if eager else None  # SDPA has no forward-mode derivative
    lm = load_configured(config, device=device, attn_implementation=attn)
    if config.layer_diagnostics and lm.kind != "causal":
        raise GradguideError(
            f"layer diagnostics need a decoder LM (logit lens), not the {lm.kind} {lm.name}",
            field="layer_diagnostics",
        )
    return lm


# --------------------------------------------------------------------------------------------
# fit


def _fit_method(
    config: TrainConfig,
    lm: LoadedModel,
    adapted: Adapted,
    data: RunData,
    *,
    run_dir: Path,
    resume: Path | None,
    dist: DistContext,
    show_progress: bool,
) -> Fitted:
    """The objective and the guidance built, the optimisation run, their facts gathered."""
    objective = objective_for(config, lm, adapted)
    items = objective.items(data.train)
    steps = total_steps(config, len(items), objective.batch_size, objective.epochs)
    guide = assemble(
        config,
        lm,
        adapted,
        objective=objective,
        steps=steps,
        data_root=data.data_root,
        run_dir=run_dir,
        resume=resume,
        dist=dist,
    )
    try:
        fit = optimise(
            config=config,
            run_dir=run_dir,
            lm=lm,
            adapted=adapted,
            items=items,
            steps=steps,
            guide=guide,
            resume=resume,
            show_progress=show_progress,
        )
        guide.info["term_summaries"] = guide.summaries()
    finally:
        guide.close()
    fit.steps = steps
    fit.guidance = guide.info
    fit.objective = {
        "name": objective.name,
        "items": len(items),
        "batch_size": objective.batch_size,
        "epochs": objective.epochs,
        "weight_decay": objective.weight_decay,
        **objective.finish(data.train),
    }
    return fit
