"""OFA, optimisation-inspired few-shot adaptation: the step-ratio and sharpness loss terms.

The paper (Gao, Wang, Yang, Clifton, NeurIPS 2025, arXiv 2505.19107) reads the forward pass as a
sequence of preconditioned gradient steps on the hidden states. Its full text could not be read
here; what follows separates what is reported from it ([paper]) from gradguide's own reading
([choice]), as ../shared/papers/ofa-notes.md does.

* [paper] Block t is one step Z_{t+1} = Z_t − P_t ∇L(Z_t) on the hidden states Z_t; its residual
  update Z_{t+1} − Z_t plays the role of −P_t ∇L(Z_t).
* [paper] P_t is expressed through the existing normalisation (LayerNorm/RMSNorm) parameters, the
  only ones trained (methods/layernorm.py, methods/ofa.py): no new parameters, no inference cost.
* [paper] Objective = cross entropy + λ_step·J(P) + λ_sharp·Σ_t tr(P_t ∇²L(Z_t) P_tᵀ), the trace
  estimated with Hutchinson's estimator, the Hessian product taken through the residual update
  and extra forward passes of the block (their Algorithm 1).
* [choice] u_t(Z) = f_t(Z) − Z, the residual update of block t (f_t the block as the model calls
  it, with the attention mask and position embeddings of the task forward pass).
* [choice] Step ratio ("ofa-step"): s_t = ‖u_t(Z_t)‖ per token; J = mean over the layer pairs
  (t, t+1) and the non-padding tokens of s_{t+1} / (s_t + eps), a computable stand-in for the
  contraction factor ‖I − P_t H_t‖ of the paper's convergence bound. ``squared`` uses
  s_{t+1}² / (s_t² + eps) instead. ``layers`` picks the t of the pairs (t + 1 must be a block).
* [choice] Sharpness ("ofa-sharp"): u_t ≈ −P_t ∇L, so its Jacobian is ≈ −P_t H_t and
  tr(P_t H_t P_tᵀ) = E_ν[νᵀ P_t H_t P_tᵀ ν] ≈ −E_ν[νᵀ J_{u_t}(Z_t) (P_tᵀ ν)], with ν Rademacher
  over the non-padding tokens. S_t, block t's estimate, is the sum over the batch's tokens divided
  by their number, averaged over ``probes`` probes.
* [choice] The penalty is S = Σ_t max(S_t, 0) over the chosen blocks, not Σ_t S_t. S_t is signed:
  a real block's Jacobian need not be −P H with H positive semi-definite (real blocks give
  S_t < 0, some at initialisation), and a signed sum is unbounded below, so minimising it would
  reward blocks that expand their hidden states, the opposite of the paper's tr(P H Pᵀ) ≥ 0. Where
  M = −J_{u_t} P_tᵀ has a positive semi-definite symmetric part (the paper's regime, with every
  token of the batch in one M: attention couples them) each probe's νᵀMν is ≥ 0, so the clip
  changes nothing and S_t stays an unbiased estimate of the trace; elsewhere the block adds 0 and
  no gradient. Where the true S_t is near 0 or below, the clip of a noisy estimate is biased
  upwards (E max(X, 0) ≥ max(E X, 0)); more probes shrink that. Symmetrising M is no remedy:
  νᵀMν = νᵀ ½(M + Mᵀ) ν already, with the same sign problem. A data-parallel run
  clips each rank's S_t (its own batch shard). The signed S_t are kept: the term's summary gives
  their mean per block (``signed_layer_means``), the layer diagnostics report them unclipped.
* [choice] P_t = diag(γ_t), γ_t the gain of the normalisation that preconditions block t: the
  block's first normalisation module that is a direct child (Llama's ``input_layernorm``, GPT-2's
  ``ln_1``; the first one anywhere in the block where none is a direct child).
* [choice] J_{u_t}·w with w = γ_t ⊙ ν: ``jvp="exact"`` by forward-mode AD (torch.func.jvp, which
  needs eager attention: CPU SDPA has no forward derivative); ``jvp="fd"`` by the central
  difference (u_t(Z + εw) − u_t(Z − εw)) / 2ε of two extra forward passes of block t (the paper's
  Algorithm 1), with ε = fd_eps · RMS(Z_t) / RMS(w), so the step is relative to the hidden
  states' scale. The two re-runs are in float32 with autocast off, whatever the forward pass
  used: the step is below bf16's resolution (under bf16 autocast the difference changed sign);
  ``fd`` on blocks stored in bf16/fp16 is refused (``exact`` runs in the forward's precision).
  Both are differentiable with respect to every normalisation gain (that of block t through w
  and the block, earlier ones through Z_t). The re-runs assume the block has no active
  dropout (Llama has none; gradguide's LoRA dropout defaults to 0).
* [choice] The probes of step k come from a torch.Generator seeded from (run seed, k): every
  call of the loss closure within a step sees the same probes and a resumed run repeats them.
  The generator lives on the model's device (no copy per step), so a GPU draws other probes.

The hooks record only during a full forward pass of the module that owns the blocks (so the
terms' own re-runs of single blocks are not recorded); a term reads the last pass recorded (the
decoder scoring of the loss closure is one forward of the model; the terms need a decoder LM) and
drops what it read after use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from gradguide.errors import GradguideError
from gradguide.guidance.registry import GuidanceSpec, Term, register_guidance
from gradguide.methods.layernorm import norm_modules

JVP_MODES = ("fd", "exact")
#: the loss terms of this module (guidance names in gradguide.guidance.GUIDANCE)
OFA_TERMS = ("ofa-step", "ofa-sharp")
StepFn = Callable[[torch.Tensor], torch.Tensor]
#: parameter dtypes fine enough for the fd JVP's step (integer buffers are not parameters)
WIDE = (torch.float32, torch.float64, torch.complex64, torch.complex128)


@dataclasses.dataclass
class OfaOptions:
    """Settings of the OFA terms (``guidance.ofa.*``); see the module docstring for each choice."""

    lambda_step: float = 0.1
    lambda_sharp: float = 0.01
    probes: int = 1
    layers: str = "all"
    jvp: str = "fd"
    fd_eps: float = 1e-3
    squared: bool = False
    eps: float = 1e-6


def parse_layers(text: str) -> list[int] | None:
    """Block indices from "all" (None: every block) or a list separated by commas or spaces."""
    if text.strip() == "all":
        return None
    try:
        out = [int(x) for x in re.split(r"[,\s]+", text.strip()) if x]
    except ValueError:
        out = []
    if not out or any(i < 0 for i in out) or len(set(out)) != len(out):
        raise GradguideError(
            f"must be 'all' or distinct block indices >= 0 (e.g. '0,2,5'), got {text!r}",
            field="guidance.ofa.layers",
        )
    return sorted(out)


def validate_options(o: OfaOptions) -> None:
    """Reject impossible OFA settings (GradguideError naming ``guidance.ofa.<field>``)."""
    checks = [
        (o.lambda_step >= 0, "lambda_step", f"must be >= 0, got {o.lambda_step}"),
        (o.lambda_sharp >= 0, "lambda_sharp", f"must be >= 0, got {o.lambda_sharp}"),
        (o.probes >= 1, "probes", f"must be >= 1, got {o.probes}"),
        (o.jvp in JVP_MODES, "jvp", f"must be one of {', '.join(JVP_MODES)}, got {o.jvp!r}"),
        (o.fd_eps > 0, "fd_eps", f"must be > 0, got {o.fd_eps}"),
        (o.eps > 0, "eps", f"must be > 0, got {o.eps}"),
    ]
    for ok, name, message in checks:
        if not ok:
            raise GradguideError(message, field=f"guidance.ofa.{name}")
    parse_layers(o.layers)


# --------------------------------------------------------------------------------------------
# The blocks of a model and what one forward pass through them looked like


@dataclasses.dataclass
class BlockStack:
    """The transformer blocks of a model, the module that runs them, and each block's gain."""

    parent: torch.nn.Module
    blocks: list[torch.nn.Module]
    preconditioners: list[torch.nn.Module]
    preconditioner_name: str  # its name inside block 0, e.g. "input_layernorm"

    def gain(self, t: int) -> torch.Tensor | None:
        """γ_t, the gain of block t's preconditioning norm (None: the norm has no gain)."""
        weight = getattr(self.preconditioners[t], "weight", None)
        return weight if isinstance(weight, torch.Tensor) else None


