"""SGG inside the Hugging Face Trainer: a Trainer whose backward pass is the guided gradient.

Use it like ``Trainer`` with one more argument, a :class:`GuidedGradient`; the Trainer's own
clipping, optimiser and scheduler then act on ∇(L + R). The engine overwrites ``.grad`` (it does
not accumulate), so gradient accumulation must stay at 1.

* Data parallel (``torchrun``/``accelerate launch``, DDP): the engine takes gradients with
  ``torch.autograd.grad``, which DDP's gradient hooks never see, so the loss closure runs under
  the accelerator's ``no_sync`` and the engine reduces every gradient, HVP and loss itself
  (``GuidedGradient.reduce``) with the accelerator's mean over processes. The mean, not the sum:
  the Trainer scales each process's loss so that DDP's average of the gradients is the global
  batch's (``num_items_in_batch`` times the number of processes, or equal per-process batches).
  Every process then holds the same guided gradient and takes the same step. DeepSpeed, FSDP,
  XLA and single-process ``DataParallel`` are refused.
* A non-finite step (loss or gradient) leaves every ``.grad`` None: PyTorch optimisers skip
  parameters without a gradient, so the weights and the optimiser state (AdamW's moments, weight
  decay) stay as they were. The learning-rate schedule still advances, as for any counted step.
* Precision: fp16 is refused (the guided gradient bypasses the GradScaler, whose unscale would
  then divide it by the loss scale); with the finite-difference HVP, bf16 (autocast inside the
  model's forward, where no caller can turn it off) and parameters stored below float32 are
  refused too, their resolution is coarser than the HVP's parameter step. bf16 with
  ``hvp="exact"`` is allowed.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import DistributedType
from transformers import Trainer

from gradguide.errors import GradguideError
from gradguide.guidance.engine import GuidedGradient, StepStats

#: accelerate's plain data-parallel (DDP) set-ups, the ones the per-process reduce is right for
DATA_PARALLEL = {DistributedType.NO} | {t for t in DistributedType if t.name.startswith("MULTI_")}


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
        self._check_precision()
        self._check_parallelism()

    def _check_precision(self) -> None:
        """Refuse the precisions whose results would be silently wrong (module docstring)."""
        mixed = str(self.accelerator.mixed_precision)
        if mixed not in ("no", "bf16"):
            raise GradguideError(
                f"GuidedTrainer does not support {mixed} mixed precision: the guided gradient "
                "bypasses the gradient scaler; use bf16 (with hvp='exact') or float32"
            )
        if not (self.guidance.active and self.guidance.hvp == "fd"):
            return
        params = self.model.parameters() if self.model is not None else []
        wide = (torch.float32, torch.float64)
        low = sorted({str(p.dtype) for p in params if p.requires_grad and p.dtype not in wide})
        if mixed == "bf16" or low:
            what = "bf16 mixed precision" if mixed == "bf16" else f"{', '.join(low)} parameters"
            raise GradguideError(
                f"the finite-difference HVP cannot run with {what}: its step is below their "
                "resolution; use GuidedGradient(hvp='exact') or float32"
            )

    def _check_parallelism(self) -> None:
        """Install the cross-process reduce for DDP; refuse what it would not be right for."""
        kind = self.accelerator.distributed_type
        if kind not in DATA_PARALLEL or self.args.n_gpu > 1:
            name = "DataParallel (n_gpu > 1)" if kind in DATA_PARALLEL else kind.value
            raise GradguideError(
                f"GuidedTrainer supports one process or DDP (torchrun / accelerate launch, one "
                f"process per device), not {name}"
            )
        if self.accelerator.num_processes == 1:
            return
        if self.guidance.reduce is not None:
            raise GradguideError(
                "GuidedTrainer reduces the gradients across processes itself: build the "
                "GuidedGradient without reduce="
            )
        self.guidance.reduce = self._mean_over_processes

    def _mean_over_processes(self, t: torch.Tensor) -> torch.Tensor:
        out = self.accelerator.reduce(t.detach(), reduction="mean")
        assert isinstance(out, torch.Tensor)
        return out

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
            with self.accelerator.no_sync(model), self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
            return loss if isinstance(loss, torch.Tensor) else loss[0]

        stats = self.guidance.backward(loss_fn, params, self.state.global_step)
        if not stats.finite:
            for p in params:
                p.grad = None  # the optimiser skips every parameter: nothing moves
        self.guidance_log.append(stats)
        return torch.tensor(stats.loss, device=self.args.device)
