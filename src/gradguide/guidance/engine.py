"""The guided gradient: ∇θ[L + Σ R_i(g)] = g + H·v with v = ∂(Σ R_i)/∂g, one HVP per step.

:class:`GuidedGradient` is the object a plain PyTorch loop uses: given a loss closure and the
trainable parameters it fills ``.grad`` with the gradient of the whole objective and returns the
step's measurements. With no active penalty it is exactly ``loss.backward()`` (bit for bit).

Lazy mode (``lazy=k``) adds the penalty gradient only on every k-th step, weighted by k: the
average of the applied gradients over k steps matches the exact one at 1/k of the cost. That is all
it promises: the trajectory differs (the parameters the HVP is taken at, and for adaptive
optimisers such as AdamW, whose moments are not linear in the gradient, the step too).
Non-finite losses or gradients are reported (``finite=False``) before any HVP, so the caller can
skip the step.

The loss may come as micro-batches: a sequence of closures whose sum is the batch's loss
(gradguide.objective splits a batch whose candidates would not fit in memory). Every gradient and
HVP is then the sum of the parts', each differentiated on its own graph, as the ranks of a
data-parallel run are summed: the result is the whole batch's, with one part's activations alive.
An exact HVP then costs one more forward and backward per part (g must be complete before v).

Within one step every evaluation of a closure replays the random state of its first evaluation
(:mod:`gradguide.guidance.rng`), so a finite difference sees one function: the same dropout masks.
The finite difference needs fp32: ε is below bf16's resolution, so an fd HVP under an active
autocast is refused (gradguide's training refuses ``bf16`` with ``hvp: fd`` the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from gradguide.device import double_backward_attention
from gradguide.errors import GradguideError
from gradguide.guidance.base import GradientPenalty, PenaltyContext
from gradguide.guidance.hvp import (
    LossFns,
    exact_hvp,
    fd_hvp,
    flat,
    loss_gradient,
    loss_parts,
    unflat,
)
from gradguide.guidance.priors import Prior
from gradguide.guidance.rng import replayed

LossFn = Callable[[], torch.Tensor]
Reduce = Callable[[torch.Tensor], torch.Tensor]
HVP_MODES = ("fd", "exact")


@dataclass
class StepStats:
    """One step's measurements (the task gradient g, not the guided one, unless named so)."""

    loss: float
    grad_norm: float
    guided_norm: float
    finite: bool
    penalty_applied: bool
    penalties: dict[str, float] = field(default_factory=dict)
    cos_prior: float | None = None
    cos_source: float | None = None
    gradient: torch.Tensor | None = None
    #: ‖applied gradient − g‖, the penalties' part of the update (0 when none was applied)
    penalty_norm: float = 0.0


def cosine(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    """cos(a, b), or None when either is missing or zero."""
    if a is None or b is None:
        return None
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if float(na) == 0.0 or float(nb) == 0.0:
        return None
    return float(torch.dot(a, b) / (na * nb))


def _refuse_fd_under_autocast() -> None:
    """A finite difference under bf16/fp16 autocast measures rounding, not curvature: refuse it."""
    for device in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device):
            raise GradguideError(
                f"a finite-difference HVP (hvp 'fd') cannot run under {device} autocast: its "
                "step is below bf16/fp16 resolution; use hvp 'exact' or train in fp32"
            )


