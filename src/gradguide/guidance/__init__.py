"""Gradient-aware guidance: penalties on the gradient (SGG), the HVP engine, priors.

``--guidance`` takes a comma-separated list of the names in ``GUIDANCE``; each expands to a set
of gradient-penalty terms (one small class each in ``sgg.py``). Adding a term is a class plus a
line here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gradguide.errors import GradguideError
from gradguide.guidance.base import GradientPenalty
from gradguide.guidance.sgg import AlignmentPenalty, DirectionPenalty, MagnitudePenalty

#: guidance name → the SGG terms it switches on (ablations switch on one term each)
GUIDANCE: dict[str, tuple[str, ...]] = {
    "sgg": ("dir", "mag", "align"),
    "sgg-dir": ("dir",),
    "sgg-mag": ("mag",),
    "sgg-align": ("align",),
}


def parse_guidance(text: str) -> list[str]:
    """Validated guidance names from a comma-separated string ("" = none)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in GUIDANCE]
    if unknown:
        raise GradguideError(
            f"unknown guidance {unknown[0]!r}; known: {', '.join(GUIDANCE)}", field="guidance.use"
        )
    return names


def build_penalties(names: Sequence[str], cfg: Any, has_source: bool) -> list[GradientPenalty]:
    """The penalty objects for the requested guidance (``cfg`` is a GuidanceConfig)."""
    terms: list[str] = []
    for n in names:
        terms.extend(t for t in GUIDANCE[n] if t not in terms)
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
