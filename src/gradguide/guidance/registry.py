"""One declaration per guidance family, registered by the module that implements its terms.

A term module ends with ``register_guidance(GuidanceSpec(...))`` (the names it adds to
``--guidance``, its terms and their kind, its options dataclass, checks, costs, default method).
Everything else reads the specs: the name and term registries of gradguide.guidance, the run
config's option field ``guidance.<options_key>`` (GuidanceConfig carries one per registered
family), validation, the run key (options of families not in use are left out of it) and the time
estimate. docs/extending.md walks through adding one; ``GRADGUIDE_PLUGINS`` names modules outside
gradguide to import (and so register) wherever gradguide runs, grid workers included.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from gradguide.config import ExtraField, rebuild_dataclass, remember_core_fields
from gradguide.errors import GradguideError

TermKind = Literal["penalty", "loss", "transform"]
PLUGINS_ENV = "GRADGUIDE_PLUGINS"
C = TypeVar("C", bound=type)


@dataclasses.dataclass
class BuildContext:
    """What a loss term or transform may need to build itself for one run."""

    lm: Any  # gradguide.models.LoadedModel (the adapted model)
    adapted: Any  # gradguide.methods.Adapted
    config: Any  # gradguide.train_config.GuidanceConfig
    seed: int
    run_dir: Path | None = None
    #: what terms of one run build once and share (e.g. the spectral graphs of reg and filter)
    shared: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Term:
    """One term of the objective: its kind (guidance/base.py) and how a run builds it."""

    name: str
    kind: TermKind
    #: penalty: GuidanceConfig → GradientPenalty; loss/transform: BuildContext → the term
    build: Callable[[Any], Any]
    #: whether, under a GuidanceConfig, it takes a JVP or double backward through the model
    #: (fused SDPA attention has neither: such runs load eager attention)
    double_backward: Callable[[Any], bool] | None = None
    #: a penalty on the source task's gradient: left out of a family name without a source,
    #: refused when named alone
    needs_source: bool = False


@dataclasses.dataclass(frozen=True)
class GuidanceSpec:
    """A guidance family: the names it adds, its terms, options, checks, costs, default method."""

    #: guidance name → the terms it switches on (the family name and one per ablation)
    names: Mapping[str, tuple[str, ...]]
    terms: tuple[Term, ...]
    #: options dataclass (fields with metadata={"help": …}), set as guidance.<options_key>.*
    options: type | None = None
    options_key: str | None = None
    #: (options, trained method, terms in use) → None, or GradguideError naming the field
    validate: Callable[[Any, str, Sequence[str]], None] | None = None
    #: TrainConfig → whether the options change a run even with none of the terms in use
    #: (OFA's JVP settings drive the layer diagnostics): they stay in its run key then
    options_in_use: Callable[[Any], bool] | None = None
    #: guidance name → cost of a training step relative to a plain LoRA step (bench estimate)
    cost: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: the method a comparison trains when it names only the guidance (None: LoRA)
    method: str | None = None

    def __post_init__(self) -> None:
        own = {t.name for t in self.terms}
        for name, terms in self.names.items():
            missing = [t for t in terms if t not in own]
            if not terms or missing:
                raise GradguideError(f"guidance {name!r} names unknown terms {missing or terms}")
        if (self.options is None) != (self.options_key is None):
            raise GradguideError("a guidance spec gives options and options_key together")
        if self.options is not None and not dataclasses.is_dataclass(self.options):
            raise GradguideError(f"options of {self.key!r} must be a dataclass")

    @property
    def key(self) -> str:
        """The family's registry key: its options key, else its first name."""
        return self.options_key or next(iter(self.names))


SPECS: dict[str, GuidanceSpec] = {}
#: guidance name → the terms it switches on (ablations switch on one term each)
GUIDANCE: dict[str, tuple[str, ...]] = {}
#: term name → builder of a gradient penalty from the GuidanceConfig
PENALTIES: dict[str, Callable[[Any], Any]] = {}
#: term name → builder of a loss term (the term validates its options and raises GradguideError)
LOSS_TERMS: dict[str, Callable[[BuildContext], Any]] = {}
#: term name → builder of a gradient transform
TRANSFORMS: dict[str, Callable[[BuildContext], Any]] = {}
#: term name → whether, under this GuidanceConfig, it takes a forward-mode JVP through the whole
#: model, which fused SDPA attention lacks: such runs load eager attention (Term.double_backward)
DOUBLE_BACKWARD: dict[str, Callable[[Any], bool]] = {}
#: guidance name → the method it trains by default where a comparison names only the guidance
#: (`gradguide compare`, bench grids); names not listed train LoRA
GUIDANCE_METHOD: dict[str, str] = {}
_BY_KIND: dict[str, dict[str, Callable[[Any], Any]]] = {
    "penalty": PENALTIES,
    "loss": LOSS_TERMS,
    "transform": TRANSFORMS,
}
#: the config dataclasses that carry one options field per family (GuidanceConfig)
_CARRIERS: list[type] = []


