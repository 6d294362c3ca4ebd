"""Full fine-tuning: every weight of the model is trained (the strongest, costliest baseline)."""

from __future__ import annotations

from pathlib import Path

from gradguide.methods.base import (
    Adapted,
    MethodOptions,
    adapted_from,
    load_tensors,
    read_meta,
    save_tensors,
)
from gradguide.models import LoadedModel


class FullFineTuning:
    """Train all parameters; saved as trainable.safetensors (tied weights stored once)."""

    name = "full"
    trains = True
    # Every weight moves: pre-trained features survive few-shot data only with small steps.
    default_lr = 1e-5
    description = "full fine-tuning: every weight is trained"

    def apply(self, lm: LoadedModel, options: MethodOptions) -> Adapted:
        """Make every parameter of ``lm.model`` trainable."""
        for param in lm.model.parameters():
            param.requires_grad_(True)
        return adapted_from(lm.model, self.name, options)

    def save(self, adapted: Adapted, out_dir: Path, base_model: str) -> None:
        """Save every weight (safetensors) with adapter_meta.json."""
        save_tensors(adapted, out_dir, base_model)

    def load(self, lm: LoadedModel, out_dir: Path, options: MethodOptions) -> Adapted:
        """Overwrite ``lm``'s weights with the saved ones and make them trainable."""
        read_meta(out_dir, self.name, lm)
        adapted = self.apply(lm, options)
        load_tensors(adapted, out_dir)
        return adapted
