"""How far a run's loss terms (OFA's penalties, the spectral regulariser) move its gradient.

A loss term adds its own gradient to the task's, ∇(L + T) = ∇L + ∇T, and the engine sees only the
sum: for such a run ‖guided g‖/‖g‖ is 1 whatever T does, so the report's sanity check was blind to
a term that swamps the task. On the first step and every ``MEASURE_EVERY``-th, the task gradient
∇L is taken apart by one more backward pass through the retained graph (it draws no random
numbers and writes no ``.grad``, so the run's numbers are unchanged), and the step records
``task_grad_norm`` = ‖∇L‖ and ``terms_to_task`` = ‖∇T‖/‖∇L‖, read by gradguide.report.sanity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradguide.guidance.hvp import flat

#: measure every this many steps (and step 0): about one extra task backward per 4 steps
MEASURE_EVERY = 4
#: the per-step curves this module fills (None on steps it does not measure)
TERM_KEYS = ("task_grad_norm", "terms_to_task")


def measured(step: int) -> bool:
    """Whether ``step`` takes the task gradient apart."""
    return step % MEASURE_EVERY == 0


def task_gradient(task_loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """∇L alone, flat and detached, keeping the graph for the step's own backward pass."""
    grads = torch.autograd.grad(task_loss, list(params), retain_graph=True, allow_unused=True)
    return flat(list(grads), list(params)).detach()


def term_measures(total: torch.Tensor, task: torch.Tensor) -> dict[str, float | None]:
    """``task_grad_norm`` and ``terms_to_task`` from ∇(L + T) and ∇L (ratio None when ∇L = 0)."""
    task_norm = float(torch.linalg.vector_norm(task))
    terms = float(torch.linalg.vector_norm(total - task))
    return {"task_grad_norm": task_norm, "terms_to_task": terms / task_norm if task_norm else None}


__all__ = ["MEASURE_EVERY", "TERM_KEYS", "measured", "task_gradient", "term_measures"]