def register_guidance(spec: GuidanceSpec) -> GuidanceSpec:
    """Add a guidance family: its names, terms and options field (clashes are refused)."""
    taken = set(GUIDANCE) | {t for kind in _BY_KIND.values() for t in kind}
    clash = [n for n in (*spec.names, *(t.name for t in spec.terms)) if n in taken]
    if spec.key in SPECS or clash:
        raise GradguideError(f"guidance {clash[0] if clash else spec.key!r} is already registered")
    if spec.options_key is not None:
        for carrier in _CARRIERS:
            core = {f.name for f in carrier.__dict__["_core_fields"]}
            if spec.options_key in core:
                raise GradguideError(f"options key {spec.options_key!r} is a guidance setting")
    SPECS[spec.key] = spec
    GUIDANCE.update(spec.names)
    for term in spec.terms:
        _BY_KIND[term.kind][term.name] = term.build
        if term.double_backward is not None:
            DOUBLE_BACKWARD[term.name] = term.double_backward
    if spec.method is not None:
        GUIDANCE_METHOD.update(dict.fromkeys(spec.names, spec.method))
    _refresh_carriers()
    return spec


def unregister_guidance(key: str) -> None:
    """Remove a family again (tests that register a toy term clean up with this)."""
    spec = SPECS.pop(key)
    for name in spec.names:
        GUIDANCE.pop(name, None)
        GUIDANCE_METHOD.pop(name, None)
    for term in spec.terms:
        _BY_KIND[term.kind].pop(term.name, None)
        DOUBLE_BACKWARD.pop(term.name, None)
    _refresh_carriers()


def declared_term(name: str) -> Term | None:
    """The declaration of term ``name`` (None for a term put into a registry by hand)."""
    return next((t for s in SPECS.values() for t in s.terms if t.name == name), None)


def option_specs() -> list[GuidanceSpec]:
    """The families with options, in registration order."""
    return [s for s in SPECS.values() if s.options_key is not None]


def check_guidance_options(config: Any, method: str, terms: Sequence[str]) -> None:
    """Each family's checks of its options (GuidanceConfig ``config``), terms in use given."""
    for spec in SPECS.values():
        if spec.validate is not None:
            options = getattr(config, spec.options_key) if spec.options_key else None
            spec.validate(options, method, terms)


def guidance_cost(name: str) -> float:
    """A guidance name's step cost relative to a LoRA step (1.0 where its spec gives none)."""
    return next((s.cost[name] for s in SPECS.values() if name in s.cost), 1.0)


def term_options(name: str) -> Any:
    """Default options of family option key ``name`` (AttributeError if none is registered)."""
    spec = next((s for s in option_specs() if s.options_key == name), None)
    if spec is None or spec.options is None:
        raise AttributeError(name)
    return spec.options()


def carries_term_options(cls: C) -> C:
    """Class decorator: dataclass ``cls`` gets a field per registered family's options.

    The fields follow the class's own, in registration order, and track later registrations, so
    ``guidance.ofa.jvp`` reads, validates, records and hashes like any other setting.
    """
    remember_core_fields(cls)
    _CARRIERS.append(cls)
    _install(cls)
    return cls


def _refresh_carriers() -> None:
    for carrier in _CARRIERS:
        _install(carrier)


def _install(cls: type) -> None:
    """Rebuild ``cls``'s dataclass machinery from its own fields plus the families' options."""
    extra: list[ExtraField] = []
    for spec in option_specs():
        assert spec.options_key is not None and spec.options is not None
        doc = (spec.options.__doc__ or "").strip().splitlines()
        extra.append(
            (
                spec.options_key,
                spec.options,
                dataclasses.field(
                    default_factory=spec.options, metadata={"help": doc[0] if doc else ""}
                ),
            )
        )
    rebuild_dataclass(cls, extra)


def load_plugins() -> list[str]:
    """Import the modules ``GRADGUIDE_PLUGINS`` names (comma-separated), which register terms."""
    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise GradguideError(f"cannot import plugin {name!r}: {e}", field=PLUGINS_ENV) from None
    return names
