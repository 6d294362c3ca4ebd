"""Gradient-aware guidance: the registry of terms the training loop composes.

``--guidance`` takes a comma-separated list of the names in ``GUIDANCE``; each name expands to
terms of the three kinds the loop knows (guidance/base.py): gradient penalties (SGG, through one
HVP per step, ``sgg.py``), loss terms (OFA's step ratio and sharpness, ``ofa.py``) and gradient
transforms. Adding a term is one small class plus a line in ``GUIDANCE`` and one in
``LOSS_TERMS`` or ``TRANSFORMS``; ``GUIDANCE_METHOD`` names the method a guidance trains when a
comparison names only the guidance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradguide.errors import GradguideError
from gradguide.guidance.base import GradientPenalty, GradientTransform, LossTerm
from gradguide.guidance.ofa import build_sharpness, build_step_ratio
from gradguide.guidance.sgg import AlignmentPenalty, DirectionPenalty, MagnitudePenalty
from gradguide.guidance.spectral import build_filter, build_regulariser

#: guidance name → the terms it switches on (ablations switch on one term each)
GUIDANCE: dict[str, tuple[str, ...]] = {
    "sgg": ("dir", "mag", "align"),
    "sgg-dir": ("dir",),
    "sgg-mag": ("mag",),
    "sgg-align": ("align",),
    "ofa": ("ofa-step", "ofa-sharp"),
    "ofa-step": ("ofa-step",),
    "ofa-sharp": ("ofa-sharp",),
    "spectral": ("spectral-reg", "spectral-filter"),
    "spectral-reg": ("spectral-reg",),
    "spectral-filter": ("spectral-filter",),
}
#: guidance name → the method it trains by default where a comparison names only the guidance
#: (`gradguide compare`, bench grids); names not listed train LoRA
GUIDANCE_METHOD: dict[str, str] = {
    "ofa": "layernorm",
    "ofa-step": "layernorm",
    "ofa-sharp": "layernorm",
}

PENALTY_TERMS = ("dir", "mag", "align")


@dataclass
class BuildContext:
    """What a loss term or transform may need to build itself for one run."""

    lm: Any  # gradguide.models.LoadedModel (the adapted model)
    adapted: Any  # gradguide.methods.Adapted
    config: Any  # gradguide.train.GuidanceConfig
    seed: int
    run_dir: Path | None = None
    #: what terms of one run build once and share (e.g. the spectral graphs of reg and filter)
    shared: dict[str, Any] = field(default_factory=dict)


#: term name → builder of a loss term (the term validates its options and raises GradguideError)
LOSS_TERMS: dict[str, Callable[[BuildContext], LossTerm]] = {
    "ofa-step": build_step_ratio,
    "ofa-sharp": build_sharpness,
    "spectral-reg": build_regulariser,
}
#: term name → builder of a gradient transform
TRANSFORMS: dict[str, Callable[[BuildContext], GradientTransform]] = {
    "spectral-filter": build_filter,
}
#: term name → whether, under this GuidanceConfig, it takes a forward-mode JVP through the whole
#: model, which fused SDPA attention does not implement: such runs load eager attention. (Exact
#: HVPs need none: the engine runs their steps on SDPA's math kernel, gradguide.device.)
DOUBLE_BACKWARD: dict[str, Callable[[Any], bool]] = {
    "ofa-sharp": lambda cfg: cfg.ofa.jvp == "exact",
}


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
    """The penalty objects for the requested guidance (``cfg`` is a GuidanceConfig)."""
    terms = [t for t in expand_terms(names) if t in PENALTY_TERMS]
    explicit_align = any(n == "sgg-align" for n in names)
    if "align" in terms and not has_source:
        if explicit_align:
            raise GradguideError(
                "the alignment term needs a source task (guidance.source_task) or a saved run "
                "(guidance.source_run)",
                field="guidance.source_task",
            )
        terms.remove("align")  # plain `sgg` without a source: the two single-task terms
    penalties: list[GradientPenalty] = []
    if "dir" in terms:
        penalties.append(DirectionPenalty(cfg.lambda_dir))
    if "mag" in terms:
        penalties.append(MagnitudePenalty(cfg.lambda_mag, cfg.tau))
    if "align" in terms:
        penalties.append(AlignmentPenalty(cfg.lambda_align))
    return penalties


def build_loss_terms(names: Sequence[str], ctx: BuildContext) -> list[LossTerm]:
    """The loss terms the named guidance switches on, built for this run."""
    return [LOSS_TERMS[t](ctx) for t in expand_terms(names) if t in LOSS_TERMS]


def build_transforms(names: Sequence[str], ctx: BuildContext) -> list[GradientTransform]:
    """The gradient transforms the named guidance switches on, built for this run."""
    return [TRANSFORMS[t](ctx) for t in expand_terms(names) if t in TRANSFORMS]


def needs_penalty_engine(names: Sequence[str]) -> bool:
    """Whether any named guidance uses a gradient penalty (and so the HVP engine)."""
    return any(t in PENALTY_TERMS for t in expand_terms(names))


def needs_eager_attention(names: Sequence[str], cfg: Any) -> bool:
    """Whether the named guidance needs double backward through attention under ``cfg``."""
    return any(t in DOUBLE_BACKWARD and DOUBLE_BACKWARD[t](cfg) for t in expand_terms(names))
