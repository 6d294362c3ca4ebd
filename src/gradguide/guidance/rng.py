"""Replaying the random state, so that every evaluation of a loss closure within one step sees
the same function: the same dropout masks (and any other random draw made in the forward pass).

A finite-difference Hessian-vector product subtracts two gradients of the loss; if the two
evaluations draw different dropout masks the difference is mask noise divided by ε, not H·v.
:class:`Replayed` records the generators' state before the first call and restores it before
every later call (then leaves the generators where one call leaves them), on the CPU and on
every initialised CUDA device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

import torch

LossFn = Callable[[], torch.Tensor]
RngState = tuple[torch.Tensor, list[torch.Tensor] | None]


def rng_state() -> RngState:
    """The CPU generator's state and, when CUDA is initialised, every CUDA device's."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: RngState) -> None:
    """Restore a state taken by :func:`rng_state`."""
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


class Replayed:
    """A loss closure whose every call draws the random numbers of its first call."""

    def __init__(self, fn: LossFn) -> None:
        self.fn = fn
        self.before: RngState | None = None
        self.after: RngState | None = None

    def __call__(self) -> torch.Tensor:
        if self.before is None:
            self.before = rng_state()
            out = self.fn()
            self.after = rng_state()
            return out
        assert self.after is not None
        set_rng_state(self.before)
        try:
            return self.fn()
        finally:
            set_rng_state(self.after)


@overload
def replayed(fn: LossFn) -> LossFn: ...
@overload
def replayed(fn: None) -> None: ...
def replayed(fn: LossFn | None) -> LossFn | None:
    """``fn`` made to replay its first call's random state (None stays None)."""
    if fn is None or isinstance(fn, Replayed):
        return fn
    return Replayed(fn)
