"""Hessian-vector products of the task loss with respect to the trainable parameters.

* ``exact_hvp``: double backward through the graph kept by ``create_graph=True``. PyTorch's fused
  scaled-dot-product attention kernels have no double backward, so the step runs SDPA on its math
  backend (gradguide.device.double_backward_attention; GuidedGradient does it) or the model's
  attention in "eager" mode (``attention_error`` explains it when neither holds).
* ``fd_hvp``: a forward finite difference H·v ≈ (∇L(θ + ε v̂) − ∇L(θ)) / ε · ‖v‖: one extra forward
  and backward, no graph kept, any attention kernel. ε = ``rel_eps`` · (1 + ‖θ‖) (θ the trainable
  parameters), so the step is small relative to the parameters whatever their scale; θ is restored
  from a copy afterwards, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gradguide.errors import GradguideError

LossFn = Callable[[], torch.Tensor]
#: one loss closure, or micro-batches' closures whose sum is the loss (gradguide.objective)
LossFns = LossFn | Sequence[LossFn]


def loss_parts(loss_fn: LossFns) -> list[LossFn]:
    """The closures whose sum is the loss: ``[loss_fn]`` for a single one."""
    return [loss_fn] if callable(loss_fn) else list(loss_fn)


def flat(tensors: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one vector (None counts as zeros shaped like ``like``)."""
    return torch.cat(
        [
            (t if t is not None else torch.zeros_like(p)).reshape(-1)
            for t, p in zip(tensors, like, strict=True)
        ]
    )


def unflat(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a vector back into tensors shaped like ``like``."""
    out, start = [], 0
    for p in like:
        out.append(vector[start : start + p.numel()].view_as(p))
        start += p.numel()
    return out


def norm_of(tensors: Sequence[torch.Tensor]) -> float:
    """‖(t₁, t₂, …)‖ of tensors taken as one vector, without concatenating them (in ≥ fp32)."""
    if not tensors:
        return 0.0
    norms = [
        torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32))
        for t in tensors
    ]
    return float(torch.linalg.vector_norm(torch.stack([n.to(norms[0]) for n in norms])))


def attention_error(err: RuntimeError) -> GradguideError | None:
    """A clear error when double backward failed inside a fused attention kernel."""
    text = str(err)
    if "derivative for" in text and "attention" in text and "not implemented" in text:
        return GradguideError(
            "exact Hessian-vector products need double backward, which PyTorch's fused "
            "scaled-dot-product attention kernels do not implement; run the step under "
            "gradguide.device.double_backward_attention() (GuidedGradient does), load the model "
            "with attn_implementation='eager', or use hvp 'fd' (works with any attention)"
        )
    return None


def exact_hvp(
    grads: Sequence[torch.Tensor | None], params: Sequence[torch.nn.Parameter], v: torch.Tensor
) -> torch.Tensor:
    """H·v by differentiating g·v, where ``grads`` were computed with ``create_graph=True``.

    Parameters whose gradient is None or constant (unused by the loss) have zero Hessian rows.
    """
    used = [i for i, x in enumerate(grads) if x is not None and x.requires_grad]
    outputs = [x for x in grads if x is not None and x.requires_grad]
    parts = [torch.zeros_like(p) for p in params]
    if not used or float(torch.linalg.vector_norm(v)) == 0.0:
        return flat(parts, params)
    v_parts = unflat(v, params)
    try:
        hv = torch.autograd.grad(
            outputs,
            [params[i] for i in used],
            grad_outputs=[v_parts[i] for i in used],
            allow_unused=True,
        )
    except RuntimeError as err:
        clear = attention_error(err)
        if clear is not None:
            raise clear from err
        raise
    for i, h in zip(used, hv, strict=True):
        if h is not None:
            parts[i] = h
    return flat(parts, params)


def loss_gradient(
    loss_fn: LossFns, params: Sequence[torch.nn.Parameter]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss and its flat gradient over ``params`` (no graph kept); micro-batches' closures
    are differentiated one at a time, so only one graph is ever alive, and summed."""
    total: torch.Tensor | None = None
    g: torch.Tensor | None = None
    for fn in loss_parts(loss_fn):
        loss = fn()
        part = flat(torch.autograd.grad(loss, params, allow_unused=True), params)
        total = loss.detach() if total is None else total + loss.detach()
        g = part if g is None else g + part
    assert total is not None and g is not None, "no loss closure"
    return total, g


def fd_hvp(
    loss_fn: LossFns,
    params: Sequence[torch.nn.Parameter],
    g: torch.Tensor,
    v: torch.Tensor,
    rel_eps: float = 1e-4,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """H·v by a forward difference of gradients along v̂ (θ restored exactly afterwards).

    ``g`` is the gradient at θ; ``reduce`` (data-parallel sum over ranks) is applied to the
    gradient at the shifted point so that both are global.
    """
    v_norm = torch.linalg.vector_norm(v)
    if float(v_norm) == 0.0:
        return torch.zeros_like(v)
    saved = [p.detach().clone() for p in params]  # all trainable: autograd.grad needs that
    eps = rel_eps * (1.0 + norm_of(saved))
    direction = unflat(v / v_norm, params)
    try:
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(d, alpha=eps)
        _, g_shifted = loss_gradient(loss_fn, params)
        if reduce is not None:
            g_shifted = reduce(g_shifted)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
    return (g_shifted - g) / eps * v_norm
