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

This module holds the options, the two loss terms and their registration; the blocks and the
recorded passes are in ofa_blocks.py, the quantities (step ratios, Hutchinson estimates, JVPs) in
ofa_measures.py, whose names are importable from here as well.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from gradguide.errors import GradguideError
from gradguide.guidance.ofa_blocks import BlockCapture, BlockStack, Pass, StepFn, find_blocks
from gradguide.guidance.ofa_measures import (
    JVP_MODES,
    WIDE,
    check_fd_precision,
    fd_jvp,
    hutchinson,
    masked,
    rademacher,
    sharpness_sums,
    step_norms,
    step_ratio_sums,
)
from gradguide.guidance.registry import GuidanceSpec, Term, register_guidance

__all__ = [
    "JVP_MODES",
    "OFA",
    "OFA_TERMS",
    "WIDE",
    "BlockCapture",
    "BlockStack",
    "OfaOptions",
    "OfaSharpness",
    "OfaStepRatio",
    "Pass",
    "StepFn",
    "build_sharpness",
    "build_step_ratio",
    "check_fd_precision",
    "fd_jvp",
    "find_blocks",
    "hutchinson",
    "masked",
    "parse_layers",
    "penalised",
    "probe_seed",
    "rademacher",
    "ratio_pairs",
    "resolve_layers",
    "sharpness_sums",
    "signed_means",
    "step_norms",
    "step_ratio_sums",
    "validate_options",
]

#: the loss terms of this module (guidance names in gradguide.guidance.GUIDANCE)
OFA_TERMS = ("ofa-step", "ofa-sharp")


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
