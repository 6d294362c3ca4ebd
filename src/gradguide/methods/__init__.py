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
from gradguide.methods.base import (
    Adapted,
    Method,
    MethodOptions,
    check_method,
    install_method_options,
    uninstall_method_options,
)
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
    "build_registry",
    "get_method",
    "list_methods",
    "methods_in_report_order",
    "register_method",
    "unregister_method",
]


def build_registry(methods: tuple[Method, ...]) -> dict[str, Method]:
    """The registry of ``methods`` by name, refusing bad metadata and clashing names or ranks."""
    registry: dict[str, Method] = {}
    ranks: dict[int, str] = {}
    for m in methods:
        check_method(m)
        if m.name in registry:
            raise GradguideError(f"method {m.name!r} is registered twice")
        if m.report_rank in ranks:
            raise GradguideError(
                f"methods {ranks[m.report_rank]!r} and {m.name!r} share report_rank {m.report_rank}"
            )
        registry[m.name] = m
        ranks[m.report_rank] = m.name
    return registry


_REGISTRY: dict[str, Method] = build_registry(
    (
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
)
for _method in _REGISTRY.values():
    install_method_options(_method)  # MethodOptions gains each method's options, in this order


def register_method(method: Method) -> Method:
    """Add a method from outside this list (a plugin module, or a test), its options included.

    The checks of :func:`build_registry` apply (metadata, name, rank), and an option name
    another method declared is refused. ``GRADGUIDE_PLUGINS`` modules calling this are imported
    wherever gradguide runs (gradguide.guidance.load_plugins).
    """
    registry = build_registry((*_REGISTRY.values(), method))
    install_method_options(method)
    _REGISTRY[method.name] = registry[method.name]
    return method


def unregister_method(name: str) -> None:
    """Remove a method added with :func:`register_method`, and its options, again."""
    _REGISTRY.pop(name)
    uninstall_method_options(name)


def list_methods() -> list[Method]:
    """Every registered method, training methods first (the registry's order)."""
    return list(_REGISTRY.values())


def methods_in_report_order(role: str | None = None) -> list[Method]:
    """Registered methods in the report's order (``report_rank``), only ``role``'s if given."""
    chosen = [m for m in _REGISTRY.values() if role is None or m.role == role]
    return sorted(chosen, key=lambda m: m.report_rank)


def get_method(name: str) -> Method:
    """The method registered under ``name``; GradguideError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise GradguideError(f"unknown method {name!r}; known methods: {known}") from None
