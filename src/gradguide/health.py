"""Is a guided run's update still the task's? The checks of its gradient curves, shared by the
training run (which records them and warns) and the report's sanity section.

A gradient penalty steers the task gradient g; it should not replace it. Per training step a
guided run records ‖g‖ (``grad_norm``) and the norm of the gradient the engine produced,
‖guided g‖ (``guided_norm``); newer records also hold the penalties' share of it,
‖guided g − g‖/‖guided g‖ (``penalty_share``), the factor clipping scaled it by (``clip_scale``),
the loss terms' gradient over the task loss's, ‖∇T‖/‖∇L‖ (``terms_to_task``, from
gradguide.guidance.term_share), and what a gradient transform kept, ‖filtered g‖/‖g‖
(``transform_keep``). For older records the share is bounded below from the norms,
|‖guided g‖ − ‖g‖|/‖guided g‖ (triangle inequality), and the clip scale is
min(1, optim.grad_clip/‖guided g‖).

A run fails a check when, at its median step (``Limits``):

- ‖guided g‖/‖g‖ is above ``ratio`` or below 1/``ratio`` (unguided training has 1), or it is not
  finite (a non-finite norm, or no step with both);
- the penalties' part of the update outweighs the task gradient, ‖guided g − g‖/‖g‖ above
  ``penalty`` (per step the share times the ratio, for older records |‖guided g‖/‖g‖ − 1|);
- clipping dominates the update: the clip scale is below ``clip_scale``;
- the loss terms (OFA's penalties, the spectral regulariser) dominate it: ‖∇T‖/‖∇L‖ above
  ``penalty`` at the median measured step while the task is learnt, that is before the training
  loss's trailing mean falls to ``LEARNT_FRACTION`` of its start (all steps if it never does).
  Once the k shots are fitted ∇L vanishes and any regulariser outweighs it, as weight decay
  does, by design. For such runs ‖guided g‖/‖g‖ is 1 by construction (g is already ∇(L + T)),
  so only this measure sees a term that swamps the task;
- a gradient transform (the spectral filter) keeps less than 1/``ratio`` of the gradient.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from gradguide.errors import GradguideError
from gradguide.metrics import steps_to_threshold

RATIO = "‖guided g‖/‖g‖ far from 1"
NONFINITE = "‖guided g‖/‖g‖ not finite"
PENALTY = "the penalty dominates the update"
CLIPPING = "clipping dominates the update"
TERMS = "the loss terms dominate the update"
FILTER = "the gradient filter removes most of the update"

Curves = Mapping[str, Sequence[float | None]]

#: the task counts as learnt once the training loss's trailing mean is this fraction of its start
LEARNT_FRACTION = 0.1


class GradientWarning(UserWarning):
    """A finished guided run whose update was not the task's (it failed a check here)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Where a guided run stops being plausible (each at the run's median step)."""

    #: ‖guided g‖/‖g‖ above this, or below its inverse
    ratio: float = 10.0
    #: the penalties' part of the update over the task gradient, ‖guided g − g‖/‖g‖, above this
    penalty: float = 1.0
    #: the clip scale below this (the applied gradient shrunk more than 1/this times)
    clip_scale: float = 0.1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.ratio) and self.ratio > 1):
            raise GradguideError(f"must be > 1, not {self.ratio}", field="--sanity-ratio")
        if not (math.isfinite(self.penalty) and self.penalty > 0):
            raise GradguideError(f"must be > 0, not {self.penalty}", field="--sanity-penalty")
        if not 0 <= self.clip_scale < 1:
            raise GradguideError(
                f"must be in [0, 1), not {self.clip_scale}", field="--sanity-clip-scale"
            )


@dataclasses.dataclass(frozen=True)
class GradientCheck:
    """One guided run's measures, per step and at its median step, and the checks it failed."""

    #: ‖guided g‖/‖g‖ per step (None where either norm is missing)
    ratios: list[float | None]
    ratio: float | None
    ratio_max: float | None
    #: the penalties' share at the median step; ``share_recorded``: from the record's curve
    #: (else a lower bound from the norms)
    share: float | None
    share_recorded: bool
    #: ‖guided g − g‖/‖g‖ at the median step (from the recorded share, else a lower bound)
    penalty: float | None
    #: the clip scale at the median step (None without clipping) and the steps clipped
    clip: float | None
    clipped: int
    steps: int
    nonfinite: int
    failed: tuple[str, ...]
    #: the loss terms' gradient over the task loss's, ‖∇T‖/‖∇L‖, at the median measured step
    #: while the task is learnt (None: no loss terms, or a record that predates the measure)
    terms: float | None = None
    #: ‖filtered g‖/‖g‖ at the median step (None: no transform, or an older record)
    keep: float | None = None

    def summary(self) -> dict[str, Any]:
        """The medians and the failed checks, as a run record stores them."""
        return {
            "failed": list(self.failed),
            "ratio": self.ratio,
            "penalty_to_task": self.penalty,
            "clip_scale": self.clip,
            "terms_to_task": self.terms,
            "transform_keep": self.keep,
        }


