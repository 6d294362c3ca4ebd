"""Structured Gradient Guidance (arXiv 2506.00726): three penalties on the task gradient g.

    R_dir   = λ_dir   · ‖g/‖g‖ − d_prior‖²        (d_prior normalised here: its scale is irrelevant)
    R_mag   = λ_mag   · (‖g‖ − τ)²
    R_align = λ_align · (1 − cos(g, g_source))

Each is a :class:`~gradguide.guidance.base.GradientPenalty`; the engine turns their sum into one
Hessian-vector product. Degenerate cases: where ‖g‖ (or ‖d_prior‖, ‖g_source‖) is below ``EPS``
the direction and alignment terms are constant zero (no defined direction, no gradient), and the
magnitude term uses the subgradient 0 at g = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gradguide.guidance.base import PenaltyContext
from gradguide.guidance.registry import GuidanceSpec, Term, register_guidance

EPS = 1e-12


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x)


def _small(x: torch.Tensor) -> bool:
    """Whether a vector's norm is below EPS (checked without touching the autograd graph)."""
    return float(torch.linalg.vector_norm(x.detach())) < EPS


@dataclass
class DirectionPenalty:
    """λ_dir · ‖g/‖g‖ − d‖² with d the unit prior direction (keeps updates on a prior course)."""

    weight: float
    name: str = "dir"
    needs_prior: bool = True
    needs_source: bool = False

    def value(self, g: torch.Tensor, ctx: PenaltyContext) -> torch.Tensor:
        d = ctx.prior
        if d is None or _small(g) or _small(d):
            return g.new_zeros(())
        u = g / _norm(g)
        d = d / _norm(d)
        return self.weight * (u - d).pow(2).sum()


@dataclass
class MagnitudePenalty:
    """λ_mag · (‖g‖ − τ)²: keeps the gradient norm near a target (no abnormal updates).

    ``tau=None`` takes the first gradient norm seen as the target (gradguide's default: hold the
    norm at its starting scale; the paper gives no value).
    """

    weight: float
    tau: float | None
    name: str = "mag"
    needs_prior: bool = False
    needs_source: bool = False

    def value(self, g: torch.Tensor, ctx: PenaltyContext) -> torch.Tensor:
        n = _norm(g)
        if self.tau is None:
            self.tau = float(n.detach())
        if _small(g):  # subgradient 0 at g = 0; the value is still τ²·λ
            return g.new_tensor(self.weight * self.tau**2)
        return self.weight * (n - self.tau) ** 2

    def state_dict(self) -> dict[str, float | None]:
        """The target in force (set at the first step when not configured), for a resume."""
        return {"tau": self.tau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; a missing or null target changes nothing."""
        if state.get("tau") is not None:
            self.tau = float(state["tau"])


@dataclass
class AlignmentPenalty:
    """λ_align · (1 − cos(g, g_source)): agree with a source task's gradient."""

    weight: float
    name: str = "align"
    needs_prior: bool = False
    needs_source: bool = True

    def value(self, g: torch.Tensor, ctx: PenaltyContext) -> torch.Tensor:
        s = ctx.source
        if s is None or _small(g) or _small(s):
            return g.new_zeros(())
        cos = torch.dot(g, s) / (_norm(g) * _norm(s))
        return self.weight * (1 - cos)


# weights and HVP settings are guidance.lambda_dir, … (GuidanceConfig's own fields). No term
# needs eager attention: the engine runs exact HVP steps on SDPA's math kernel (gradguide.device).
SGG = register_guidance(
    GuidanceSpec(
        names={
            "sgg": ("dir", "mag", "align"),
            "sgg-dir": ("dir",),
            "sgg-mag": ("mag",),
            "sgg-align": ("align",),
        },
        terms=(
            Term("dir", "penalty", lambda c: DirectionPenalty(c.lambda_dir)),
            Term("mag", "penalty", lambda c: MagnitudePenalty(c.lambda_mag, c.tau)),
            Term(
                "align",
                "penalty",
                lambda c: AlignmentPenalty(c.lambda_align),
                needs_source=True,
            ),
        ),
        cost={"sgg": 3.0, "sgg-dir": 3.0, "sgg-mag": 3.0, "sgg-align": 4.0},
    )
)