class GuidedGradient:
    """Fills ``.grad`` with the gradient of task loss + gradient penalties (DESIGN.md identity).

    ``penalties``: the active terms (empty = plain backward). ``hvp``: "fd" or "exact" (exact
    steps run SDPA on its math kernel). ``prior``: supplies d_prior (and learns from g for the EMA
    prior).
    ``two_sided``: also differentiate R_align through the source gradient (an extra HVP on the
    source batch); by default g_source is a constant, as in gradient-surgery methods.
    ``reduce``: data-parallel training's sum over ranks (gradguide.distributed): every gradient,
    HVP and loss value is reduced before use, so all ranks see the global ones.
    """

    def __init__(
        self,
        penalties: Sequence[GradientPenalty] = (),
        *,
        hvp: str = "fd",
        lazy: int = 1,
        fd_eps: float = 1e-4,
        prior: Prior | None = None,
        two_sided: bool = False,
        reduce: Reduce | None = None,
    ) -> None:
        if hvp not in HVP_MODES:
            raise ValueError(f"hvp must be one of {HVP_MODES}, got {hvp!r}")
        if lazy < 1:
            raise ValueError(f"lazy must be >= 1, got {lazy}")
        self.penalties = [p for p in penalties if p.weight != 0.0]
        self.hvp = hvp
        self.lazy = lazy
        self.fd_eps = fd_eps
        self.prior = prior
        self.two_sided = two_sided
        self.reduce = reduce

    @property
    def active(self) -> bool:
        """Whether any penalty has a non-zero weight."""
        return bool(self.penalties)

    def backward(
        self,
        loss_fn: LossFns,
        params: Sequence[torch.nn.Parameter],
        step: int = 0,
        source_fn: LossFns | None = None,
        source_gradient: torch.Tensor | None = None,
    ) -> StepStats:
        """:meth:`_backward`, on SDPA's math kernel in a step that takes an exact HVP (the fused
        kernels have no double backward; the other steps keep them)."""
        exact = self.active and step % self.lazy == 0 and self.hvp == "exact"
        with double_backward_attention(exact):
            return self._backward(loss_fn, params, step, source_fn, source_gradient)

    def _backward(
        self,
        loss_fn: LossFns,
        params: Sequence[torch.nn.Parameter],
        step: int = 0,
        source_fn: LossFns | None = None,
        source_gradient: torch.Tensor | None = None,
    ) -> StepStats:
        """Compute the step's gradient into ``p.grad`` (overwriting) and return measurements.

        The source gradient comes from ``source_fn`` (a loss closure on a source-task batch) or
        is given directly as ``source_gradient`` (e.g. a saved run's mean gradient).
        """
        if self.two_sided and source_fn is None and source_gradient is not None:
            raise GradguideError(
                "two_sided alignment differentiates through the source batch's gradient, "
                "which a given source gradient (source_run) does not have: use a source task "
                "or turn two_sided off"
            )
        prior = self.prior.direction() if self.prior is not None else None
        apply = self.active and step % self.lazy == 0
        if apply and self.hvp == "fd":
            _refuse_fd_under_autocast()
        parts = _replayed_parts(loss_fn)
        source_parts = _replayed_parts(source_fn) if source_fn is not None else None
        if not apply:
            for p in params:
                p.grad = None
            loss = _backward_parts(parts)
            g = flat([p.grad for p in params], params).detach()
            if self.reduce is not None:
                g, loss = self.reduce(g), self.reduce(loss.detach())
                for p, t in zip(params, unflat(g, params), strict=True):
                    p.grad = t.clone()
            source = self._source(source_parts, params) if source_parts else source_gradient
            return self._finish(loss.detach(), g, g, params, prior, source, {}, False)

        ctx_prior = prior
        grads: Sequence[torch.Tensor | None] | None = None
        if self.hvp == "exact" and len(parts) == 1:  # the graph of g kept for the HVP
            loss = parts[0]()
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            g = flat([x.detach() if x is not None else None for x in grads], params)
        else:
            loss, g = loss_gradient(parts, params)
        if self.reduce is not None:
            g, loss = self.reduce(g), self.reduce(loss.detach())
        if not (torch.isfinite(loss) and torch.isfinite(g).all()):
            return self._nonfinite(loss, g)
        source = self._source(source_parts, params) if source_parts else source_gradient
        v, v_source, values = self._penalty_vectors(g, PenaltyContext(ctx_prior, source))
        if self.hvp == "exact":
            hv = self._reduced(
                exact_hvp(grads, params, v) if grads is not None else _exact_hvp(parts, params, v)
            )
        else:
            hv = fd_hvp(parts, params, g, v, self.fd_eps, self.reduce)
        if v_source is not None and source_parts is not None:
            hv = hv + self._source_hvp(source_parts, params, source, v_source)
        guided = g + self.lazy * hv
        return self._finish(loss.detach(), g, guided, params, prior, source, values, True)

    def _source(self, source_fn: LossFns, params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
        _, gs = loss_gradient(source_fn, params)
        return self._reduced(gs)

    def _reduced(self, t: torch.Tensor) -> torch.Tensor:
        return self.reduce(t) if self.reduce is not None else t

    def _source_hvp(
        self,
        source_fn: LossFns,
        params: Sequence[torch.nn.Parameter],
        source: torch.Tensor | None,
        v_source: torch.Tensor,
    ) -> torch.Tensor:
        if self.hvp == "exact":
            return self._reduced(_exact_hvp(loss_parts(source_fn), params, v_source))
        assert source is not None
        return fd_hvp(source_fn, params, source, v_source, self.fd_eps, self.reduce)

    def _penalty_vectors(
        self, g: torch.Tensor, ctx: PenaltyContext
    ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]:
        """v = ∂R/∂g (and ∂R/∂g_source when two-sided) by autograd on g as a leaf."""
        g_leaf = g.detach().clone().requires_grad_(True)
        s_leaf = None
        if ctx.source is not None:
            s_leaf = ctx.source.detach().clone().requires_grad_(self.two_sided)
        leaf_ctx = PenaltyContext(prior=ctx.prior, source=s_leaf)
        terms = {p.name: p.value(g_leaf, leaf_ctx) for p in self.penalties}
        total = torch.stack(list(terms.values())).sum()
        values = {k: float(v.detach()) for k, v in terms.items()}
        inputs = [g_leaf] + ([s_leaf] if s_leaf is not None and self.two_sided else [])
        if not total.requires_grad:
            return torch.zeros_like(g), None, values
        grads = torch.autograd.grad(total, inputs, allow_unused=True)
        v = grads[0] if grads[0] is not None else torch.zeros_like(g)
        v_source = grads[1] if len(grads) > 1 else None
        return v.detach(), (v_source.detach() if v_source is not None else None), values

    def _nonfinite(self, loss: torch.Tensor, g: torch.Tensor) -> StepStats:
        norm = float(torch.linalg.vector_norm(g))
        return StepStats(float(loss), norm, norm, False, False)

    def _finish(
        self,
        loss: torch.Tensor,
        g: torch.Tensor,
        guided: torch.Tensor,
        params: Sequence[torch.nn.Parameter],
        prior: torch.Tensor | None,
        source: torch.Tensor | None,
        values: dict[str, float],
        applied: bool,
    ) -> StepStats:
        finite = bool(torch.isfinite(loss) and torch.isfinite(guided).all())
        if applied and finite:
            for p, t in zip(params, unflat(guided, params), strict=True):
                p.grad = t.detach().clone()
        if finite and self.prior is not None:
            self.prior.observe(g)
        return StepStats(
            loss=float(loss),
            grad_norm=float(torch.linalg.vector_norm(g)),
            guided_norm=float(torch.linalg.vector_norm(guided)),
            penalty_norm=float(torch.linalg.vector_norm(guided - g)) if applied else 0.0,
            finite=finite,
            penalty_applied=applied,
            penalties=values,
            cos_prior=cosine(g, prior) if finite else None,
            cos_source=cosine(g, source) if finite else None,
            gradient=g if finite else None,
        )


def _replayed_parts(loss_fn: LossFns) -> list[LossFn]:
    """Each closure made to replay its first call's random state (its own dropout masks)."""
    return [replayed(fn) for fn in loss_parts(loss_fn)]


def _backward_parts(parts: Sequence[LossFn]) -> torch.Tensor:
    """``loss.backward()`` of each part in turn (``.grad`` accumulates); the summed loss."""
    total: torch.Tensor | None = None
    for fn in parts:
        loss = fn()
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    assert total is not None, "no loss closure"
    return total


def _exact_hvp(
    parts: Sequence[LossFn], params: Sequence[torch.nn.Parameter], v: torch.Tensor
) -> torch.Tensor:
    """H·v of the summed loss, one part's double-backward graph at a time."""
    hv: torch.Tensor | None = None
    for fn in parts:
        grads = torch.autograd.grad(fn(), params, create_graph=True, allow_unused=True)
        part = exact_hvp(grads, params, v)
        hv = part if hv is None else hv + part
    assert hv is not None, "no loss closure"
    return hv
