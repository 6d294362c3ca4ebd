"""What is trained: one small module per method behind one interface, and their registry.

Training methods: ``full``, ``lora``, ``prompt``, ``adapter``, ``layernorm``, ``ofa`` (layernorm
with the OFA penalties as its default guidance), ``bitfit``, and ``setfit`` (the setfit package:
contrastive body tuning and a head of its own, for encoders; an optional extra).
``zero-shot`` and ``icl`` train nothing (``trains = False``; the trainer skips training).
Every method adapts a :class:`~gradguide.models.LoadedModel` in place with ``apply``, returns an
:class:`Adapted` whose ``trainable`` dict is exactly what is trained, and saves/loads its result
with a verified ``adapter_meta.json`` beside the weights.
"""

from __future__ import annotations

from gradguide.errors import GradguideError
from gradguide.methods.adapter import BottleneckAdapters
from gradguide.methods.base import Adapted, Method, MethodOptions
from gradguide.methods.bitfit import BitFit
from gradguide.methods.full import FullFineTuning
from gradguide.methods.layernorm import LayerNormTuning
from gradguide.methods.lora import LoRA
from gradguide.methods.ofa import OfaTuning
from gradguide.methods.prompt import PromptTuned, PromptTuning
from gradguide.methods.setfit import SetFit
from gradguide.methods.untrained import ICL, ZERO_SHOT

__all__ = [
    "Adapted",
    "Method",
    "MethodOptions",
    "PromptTuned",
    "get_method",
    "list_methods",
]

_REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        FullFineTuning(),
        LoRA(),
        PromptTuning(),
        BottleneckAdapters(),
        LayerNormTuning(),
        OfaTuning(),
        BitFit(),
        SetFit(),
        ZERO_SHOT,
        ICL,
    )
}


def list_methods() -> list[Method]:
    """Every registered method, training methods first (the registry's order)."""
    return list(_REGISTRY.values())


def get_method(name: str) -> Method:
    """The method registered under ``name``; GradguideError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise GradguideError(f"unknown method {name!r}; known methods: {known}") from None
