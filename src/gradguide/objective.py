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
from gradguide.scoring import ScoringOptions, candidate_scores, pass_size
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


def padded_tokens(sizes: Sequence[tuple[int, int]]) -> int:
    """Padded tokens of one pass over instances of these (rows, longest row) sizes."""
    return sum(r for r, _ in sizes) * max((n for _, n in sizes), default=0)


def micro_batches(sizes: Sequence[tuple[int, int]], budget: int) -> list[list[int]]:
    """Consecutive groups of a batch's positions whose scoring pass stays within ``budget``
    padded tokens (rows summed × the longest row); an instance over it alone forms a group.
    ``budget`` 0: one group."""
    groups: list[list[int]] = []
    current: list[tuple[int, int]] = []  # the sizes of the last group
    for i, size in enumerate(sizes):
        if not groups or (budget and padded_tokens([*current, size]) > budget):
            groups.append([])
            current = []
        groups[-1].append(i)
        current.append(size)
    return groups


@dataclasses.dataclass
class RankObjective:
    """Rank classification (DESIGN.md): cross entropy of the gold candidate, per instance.

    A batch whose candidates would take more than ``micro_batch_tokens`` padded tokens in one
    pass is scored in micro-batches (``chunks``); the facts say how often that happened.
    """

    lm: LoadedModel
    scoring: ScoringOptions
    batch_size: int
    epochs: int
    weight_decay: float
    micro_batch_tokens: int = 0
    name: str = "rank-classification"
    _sizes: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict, repr=False)
    _split: int = 0  # batches split into micro-batches (this session's, when resumed)
    _largest: int = 0  # padded tokens of the largest pass

    def items(self, instances: Sequence[Instance]) -> list[Instance]:
        """The instances themselves."""
        return list(instances)

    def loss(self, batch: Sequence[Instance]) -> torch.Tensor:
        """Cross entropy over the batch's candidate scores."""
        return rank_loss(self.lm, batch, self.scoring)

    def chunks(self, batch: Sequence[Instance]) -> list[list[Instance]]:
        """The batch in micro-batches within the token budget (the whole batch if it fits)."""
        if not self.micro_batch_tokens:
            return [list(batch)]
        sizes = [self._size(x) for x in batch]
        groups = micro_batches(sizes, self.micro_batch_tokens)
        for group in groups:
            self._largest = max(self._largest, padded_tokens([sizes[i] for i in group]))
        self._split += len(groups) > 1
        return [[batch[i] for i in group] for group in groups]

    def _size(self, x: Instance) -> tuple[int, int]:
        key = f"{x.id}\0{x.prompt}"
        if key not in self._sizes:
            self._sizes[key] = pass_size(self.lm, x, self.scoring)
        return self._sizes[key]

    def finish(self, instances: Sequence[Instance]) -> dict[str, Any]:
        """How the batches were scored: the token budget, batches split, the largest pass."""
        if not self.micro_batch_tokens:
            return {}
        return {
            "micro_batch_tokens": self.micro_batch_tokens,
            "batches_split": self._split,
            "largest_pass_tokens": self._largest,
        }


def objective_for(config: TrainConfig, lm: LoadedModel, adapted: Adapted) -> Objective:
    """The run's objective: the method's own (SetFit's pairs) or rank classification."""
    method = get_method(config.method)
    if isinstance(method, OwnObjective):
        return method.objective(adapted)
    o = config.optim
    return RankObjective(
        lm, config.scoring, o.batch_size, o.epochs, o.weight_decay, config.micro_batch_tokens
    )


def rank_loss(lm: LoadedModel, batch: Sequence[Instance], options: ScoringOptions) -> torch.Tensor:
    """Cross entropy of the gold candidate over the candidates' scores (rank classification)."""
    scores = candidate_scores(lm, batch, "", options)
    gold = torch.tensor([x.gold for x in batch], device=scores.device)
    return F.cross_entropy(scores, gold)
