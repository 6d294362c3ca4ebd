"""BitFit: train only the bias terms (Ben Zaken et al., 2022); models without biases are refused."""

from __future__ import annotations

from gradguide.errors import GradguideError
from gradguide.methods.base import (
    Adapted,
    MethodOptions,
    SavedAsTensors,
    adapted_from,
    freeze_all,
)
from gradguide.models import LoadedModel


def is_bias(name: str) -> bool:
    """True for a parameter named ``bias`` (the last component of its dotted name)."""
    return name.rsplit(".", 1)[-1] == "bias"


class BitFit(SavedAsTensors):
    """Freeze all weights, train every bias (attention, MLP and normalisation biases)."""

    name = "bitfit"
    trains = True
    # Biases start near zero and are few: the BitFit paper's 1e-4..1e-3 range, upper end.
    default_lr = 1e-3
    default_guidance = ""
    role = "baseline"
    report_rank = 80
    step_factor = 1.0
    eval_factor = 1.0
    description = "BitFit: only the bias terms are trained"

    def apply(self, lm: LoadedModel, options: MethodOptions) -> Adapted:
        """Make exactly the bias parameters trainable; GradguideError when there are none."""
        biases = [p for n, p in lm.model.named_parameters() if is_bias(n)]
        if not biases:
            raise GradguideError(f"bitfit needs a model with bias terms; {lm.name} has none")
        freeze_all(lm.model)
        for param in biases:
            param.requires_grad_(True)
        return adapted_from(lm.model, self.name, options)
