"""A run's guidance assembled from its configuration: penalties, prior, source, terms, engine.

``assemble`` turns ``config.guidance`` into a :class:`Guide`, the one object the training loop
talks to: the HVP engine (gradient penalties and the prior), the source task's batches or saved
vector, the loss terms and gradient transforms, the facts for the run record, and the state a
checkpoint must hold for an exact resume (``state_dict``/``load_state_dict``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gradguide.device import autocast
from gradguide.distributed import DistContext
from gradguide.errors import GradguideError
from gradguide.guidance import (
    build_loss_terms,
    build_penalties,
    build_transforms,
    parse_guidance,
    term_share,
)
from gradguide.guidance.base import GradientTransform, LossTerm, Stateful
from gradguide.guidance.engine import GuidedGradient, LossFn, StepStats
from gradguide.guidance.priors import (
    MEAN_GRADIENT_FILE,
    PRIOR_FILE,
    FixedPrior,
    Prior,
    build_prior,
    load_vector,
    reference_corpus,
    save_vector,
)
from gradguide.guidance.registry import BuildContext
from gradguide.methods import Adapted
from gradguide.methods.base import Objective
from gradguide.models import LoadedModel
from gradguide.tasks import get_task, sample_k_shot
from gradguide.train_data import data_order

if TYPE_CHECKING:
    from gradguide.train_config import GuidanceConfig, TrainConfig


@dataclasses.dataclass
class Guide:
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
    #: ∇(task loss) alone on a step that measures the loss terms' share (term_share)
    task_gradient: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        """Where the run computes (its process's device)."""
        return self.dist.device

    def term_keys(self) -> list[str]:
        """Curve names of the loss terms' per-step values and of the guidance's measures of its
        own weight: the terms' share of the gradient, what the transforms keep of it."""
        keys = []
        if self.loss_terms:
            keys += [*(f"term_{t.name}" for t in self.loss_terms), *term_share.TERM_KEYS]
        if self.transforms:
            keys.append("transform_keep")
        return keys

    def term_share(self, stats: StepStats) -> dict[str, float | None]:
        """The loss terms' part of this step's gradient, when the step took ∇L apart."""
        task, self.task_gradient = self.task_gradient, None
        if task is None or stats.gradient is None:
            return {}
        return term_share.term_measures(stats.gradient, task)

    def loss_closure(
        self, step: int, batch: list[Any], params: dict[str, torch.nn.Parameter]
    ) -> tuple[list[LossFn], dict[str, float]]:
        """The step's loss closures (task loss + loss terms), one per micro-batch, and the
        values of their first calls, summed over the micro-batches.

        The HVP may call a closure at perturbed parameters; the recorded values (task loss and
        each term) are those of the first call, at the step's own parameters. In a distributed
        run the closures see this rank's shard; each micro-batch is weighted by its share of the
        global batch, so the closures add up to the batch's mean loss (a loss term counts once,
        as the weighted mean of its value on each micro-batch's forward pass).
        """
        for term in self.loss_terms:
            term.begin_step(step)
        first: dict[str, float] = {}
        # a distributed run would need ∇L reduced across ranks: its terms go unmeasured
        measure = bool(self.loss_terms) and term_share.measured(step) and not self.dist.active
        self.task_gradient = None

        def part(chunk: list[Any], weight: float) -> LossFn:
            called = False

            def loss() -> torch.Tensor:
                nonlocal called
                values: dict[str, float] = {}
                with self._autocast():
                    task = self.objective.loss(chunk) * weight
                    total = task
                    for term in self.loss_terms:
                        value = term.loss(params) * weight
                        total = total + value
                        values[f"term_{term.name}"] = float(value.detach())
                if not called:  # the first call, at the step's parameters
                    called = True
                    if measure:
                        g = term_share.task_gradient(task, list(params.values()))
                        self.task_gradient = (
                            g if self.task_gradient is None else self.task_gradient + g
                        )
                    values["task_loss"] = float(task.detach())
                    for key, v in values.items():
                        first[key] = first.get(key, 0.0) + v
                return total

            return loss

        return [part(c, w) for c, w in self._micro_batches(batch)], first

    def summaries(self) -> dict[str, Any]:
        """Each loss term's and transform's run-level facts, by name."""
        out = {t.name: t.summary() for t in self.loss_terms}
        out.update({t.name: t.summary() for t in self.transforms})
        return out

    def close(self) -> None:
        for term in self.loss_terms:
            term.close()

    def source_fn(self, step: int) -> list[LossFn] | None:
        """Loss closures on this step's source-task batch, one per micro-batch (None without a
        source task)."""
        if self.source_batches is None:
            return None

        def part(chunk: list[Any], weight: float) -> LossFn:
            def loss() -> torch.Tensor:
                with self._autocast():
                    return self.objective.loss(chunk) * weight

            return loss

        return [part(c, w) for c, w in self._micro_batches(self.source_batches[step])]

    def _micro_batches(self, batch: list[Any]) -> list[tuple[list[Any], float]]:
        """This rank's shard of a global batch in micro-batches, each with its weight in the
        batch's mean loss (its share of the shard times the shard's share of the batch)."""
        local = self.dist.shard(batch)
        share = self.dist.share(len(local), len(batch))
        return [(c, share * len(c) / len(local)) for c in self.objective.chunks(local)]

    def _autocast(self) -> torch.autocast:
        return autocast(self.device, self.bf16)

    def _stateful(self) -> list[Stateful]:
        parts: list[Any] = [self.engine.prior, *self.engine.penalties]
        parts += [*self.loss_terms, *self.transforms]
        # a torch module's state_dict is its parameters, not guidance state: never one of these
        return [p for p in parts if isinstance(p, Stateful) and not isinstance(p, torch.nn.Module)]

    def state_dict(self) -> dict[str, Any]:
        """What its learning parts (EMA prior, magnitude target) need for an exact resume."""
        out: dict[str, Any] = {}
        for part in self._stateful():
            out.update(part.state_dict())
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Hand a checkpoint's saved values back to the parts that wrote them."""
        for part in self._stateful():
            part.load_state_dict(state)


def assemble(
    config: TrainConfig,
    lm: LoadedModel,
    adapted: Adapted,
    *,
    objective: Objective,
    steps: int,
    data_root: Path | None,
    run_dir: Path,
    resume: Path | None,
    dist: DistContext,
) -> Guide:
    """Build penalties, prior and source for a run (the prior is saved with the run)."""
    g = config.guidance
    names = parse_guidance(g.use)
    params = list(adapted.trainable.values())
    keys = list(adapted.trainable)
    info: dict[str, Any] = {"use": names, "hvp": g.hvp, "lazy": g.lazy}
    source_batches, source_vector = None, None
    if g.source_task:
        task = get_task(g.source_task)
        pool = task.load(task.train_split, data_root)
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
    wants_prior = any(p.needs_prior for p in penalties)
    prior: Prior | None = None
    if (wants_prior or g.measure_alignment) and g.prior not in ("", "none"):
        prior = _prior(g, lm, adapted, data_root, run_dir, resume, dist, wants_prior, info)
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
    return Guide(
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


def _prior(
    g: GuidanceConfig,
    lm: LoadedModel,
    adapted: Adapted,
    data_root: Path | None,
    run_dir: Path,
    resume: Path | None,
    dist: DistContext,
    wanted: bool,
    info: dict[str, Any],
) -> Prior | None:
    """d_prior: the one saved with a resumed run, else built (and saved when it is fixed).

    A prior only measured (``measure_alignment``, no term needs it) that cannot be built leaves
    a note in ``info`` instead of failing the run."""
    params = list(adapted.trainable.values())
    keys = list(adapted.trainable)
    saved = run_dir / PRIOR_FILE
    if resume is not None and saved.exists():
        made = None
        if g.prior == "pretrain":  # the corpus it was measured on, for the record
            made = {"corpus": reference_corpus(data_root, g.prior_corpus).info()}
        return FixedPrior(load_vector(saved, keys, params), g.prior, made)
    prior: Prior | None = None
    try:
        prior = build_prior(g.prior, lm, adapted.trainable, data_root, g.prior_corpus)
    except GradguideError as err:
        if wanted:
            raise
        info["prior_note"] = f"directional alignment not measured: {err}"
    if isinstance(prior, FixedPrior) and dist.is_main:
        save_vector(saved, prior.vector, keys, params)
    return prior
