"""What a run minimises: rank classification over the candidates, or a method's own objective.

An objective (gradguide.methods.base.Objective) turns the k-shot sample into training items,
gives each batch's loss and brings its batch size, epochs and weight decay; SetFit brings its
pairs, every other method trains with :class:`RankObjective`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from gradguide.methods import Adapted, get_method
from gradguide.methods.base import Objective, OwnObjective
from gradguide.models import LoadedModel
from gradguide.scoring import ScoringOptions, candidate_scores
from gradguide.tasks.base import Instance
from gradguide.train_config import TrainConfig


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


def rank_loss(lm: LoadedModel, batch: Sequence[Instance], options: ScoringOptions) -> torch.Tensor:
    """Cross entropy of the gold candidate over the candidates' scores (rank classification)."""
    scores = candidate_scores(lm, batch, "", options)
    gold = torch.tensor([x.gold for x in batch], device=scores.device)
    return F.cross_entropy(scores, gold)
