"""SGG inside the Hugging Face Trainer: a Trainer whose backward pass is the guided gradient.

Use it like ``Trainer`` with one more argument, a :class:`GuidedGradient`; the Trainer's own
clipping, optimiser and scheduler then act on ∇(L + R). The engine overwrites ``.grad`` (it does
not accumulate), so gradient accumulation must stay at 1.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from gradguide.errors import GradguideError
from gradguide.guidance.engine import GuidedGradient, StepStats


class GuidedTrainer(Trainer):
    """``transformers.Trainer`` with SGG (or any gradient penalty) applied at every step."""

    def __init__(self, *args: Any, guidance: GuidedGradient, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.args.gradient_accumulation_steps != 1:
            raise GradguideError(
                "GuidedTrainer needs gradient_accumulation_steps=1 (the guided gradient of a "
                "sum of micro-batches is not the sum of their guided gradients)"
            )
        self.guidance = guidance
        self.guidance_log: list[StepStats] = []

    def training_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """One step: the guided gradient into ``.grad``; returns the task loss (detached)."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        params = [p for p in model.parameters() if p.requires_grad]

        def loss_fn() -> torch.Tensor:
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
            return loss if isinstance(loss, torch.Tensor) else loss[0]

        stats = self.guidance.backward(loss_fn, params, self.state.global_step)
        if not stats.finite:
            for p in params:
                p.grad = torch.zeros_like(p)  # a non-finite step changes nothing
        self.guidance_log.append(stats)
        return torch.tensor(stats.loss if stats.finite else 0.0, device=self.args.device)
