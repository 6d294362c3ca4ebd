"""The three kinds of guidance the training loop knows (DESIGN.md, "Rules of the house").

* a **gradient penalty** R(g), a function of the task gradient g; all penalties together cost one
  Hessian-vector product per step through the identity ∇θ[L + R(∇L)] = g + H·∂R/∂g
  (see gradguide.guidance.engine);
* a **loss term**, an extra differentiable loss on outputs or parameters;
* a **gradient transform**, which edits the gradients in place before the optimiser step.

A new term is one small class implementing one of these protocols plus a registry line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class PenaltyContext:
    """What a gradient penalty may look at besides g (flat vectors in the trainable space)."""

    prior: torch.Tensor | None = None
    source: torch.Tensor | None = None


class GradientPenalty(Protocol):
    """A term R(g) of the guided objective; ``value`` must be differentiable in g (and source)."""

    name: str
    weight: float
    needs_prior: bool
    needs_source: bool

    def value(self, g: torch.Tensor, ctx: PenaltyContext) -> torch.Tensor:
        """The weighted penalty (a scalar tensor) at gradient ``g``."""
        ...


class LossTerm(Protocol):
    """An extra differentiable loss added to the task loss (e.g. a spectral regulariser)."""

    name: str

    def loss(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
        """The weighted extra loss for the current parameters."""
        ...


class GradientTransform(Protocol):
    """An in-place edit of the gradients before the optimiser step (e.g. a spectral filter)."""

    name: str

    def apply(self, params: dict[str, torch.nn.Parameter]) -> None:
        """Rewrite ``p.grad`` of the given parameters."""
        ...