def finite_curves(raw: Mapping[str, Any]) -> tuple[dict[str, list[float | None]], dict[str, int]]:
    """The curves with every non-finite value read as None, and per curve how many there were."""
    curves_raw = {k: vs for k, vs in raw.items() if isinstance(vs, list)}
    curves = {k: [v if _finite(v) else None for v in vs] for k, vs in curves_raw.items()}
    nonfinite = {
        k: n
        for k, vs in curves_raw.items()
        if (n := sum(v is not None and not _finite(v) for v in vs))
    }
    return curves, nonfinite


def check_gradients(
    curves: Curves,
    *,
    clip_limit: float | None,
    nonfinite: Mapping[str, int],
    skipped_steps: int = 0,
    limits: Limits | None = None,
) -> GradientCheck | None:
    """The checks of one guided run's curves (None: no ``guided_norm`` curve to check).

    ``curves`` hold None for non-finite values, counted per curve in ``nonfinite``
    (``finite_curves``); ``clip_limit`` is the run's ``optim.grad_clip`` (None or 0: no clipping).
    """
    limits = limits or Limits()
    guided = curves.get("guided_norm")
    if guided is None:
        return None
    grad = curves.get("grad_norm") or []
    ratios = [
        (a / b) if a is not None and b is not None and b > 0 else None
        for a, b in zip(guided, grad, strict=False)
    ]
    ratio = _median(ratios)
    known = [x for x in ratios if x is not None]
    recorded_share = curves.get("penalty_share")
    if recorded_share is not None:
        share = _median(recorded_share)
    else:  # ‖guided − g‖ ≥ |‖guided‖ − ‖g‖|
        share = _median(
            [
                abs(a - b) / a if a is not None and b is not None and a > 0 else None
                for a, b in zip(guided, grad, strict=False)
            ]
        )
    if recorded_share is not None:  # ‖p‖/‖g‖ = (‖p‖/‖g + p‖)·(‖g + p‖/‖g‖)
        parts = [
            a * b if a is not None and b is not None else None
            for a, b in zip(recorded_share, ratios, strict=False)
        ]
    else:  # ‖p‖ ≥ |‖g + p‖ − ‖g‖|
        parts = [abs(x - 1) if x is not None else None for x in ratios]
    penalty = _median(parts)
    scales: list[float | None] = []
    if "clip_scale" in curves:
        scales = list(curves["clip_scale"])
    elif clip_limit:
        scales = [min(1.0, clip_limit / a) if a is not None and a > 0 else None for a in guided]
    bad = nonfinite.get("guided_norm", 0) + nonfinite.get("grad_norm", 0)
    failed: list[str] = []
    if bad or ratio is None:
        failed.append(NONFINITE)
    elif not 1 / limits.ratio <= ratio <= limits.ratio:
        failed.append(RATIO)
    if penalty is not None and penalty > limits.penalty:
        failed.append(PENALTY)
    clip = _median(scales)
    if clip is not None and clip < limits.clip_scale:
        failed.append(CLIPPING)
    terms = _median(list(curves.get("terms_to_task") or [])[: learning_steps(curves)])
    if terms is not None and terms > limits.penalty:
        failed.append(TERMS)
    keep = _median(curves.get("transform_keep") or [])
    if keep is not None and keep < 1 / limits.ratio:
        failed.append(FILTER)
    return GradientCheck(
        ratios=ratios,
        ratio=ratio,
        ratio_max=max(known) if known else None,
        share=share,
        share_recorded=recorded_share is not None,
        penalty=penalty,
        clip=clip,
        clipped=sum(1 for s in scales if s is not None and s < 1.0),
        steps=len(guided),
        nonfinite=bad + skipped_steps,
        failed=tuple(failed),
        terms=terms,
        keep=keep,
    )


def learning_steps(curves: Curves) -> int | None:
    """How many steps the task was still being learnt (None: all of them, or no loss curve)."""
    return steps_to_threshold(curves.get("loss") or [], fraction=LEARNT_FRACTION)


def warning_text(summary: Mapping[str, Any]) -> str:
    """One line for the user from a run's ``gradient_check`` (``GradientCheck.summary``): the
    checks it failed, with the medians behind them."""
    measures = {
        RATIO: ("median ‖guided g‖/‖g‖", "ratio"),
        NONFINITE: ("non-finite or missing gradient norms", None),
        PENALTY: ("median penalty / task gradient", "penalty_to_task"),
        CLIPPING: ("median clip scale", "clip_scale"),
        TERMS: ("median loss terms / task gradient", "terms_to_task"),
        FILTER: ("median kept by the filter", "transform_keep"),
    }
    parts = []
    for failed in summary["failed"]:
        what, key = measures[failed]
        parts.append(f"{failed} ({what}{'' if key is None else ' ' + _num(summary[key])})")
    said = "; ".join(parts)
    return f"this run fails the gradient sanity check: {said}. Its numbers are not evidence."


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
