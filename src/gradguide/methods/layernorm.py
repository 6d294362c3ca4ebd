"""LayerNorm tuning: train only the normalisation gains (and biases), as OFA does.

Normalisation layers are found by class name (``LayerNorm``, ``LlamaRMSNorm``, any class whose
name contains "Norm"); their own parameters are made trainable in place. PEFT's ``LNTuningConfig``
is not used: it trains *copies* of the norm layers under new names, whereas OFA
(guidance/ofa_blocks.py) reads each layer's gain as that layer's preconditioner under its original
name, and in-place training keeps the model's parameter names and memory unchanged.
"""

from __future__ import annotations

import torch

from gradguide.errors import GradguideError
from gradguide.methods.base import (
    Adapted,
    MethodOptions,
    SavedAsTensors,
    adapted_from,
    freeze_all,
)
from gradguide.models import LoadedModel


def norm_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every normalisation module (class name containing "Norm"), by name."""
    return {n: m for n, m in model.named_modules() if "Norm" in type(m).__name__}


class LayerNormTuning(SavedAsTensors):
    """Freeze everything but the normalisation layers' weights and biases."""

    name = "layernorm"
    trains = True
    # Gains start at 1 and are few; Adam moves each by ~lr per step, so 1e-3 reshapes them by a
    # few percent over a few-shot run without the instability of larger steps on every layer.
    default_lr = 1e-3
    default_guidance = ""
    role = "baseline"
    report_rank = 70
    step_factor = 1.0
    eval_factor = 1.0
    description = "LayerNorm tuning: only normalisation gains and biases are trained (OFA)"

    def apply(self, lm: LoadedModel, options: MethodOptions) -> Adapted:
        """Make the parameters of every normalisation module trainable."""
        norms = norm_modules(lm.model)
        params = [p for m in norms.values() for p in m.parameters(recurse=False)]
        if not params:
            raise GradguideError(f"layernorm tuning found no normalisation layer in {lm.name}")
        freeze_all(lm.model)
        for param in params:
            param.requires_grad_(True)
        return adapted_from(lm.model, self.name, options, info={"norm_layers": len(norms)})
