"""The three kinds of guidance the training loop knows (DESIGN.md, "Rules of the house").

* a **gradient penalty** R(g), a function of the task gradient g; all penalties together cost one
  Hessian-vector product per step through the identity ∇θ[L + R(∇L)] = g + H·∂R/∂g
  (see gradguide.guidance.engine);
* a **loss term**, an extra differentiable loss on outputs or parameters;
* a **gradient transform**, which edits the gradients in place before the optimiser step.

A new term is one small class implementing one of these protocols, declared in its module with
register_guidance (guidance/registry.py, docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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
    """An extra differentiable loss added to the task loss (OFA penalties, spectral regulariser).

    The loop calls ``begin_step(step)`` once per step, then, inside every evaluation of the loss
    closure (the finite-difference HVP evaluates it more than once), the task loss's forward pass
    followed by ``loss(params)``: a term may read what that forward pass produced (OFA hooks the
    hidden states). Anything random must be drawn from the step number so that repeated closure
    calls within a step see the same draw and a resumed run repeats it exactly.
    """

    name: str

    def begin_step(self, step: int) -> None:
        """Prepare step ``step`` (e.g. draw this step's probes)."""
        ...

    def loss(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
        """The weighted extra loss for the current parameters and the last forward pass."""
        ...

    def summary(self) -> dict[str, Any]:
        """Run-level facts for the run record (JSON-serialisable), read after training."""
        ...

    def close(self) -> None:
        """Release hooks or buffers once training is over."""
        ...


@runtime_checkable
class Stateful(Protocol):
    """A piece of guidance that learns during training (the EMA prior, the magnitude target).

    The loop checkpoints ``state_dict()`` and hands a resumed run's saved state to
    ``load_state_dict``: tensors go to the checkpoint's tensor file, plain values to its
    state.json, so keys must be unique across a run's guidance (``ema``, ``tau``).
    """

    def state_dict(self) -> dict[str, Any]:
        """What an exact resume needs: tensors or JSON values, by key."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint's values (keys of other components included; ignore them)."""
        ...


class GradientTransform(Protocol):
    """An in-place edit of the gradients before the optimiser step (e.g. a spectral filter).

    Applied after the (guided) gradient is formed and before clipping, on finite steps only.
    """

    name: str

    def apply(self, params: dict[str, torch.nn.Parameter]) -> None:
        """Rewrite ``p.grad`` of the given parameters."""
        ...

    def summary(self) -> dict[str, Any]:
        """Run-level facts for the run record (JSON-serialisable), read after training."""
        ...
