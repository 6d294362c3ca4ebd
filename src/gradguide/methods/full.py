"""Full fine-tuning: every weight of the model is trained (the strongest, costliest baseline)."""

from __future__ import annotations

from gradguide.methods.base import (
    Adapted,
    MethodOptions,
    SavedAsTensors,
    adapted_from,
)
from gradguide.models import LoadedModel


class FullFineTuning(SavedAsTensors):
    """Train all parameters; saved as trainable.safetensors (tied weights stored once)."""

    name = "full"
    trains = True
    # Every weight moves: pre-trained features survive few-shot data only with small steps.
    default_lr = 1e-5
    default_guidance = ""
    role = "baseline"
    report_rank = 30
    #: every weight gets a gradient and an AdamW update
    step_factor = 1.5
    eval_factor = 1.0
    description = "full fine-tuning: every weight is trained"

    def apply(self, lm: LoadedModel, options: MethodOptions) -> Adapted:
        """Make every parameter of ``lm.model`` trainable."""
        for param in lm.model.parameters():
            param.requires_grad_(True)
        return adapted_from(lm.model, self.name, options)
