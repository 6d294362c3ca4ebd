"""The two quantities of OFA's terms, measured on a recorded forward pass (a Pass).

Step ratios s_{t+1}/(s_t + eps) of the residual-step norms, and Hutchinson's estimate of
tr(P_t H_t P_tᵀ) per token through the Jacobian-vector product of block t's residual update,
by forward-mode AD (``exact``) or a float32 central difference (``fd``). The choices are those of
gradguide.guidance.ofa's docstring.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradguide.errors import GradguideError
from gradguide.guidance.ofa_blocks import BlockStack, Pass, StepFn

JVP_MODES = ("fd", "exact")
#: parameter dtypes fine enough for the fd JVP's step (integer buffers are not parameters)
WIDE = (torch.float32, torch.float64, torch.complex64, torch.complex128)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32 (bf16/fp16 hidden states are measured in float32)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with padding positions set to 0 (a select, so non-finite padding cannot leak)."""
    m = mask > 0
    return torch.where(m if m.dim() == x.dim() else m.unsqueeze(-1), x, torch.zeros_like(x))


def step_norms(p: Pass) -> list[torch.Tensor]:
    """s_t = ‖Z_{t+1} − Z_t‖ per token, for every block t ([batch, tokens] each)."""
    return [(_wide(o) - _wide(z)).norm(dim=-1) for z, o in zip(p.inputs, p.outputs, strict=True)]


def step_ratio_sums(
    p: Pass, pairs: Sequence[int], eps: float, squared: bool = False
) -> torch.Tensor:
    """Σ over real tokens of s_{t+1}/(s_t + eps) (or the squared form), one entry per pair t."""
    s = step_norms(p)
    out = []
    for t in pairs:
        ratio = s[t + 1].pow(2) / (s[t].pow(2) + eps) if squared else s[t + 1] / (s[t] + eps)
        out.append(masked(ratio, p.mask).sum())
    return torch.stack(out)


def rademacher(
    shape: Sequence[int], generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    """±1 entries drawn from ``generator`` on its device (no copy when it is ``like``'s)."""
    bits = torch.randint(
        0, 2, tuple(shape), generator=generator, dtype=torch.int8, device=generator.device
    )
    return (2 * bits - 1).to(device=like.device, dtype=like.dtype)


def hutchinson(
    step: StepFn,
    z: torch.Tensor,
    gain: torch.Tensor | None,
    mask: torch.Tensor,
    generator: torch.Generator,
    probes: int = 1,
    jvp: str = "fd",
    fd_eps: float = 1e-3,
) -> torch.Tensor:
    """Per-token −νᵀ J_u(z)(γ ⊙ ν), averaged over probes: Hutchinson's tr(P H Pᵀ) per token.

    ``step`` is u(z); ``z`` is [..., d]; ``mask`` [...] zeroes the probes (and the result) on
    padding. Differentiable in z, γ and whatever ``step`` depends on.
    """
    if jvp not in JVP_MODES:
        raise GradguideError(f"unknown JVP mode {jvp!r}", field="guidance.ofa.jvp")
    total = _wide(torch.zeros(z.shape[:-1], device=z.device, dtype=z.dtype))
    for _ in range(probes):
        nu = masked(rademacher(z.shape, generator, z), mask)
        w = nu * gain.to(z.dtype) if gain is not None else nu
        if jvp == "exact":
            jw = torch.func.jvp(step, (z,), (w,))[1]
        else:
            jw = fd_jvp(step, z, w, mask, fd_eps)
        total = total - masked(_wide(nu) * _wide(jw), mask).sum(-1)
    return total / probes


def fd_jvp(
    step: StepFn, z: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, fd_eps: float
) -> torch.Tensor:
    """J_u(z)·w as (u(z + εw) − u(z − εw)) / 2ε, the two re-runs in float32 with autocast off.

    ε·w is ``fd_eps`` (1e-3) of z's scale, below bf16's resolution (2⁻⁸): under bf16 autocast
    the difference would be rounding noise, its sign arbitrary.
    """
    count = (mask > 0).sum().clamp_min(1) * z.shape[-1]
    rms_z = (masked(z.detach(), mask).pow(2).sum() / count).sqrt().clamp_min(1e-6)
    rms_w = (w.detach().pow(2).sum() / count).sqrt().clamp_min(1e-12)
    e = float(fd_eps * rms_z / rms_w)
    z, w = _wide(z), _wide(w)
    with torch.autocast(device_type=z.device.type, enabled=False):
        return (step(z + e * w) - step(z - e * w)) / (2 * e)


def check_fd_precision(block: torch.nn.Module) -> None:
    """Refuse the fd JVP on a block stored below float32 (its re-runs cannot resolve the step)."""
    low = sorted({str(p.dtype) for p in block.parameters() if p.dtype not in WIDE})
    if low:
        raise GradguideError(
            f"the fd JVP needs float32 block weights, this model's are {', '.join(low)}: the "
            "step is below their resolution; load the model in float32 (bf16 autocast is fine) "
            "or set guidance.ofa.jvp=exact",
            field="guidance.ofa.jvp",
        )


def sharpness_sums(
    p: Pass,
    stack: BlockStack,
    layers: Sequence[int],
    generator: torch.Generator,
    probes: int,
    jvp: str,
    fd_eps: float,
) -> torch.Tensor:
    """Σ over real tokens of the per-token sharpness estimate, one entry per block in ``layers``."""
    out = []
    for t in layers:
        if jvp == "fd":
            check_fd_precision(stack.blocks[t])
        est = hutchinson(
            p.step_fn(stack, t), p.inputs[t], stack.gain(t), p.mask, generator, probes, jvp, fd_eps
        )
        out.append(est.sum())  # zero on padding already
    return torch.stack(out)
