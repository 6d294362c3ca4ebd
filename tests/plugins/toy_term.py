"""A guidance family added from one module: an L2 pull of the trained parameters to their start.

``pull`` adds weight · Σ‖θ − θ₀‖² to the loss (θ₀: the trainable parameters when the run starts),
with one option, ``guidance.pull.weight``. Importing this module registers it (the one call at the
bottom); tests/test_extending.py runs it through training, a grid and the report, and
docs/extending.md walks through it line by line.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch

from gradguide.errors import GradguideError
from gradguide.guidance import BuildContext, GuidanceSpec, Term, register_guidance


@dataclasses.dataclass
class PullOptions:
    """Settings of the pull toward the initial parameters (``guidance.pull.*``)."""

    weight: float = dataclasses.field(default=0.5, metadata={"help": "weight of Σ‖θ − θ₀‖²"})


def check_pull(options: PullOptions, method: str, terms: Sequence[str]) -> None:
    """Refuse a negative or non-finite weight, naming the setting."""
    if not (options.weight >= 0 and math.isfinite(options.weight)):
        raise GradguideError(f"must be >= 0, got {options.weight}", field="guidance.pull.weight")


class PullTerm:
    """Loss term weight · Σ‖θ − θ₀‖² over the trainable parameters."""

    name = "pull"

    def __init__(self, params: dict[str, torch.nn.Parameter], weight: float) -> None:
        self.start = {n: p.detach().clone() for n, p in params.items()}
        self.weight = weight
        self.last = 0.0

    def begin_step(self, step: int) -> None:
        """Nothing to draw: the term is a function of the parameters alone."""

    def loss(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
        """The weighted squared distance of ``params`` from where the run started."""
        value = (
            self.weight
            * torch.stack([((p - self.start[n]) ** 2).sum() for n, p in params.items()]).sum()
        )
        self.last = float(value.detach())
        return value

    def summary(self) -> dict[str, Any]:
        """The weight and the last value, for the run record."""
        return {"weight": self.weight, "last": self.last}

    def close(self) -> None:
        """Nothing to release."""


def build_pull(ctx: BuildContext) -> PullTerm:
    """The ``pull`` term of a run."""
    return PullTerm(ctx.adapted.trainable, ctx.config.pull.weight)


PULL = register_guidance(
    GuidanceSpec(
        names={"pull": ("pull",)},
        terms=(Term("pull", "loss", build_pull),),
        options=PullOptions,
        options_key="pull",
        validate=check_pull,
        cost={"pull": 1.1},
        method="layernorm",
    )
)
