"""Gradient-aware guidance: the registry of terms the training loop composes.

``--guidance`` takes a comma-separated list of the names in ``GUIDANCE``; each name expands to
terms of the three kinds the loop knows (guidance/base.py): gradient penalties (SGG, through one
HVP per step, ``sgg.py``), loss terms (OFA's step ratio and sharpness, ``ofa.py``) and gradient
transforms. Each family is declared once, by its own module, with
``register_guidance(GuidanceSpec(...))`` (guidance/registry.py): the registries below, the
config's options field, validation, run keys and cost estimates all follow from that declaration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gradguide.errors import GradguideError

# each module registers its family; sgg first, so that GUIDANCE lists it first
from gradguide.guidance import sgg  # noqa: F401

# isort: split
from gradguide.guidance import ofa, spectral  # noqa: F401
from gradguide.guidance.base import GradientPenalty, GradientTransform, LossTerm
from gradguide.guidance.registry import (
    DOUBLE_BACKWARD,
    GUIDANCE,
    GUIDANCE_METHOD,
    LOSS_TERMS,
    PENALTIES,
    SPECS,
    TRANSFORMS,
    BuildContext,
    GuidanceSpec,
    Term,
    carries_term_options,
    check_guidance_options,
    declared_term,
    guidance_cost,
    load_plugins,
    register_guidance,
    unregister_guidance,
)

__all__ = [
    "DOUBLE_BACKWARD",
    "GUIDANCE",
    "GUIDANCE_METHOD",
    "LOSS_TERMS",
    "PENALTIES",
    "SPECS",
    "TRANSFORMS",
    "BuildContext",
    "GuidanceSpec",
    "Term",
    "carries_term_options",
    "check_guidance_options",
    "declared_term",
    "guidance_cost",
    "register_guidance",
    "unregister_guidance",
]
#: the penalty terms of the built-in families (SGG's); PENALTIES holds every registered one
PENALTY_TERMS = tuple(PENALTIES)


def guidance_method(name: str, default: str = "lora") -> str:
    """The method a comparison trains for guidance ``name`` (GUIDANCE_METHOD, else ``default``)."""
    return GUIDANCE_METHOD.get(name, default)


def parse_guidance(text: str) -> list[str]:
    """Validated guidance names from a comma-separated string ("" = none)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in GUIDANCE]
    if unknown:
        raise GradguideError(
            f"unknown guidance {unknown[0]!r}; known: {', '.join(GUIDANCE)}", field="guidance.use"
        )
    return names


def expand_terms(names: Sequence[str]) -> list[str]:
    """The distinct terms the named guidance switches on, in order."""
    terms: list[str] = []
    for n in names:
        terms.extend(t for t in GUIDANCE[n] if t not in terms)
    return terms


def build_penalties(names: Sequence[str], cfg: Any, has_source: bool) -> list[GradientPenalty]:
    """The penalty objects for the requested guidance (``cfg`` is a GuidanceConfig).

    A term on the source task's gradient is left out of a family name (plain ``sgg``: the two
    single-task terms) when there is no source, and refused where a name asks for it alone.
    """
    penalties: list[GradientPenalty] = []
    used = expand_terms(names)
    for term in (t for t in PENALTIES if t in used):  # in registration order, whatever the names'
        declared = declared_term(term)
        if declared is not None and declared.needs_source and not has_source:
            if any(GUIDANCE[n] == (term,) for n in names):
                raise GradguideError(
                    f"the {term} term needs a source task (guidance.source_task) or a saved run "
                    "(guidance.source_run)",
                    field="guidance.source_task",
                )
            continue
        penalties.append(PENALTIES[term](cfg))
    return penalties


def build_loss_terms(names: Sequence[str], ctx: BuildContext) -> list[LossTerm]:
    """The loss terms the named guidance switches on, built for this run."""
    return [LOSS_TERMS[t](ctx) for t in expand_terms(names) if t in LOSS_TERMS]


def build_transforms(names: Sequence[str], ctx: BuildContext) -> list[GradientTransform]:
    """The gradient transforms the named guidance switches on, built for this run."""
    return [TRANSFORMS[t](ctx) for t in expand_terms(names) if t in TRANSFORMS]


def needs_penalty_engine(names: Sequence[str]) -> bool:
    """Whether any named guidance uses a gradient penalty (and so the HVP engine)."""
    return any(t in PENALTIES for t in expand_terms(names))


def needs_eager_attention(names: Sequence[str], cfg: Any) -> bool:
    """Whether the named guidance needs double backward through attention under ``cfg``."""
    return any(t in DOUBLE_BACKWARD and DOUBLE_BACKWARD[t](cfg) for t in expand_terms(names))


load_plugins()
