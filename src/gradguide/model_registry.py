"""The registry of named models: each one a :class:`ModelSpec` declared once, with its metadata.

A spec says what a model is (kind, description), where it is found here (``locate``), how to
load it (``load``) and what it costs the run-time estimator (``cost``). ``gradguide.models``
registers the built-in models; ``load_model``, ``model_kind``, ``gradguide models`` and
``bench.estimate`` read everything from here, so adding a model is a spec and one
``register_model`` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from gradguide.errors import GradguideError

ModelKind = Literal["causal", "encoder"]


@dataclass(frozen=True)
class ModelCost:
    """Per-model estimator constants: load time, seconds per training step of 8, eval throughput."""

    load_s: float
    step_s_per8: float
    eval_per_s: float


class ModelLoader(Protocol):
    """Builds a registered model and its tokenizer; returns them with facts for the run record."""

    def __call__(
        self,
        *,
        cache_dir: str | Path | None,
        dtype: torch.dtype,
        attn_implementation: str | None,
        seed: int,
    ) -> tuple[torch.nn.Module, Any, dict[str, Any]]: ...


@dataclass(frozen=True)
class ModelSpec:
    """One registered model: its name, kind, description, where it is found, loader and cost.

    ``locate`` returns where the model is found here (a path, or a phrase such as "built in
    code"), or None when it is not installed; ``install`` then says how to get it. ``load`` raises
    a one-line :class:`GradguideError` for anything the user can fix (a missing wheel).
    ``tokenizer`` builds the tokenizer alone, without the weights (the run-time estimator reads
    a task's scoring path from it; None: estimates do without).
    """

    name: str
    kind: ModelKind
    description: str
    locate: Callable[[], str | None]
    load: ModelLoader
    cost: ModelCost
    install: str = ""
    tokenizer: Callable[[], Any] | None = None


_MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a named model (a name already taken is refused)."""
    if spec.name in _MODELS:
        raise GradguideError(f"model {spec.name!r} is already registered")
    if spec.kind not in ("causal", "encoder"):
        raise GradguideError(
            f"model {spec.name!r}: kind must be causal or encoder, not {spec.kind!r}"
        )
    _MODELS[spec.name] = spec
    return spec


def unregister_model(name: str) -> None:
    """Remove a named model again (tests that register a toy model clean up with this)."""
    del _MODELS[name]


def model_spec(name: str) -> ModelSpec | None:
    """The spec registered as ``name`` (None for a directory, a hub id or an unknown name)."""
    return _MODELS.get(name)


def registered_models() -> list[ModelSpec]:
    """Every registered spec, in registration order."""
    return list(_MODELS.values())
