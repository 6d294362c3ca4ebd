"""A method added from one module, with an option of its own: ``toy-norm``.

LayerNorm tuning whose trained gains start scaled by ``method_options.toy_norm_scale`` (its options
dataclass, declared here). Importing this module registers it (the one call at the bottom);
tests/test_extending.py checks that the option reads, records and hashes like any other setting
and re-keys no other method's run, and docs/extending.md ("A method") points to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradguide.config import option
from gradguide.methods import register_method
from gradguide.methods.base import Adapted, MethodOptions
from gradguide.methods.layernorm import LayerNormTuning, norm_modules
from gradguide.models import LoadedModel


@dataclass
class ToyNormOptions:
    """toy-norm's settings (``method_options.toy_norm_*``)."""

    toy_norm_scale: float = option(1.0, "scale of the LayerNorm gains toy-norm starts from")


class ToyNorm(LayerNormTuning):
    """LayerNorm tuning from gains scaled by ``toy_norm_scale``."""

    name = "toy-norm"
    report_rank = 71
    description = "toy: LayerNorm tuning from scaled gains (tests/plugins/toy_method.py)"
    options = ToyNormOptions

    def apply(self, lm: LoadedModel, options: MethodOptions) -> Adapted:
        """Scale every norm's weight by the option, then train the norms as layernorm does."""
        with torch.no_grad():
            for module in norm_modules(lm.model).values():
                weight = getattr(module, "weight", None)
                if weight is not None:
                    weight.mul_(options.toy_norm_scale)
        adapted = super().apply(lm, options)
        adapted.info["toy_norm_scale"] = options.toy_norm_scale
        return adapted


TOY_NORM = register_method(ToyNorm())