def find_blocks(model: torch.nn.Module) -> BlockStack:
    """The longest ModuleList of same-class blocks that contain normalisation layers.

    Found by structure, not by name, so PEFT-wrapped models (LoRA, prompt tuning) work too.
    """
    best: tuple[str, torch.nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1 or not all(norm_modules(m) for m in module):
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise GradguideError(
            "OFA found no stack of transformer blocks with normalisation layers in this model"
        )
    name, blocks = best
    parent = model.get_submodule(name.rpartition(".")[0])
    chosen = [_preconditioner(b) for b in blocks]
    return BlockStack(parent, list(blocks), [m for _, m in chosen], chosen[0][0])


def _preconditioner(block: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """The first normalisation module that is a direct child of ``block`` (else the first one)."""
    direct = [(n, m) for n, m in block.named_children() if "Norm" in type(m).__name__]
    return direct[0] if direct else next(iter(norm_modules(block).items()))


@dataclasses.dataclass
class Pass:
    """One forward pass through the blocks: inputs Z_t, outputs Z_{t+1}, call arguments, mask."""

    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
    mask: torch.Tensor  # [batch, tokens] float, 1 on real tokens

    def tokens(self) -> torch.Tensor:
        """Number of non-padding tokens."""
        return self.mask.sum()

    def step_fn(self, stack: BlockStack, t: int) -> StepFn:
        """u_t(Z) = f_t(Z) − Z, block t re-run with this pass's call arguments."""
        block = stack.blocks[t]
        args, kwargs = self.calls[t]

        def step(z: torch.Tensor) -> torch.Tensor:
            out = block(z, *args[1:], **kwargs) if args else block(**kwargs, hidden_states=z)
            return _first(out) - z

        return step


def _first(output: Any) -> torch.Tensor:
    """A block's hidden-state output (some blocks return a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


class BlockCapture:
    """Forward hooks recording every block's input, output and call arguments, per full pass.

    Recording happens only inside a forward pass of the blocks' parent module (e.g. LlamaModel),
    so single blocks re-run by the sharpness estimate are not recorded.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.stack = find_blocks(model)
        self.passes: list[Pass] = []
        self._current: dict[str, Any] | None = None
        parent = self.stack.parent
        self._handles = [
            parent.register_forward_pre_hook(self._begin, with_kwargs=True),
            parent.register_forward_hook(self._end),
        ]
        for t, block in enumerate(self.stack.blocks):
            self._handles.append(block.register_forward_hook(self._hook(t), with_kwargs=True))

    def _begin(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self._current = {"mask": mask, "blocks": {}}

    def _hook(self, t: int) -> Callable[..., None]:
        def hook(
            module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> None:
            if self._current is not None:
                z = args[0] if args else kwargs["hidden_states"]
                self._current["blocks"][t] = (z, _first(output), args, kwargs)

        return hook

    def _end(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        current, self._current = self._current, None
        if current is None or len(current["blocks"]) != len(self.stack.blocks):
            return
        got = [current["blocks"][t] for t in range(len(self.stack.blocks))]
        z0 = got[0][0]
        self.passes.append(
            Pass(
                inputs=[g[0] for g in got],
                outputs=[g[1] for g in got],
                calls=[(g[2], g[3]) for g in got],
                mask=_token_mask(current["mask"], z0),
            )
        )

    def take(self) -> list[Pass]:
        """The passes recorded since the last call (and forget them)."""
        passes, self.passes = self.passes, []
        return passes

    def remove(self) -> None:
        """Remove the hooks and drop whatever is recorded."""
        for h in self._handles:
            h.remove()
        self._handles, self.passes, self._current = [], [], None


def _token_mask(mask: Any, z: torch.Tensor) -> torch.Tensor:
    """[batch, tokens] float mask of real tokens (the last ``tokens`` columns of a 2-D mask)."""
    b, n = z.shape[0], z.shape[1]
    is_2d = isinstance(mask, torch.Tensor) and mask.dim() == 2
    if is_2d and mask.shape[0] == b and mask.shape[1] >= n:  # a cached prefix adds columns
        return mask[:, -n:].to(device=z.device, dtype=torch.float32)
    return torch.ones(b, n, device=z.device, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# The two quantities


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


def penalised(layer_values: torch.Tensor) -> torch.Tensor:
    """S = Σ_t max(S_t, 0): bounded below by 0, the signed S_t where they are ≥ 0 (docstring)."""
    return layer_values.clamp_min(0.0).sum()


def signed_means(steps: Iterable[list[float]], n_layers: int) -> list[float | None]:
    """The mean over steps of each block's signed S_t (None for every block without a step)."""
    rows = list(steps)
    if not rows:
        return [None] * n_layers
    return [sum(r[i] for r in rows) / len(rows) for i in range(n_layers)]


def probe_seed(seed: int, step: int) -> int:
    """Seed of step ``step``'s probes: a pure function of the run seed and the step."""
    digest = hashlib.sha256(f"gradguide-ofa-{seed}-{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def resolve_layers(options: OfaOptions, n_blocks: int) -> list[int]:
    """The chosen block indices, checked against the model's number of blocks."""
    layers = parse_layers(options.layers)
    if layers is None:
        return list(range(n_blocks))
    if layers[-1] >= n_blocks:
        raise GradguideError(
            f"block {layers[-1]} does not exist: this model has {n_blocks} (0-{n_blocks - 1})",
            field="guidance.ofa.layers",
        )
    return layers


def ratio_pairs(layers: Sequence[int], n_blocks: int) -> list[int]:
    """The t of the step-ratio pairs (t, t + 1) among ``layers`` (the last block has no t + 1)."""
    pairs = [t for t in layers if t + 1 < n_blocks]
    if not pairs:
        raise GradguideError(
            "the step ratio needs a block t with a block t + 1 after it",
            field="guidance.ofa.layers",
        )
    return pairs


# --------------------------------------------------------------------------------------------
# The loss terms


class _OfaTerm:
    """What both terms share: the hooks, the options, per-step values for the summary."""

    name = ""

    def __init__(self, model: torch.nn.Module, options: OfaOptions, seed: int) -> None:
        validate_options(options)
        self.options = options
        self.seed = seed
        self.capture = BlockCapture(model)
        self.n_blocks = len(self.capture.stack.blocks)
        self.layers = resolve_layers(options, self.n_blocks)
        self.step = -1
        self.values: dict[int, float] = {}

    def begin_step(self, step: int) -> None:
        """Remember the step (its probes are drawn from it); forget earlier forward passes."""
        self.step = step
        self.capture.take()

    def _passes(self) -> list[Pass]:
        """The task forward pass that just ran: decoder scoring is one forward of the model, the
        last one recorded (an earlier one, e.g. a source-task batch's, is not this step's loss)."""
        passes = self.capture.take()
        if not passes:
            raise GradguideError(
                f"{self.name} saw no forward pass through the model's blocks (it reads the hidden "
                "states of the task forward pass; is this a transformer with normalisation layers?)"
            )
        return passes[-1:]

    def _record(self, value: torch.Tensor) -> None:
        self.values.setdefault(self.step, float(value.detach()))

    def _mean(self) -> float | None:
        return sum(self.values.values()) / len(self.values) if self.values else None

    def close(self) -> None:
        """Remove the hooks."""
        self.capture.remove()


class OfaStepRatio(_OfaTerm):
    """λ_step · J: the mean ratio of successive residual-step norms (module docstring)."""

    name = "ofa-step"

    def __init__(self, model: torch.nn.Module, options: OfaOptions, seed: int) -> None:
        super().__init__(model, options, seed)
        self.pairs = ratio_pairs(self.layers, self.n_blocks)

    def value(self, passes: Sequence[Pass]) -> torch.Tensor:
        """J over the given passes (token-weighted), unweighted."""
        o = self.options
        total = sum(step_ratio_sums(p, self.pairs, o.eps, o.squared).sum() for p in passes)
        tokens = sum(p.tokens() for p in passes)
        return torch.as_tensor(total) / (len(self.pairs) * torch.as_tensor(tokens).clamp_min(1.0))

    def loss(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
        """λ_step · J on the hidden states of the forward pass that just ran."""
        j = self.value(self._passes())
        self._record(j)
        return self.options.lambda_step * j

    def summary(self) -> dict[str, Any]:
        """Mean J over the steps (unweighted), the pairs used and the variant."""
        return {
            "mean_value": self._mean(),
            "steps_measured": len(self.values),
            "lambda": self.options.lambda_step,
            "pairs": self.pairs,
            "blocks": self.n_blocks,
            "squared": self.options.squared,
            "eps": self.options.eps,
        }


class OfaSharpness(_OfaTerm):
    """λ_sharp · S: Σ_t max(S_t, 0), S_t Hutchinson's tr(P_t H_t P_tᵀ) per token (docstring)."""

    name = "ofa-sharp"

    def __init__(self, model: torch.nn.Module, options: OfaOptions, seed: int) -> None:
        super().__init__(model, options, seed)
        self.signed: dict[int, list[float]] = {}  # per step: the signed S_t of each block

    def layer_values(self, passes: Sequence[Pass], generator: torch.Generator) -> torch.Tensor:
        """The signed S_t of each chosen block over the given passes (token-weighted)."""
        o = self.options
        stack = self.capture.stack
        sums = [
            sharpness_sums(p, stack, self.layers, generator, o.probes, o.jvp, o.fd_eps)
            for p in passes
        ]
        tokens = torch.as_tensor(sum(p.tokens() for p in passes)).clamp_min(1.0)
        return torch.stack(sums).sum(0) / tokens

    def loss(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
        """λ_sharp · S on the hidden states of the forward pass that just ran."""
        device = next(self.capture.stack.blocks[0].parameters()).device  # probes drawn there
        generator = torch.Generator(device).manual_seed(probe_seed(self.seed, self.step))
        signed = self.layer_values(self._passes(), generator)
        s = penalised(signed)
        self._record(s)
        self.signed.setdefault(self.step, signed.detach().double().cpu().tolist())
        return self.options.lambda_sharp * s

    def summary(self) -> dict[str, Any]:
        """Mean S over the steps (unweighted), the blocks, probes and JVP mode used."""
        o = self.options
        return {
            "mean_value": self._mean(),
            "steps_measured": len(self.values),
            "lambda": o.lambda_sharp,
            "layers": self.layers,
            "blocks": self.n_blocks,
            "probes": o.probes,
            "probe": "rademacher",
            "jvp": o.jvp,
            "fd_eps": o.fd_eps if o.jvp == "fd" else None,
            "preconditioner": f"gain of each block's {self.capture.stack.preconditioner_name}",
            "form": "sum over blocks of max(S_t, 0)",
            "signed_layer_means": signed_means(self.signed.values(), len(self.layers)),
        }


def _check_decoder(ctx: Any) -> None:
    if ctx.lm.kind != "causal":
        raise GradguideError(
            f"the OFA terms read a decoder LM's hidden states; {ctx.lm.name} is an {ctx.lm.kind}",
            field="guidance.use",
        )


def build_step_ratio(ctx: Any) -> OfaStepRatio:
    """The ``ofa-step`` term for a run (``ctx`` is a guidance.BuildContext)."""
    _check_decoder(ctx)
    return OfaStepRatio(ctx.lm.model, ctx.config.ofa, ctx.seed)


def build_sharpness(ctx: Any) -> OfaSharpness:
    """The ``ofa-sharp`` term for a run (``ctx`` is a guidance.BuildContext)."""
    _check_decoder(ctx)
    return OfaSharpness(ctx.lm.model, ctx.config.ofa, ctx.seed)


OFA = register_guidance(
    GuidanceSpec(
        names={"ofa": OFA_TERMS, "ofa-step": ("ofa-step",), "ofa-sharp": ("ofa-sharp",)},
        terms=(
            Term("ofa-step", "loss", build_step_ratio),
            # the exact sharpness JVP is forward-mode AD, which SDPA attention does not implement
            Term("ofa-sharp", "loss", build_sharpness, lambda cfg: cfg.ofa.jvp == "exact"),
        ),
        options=OfaOptions,
        options_key="ofa",
        validate=lambda options, method, terms: validate_options(options),
        # the layer diagnostics probe with the sharpness term's settings
        options_in_use=lambda config: config.layer_diagnostics > 0,
        # LayerNorm tuning on smollm2-135m, benchmarks/ofa_cost.py (3 steps on a loaded machine,
        # noisy): x1.13-1.30 (step ratio), x4.3 (sharpness, fd JVP, 1 probe, 30 blocks), x4.3 (both)
        cost={"ofa": 4.3, "ofa-step": 1.2, "ofa-sharp": 4.3},
        method="layernorm",
    )
)
