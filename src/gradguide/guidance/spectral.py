"""Spectral parameter coordination: a graph regulariser on the update, a spectral gradient filter.

gradguide's reading of arXiv 2504.19583 (see ../shared/papers/spectral-notes.md): for every
adapted weight matrix, the output units (rows) are the nodes of a kNN similarity graph of the
pretrained rows (gradguide.guidance.graphs), whose Laplacian L = U Λ Uᵀ is decomposed once.

* ``spectral-reg`` (a loss term): λ_spec · Σ_matrices tr(ΔWᵀ L ΔW), the Dirichlet energy of the
  update (= ½ Σ_ij w_ij ‖Δw_i − Δw_j‖² for the combinatorial Laplacian, i.e. half the paper's
  reported Σ_ij form). Full fine-tuning (and SetFit, which tunes every weight of its encoder
  body): ΔW = W − W₀ with W₀ a copy of the pretrained weight (kept for the graphed matrices
  only). LoRA: ΔW = s·B·A, and the energy is s²·Σ((BᵀLB) ⊙ (AAᵀ)),
  evaluated on the edge list without ever forming the out × in product.
* ``spectral-filter`` (a gradient transform): G ← U h(Λ) Uᵀ G on the gradient of W (full) or B
  (LoRA, the output side of the update), after the (guided) gradient is formed and before
  clipping and the optimiser step. Responses: ``inverse`` 1/(1+αλ), ``exp`` exp(−αλ), ``lowk``
  keep the ``k_low`` lowest-frequency components (by rank; ties at the cut are split by eigh's
  order).

Defaults (choices, see DESIGN.md): cosine similarity, 10 neighbours, max-symmetrised, normalised
Laplacian (spectrum in [0, 2] for every matrix, so one α and one λ_spec mean the same for
matrices of any size and weight scale), inverse response with α = 2 (the highest frequencies are
damped 5×). Matrices with more than ``max_nodes`` rows (smollm2's 49152-row token embedding) are
skipped and listed in the summary.

The bases are written to ``RUN_DIR/spectral_bases.safetensors`` with a key (sha256 of the graph
options and of the base weights); a resumed run reloads them after checking the key
(spectral_bases.py, whose names are importable from here as well).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gradguide.errors import GradguideError
from gradguide.guidance.graphs import LAPLACIANS, SIMILARITIES, SYMMETRISE, Graph, build_graph
from gradguide.guidance.registry import GuidanceSpec, Term, register_guidance
from gradguide.guidance.spectral_bases import (
    BASES_FILE,
    BASES_FORMAT,
    bases_key,
    load_bases,
    save_bases,
)

if TYPE_CHECKING:
    from gradguide.guidance.registry import BuildContext

__all__ = [
    "BASES_FILE",
    "BASES_FORMAT",
    "RESPONSES",
    "SPECTRAL",
    "SPECTRAL_METHODS",
    "SPECTRAL_TERMS",
    "SPECTRUM_POINTS",
    "Coordinated",
    "SpectralFilter",
    "SpectralGraphs",
    "SpectralOptions",
    "SpectralRegulariser",
    "bases_key",
    "build_filter",
    "build_regulariser",
    "check_spectral",
    "load_bases",
    "response",
    "save_bases",
    "shared_graphs",
]

SPECTRAL_TERMS = ("spectral-reg", "spectral-filter")
SPECTRAL_METHODS = ("full", "lora", "setfit")
RESPONSES = ("inverse", "exp", "lowk")
SPECTRUM_POINTS = 33


@dataclasses.dataclass
class SpectralOptions:
    """Graphs, regulariser weight and filter response of spectral coordination."""

    lambda_spec: float = 0.1
    similarity: str = "cosine"
    knn: int = 10
    symmetrise: str = "max"
    laplacian: str = "normalised"
    response: str = "inverse"
    alpha: float = 2.0
    k_low: int = 64
    max_nodes: int = 4096
    spectra: int = 3


def check_spectral(options: SpectralOptions, method: str, terms: Sequence[str]) -> None:
    """Reject bad spectral options (field named) and methods the graphs do not apply to."""
    o = options
    checks = [
        (o.lambda_spec >= 0 and _finite(o.lambda_spec), "lambda_spec", "must be >= 0"),
        (o.similarity in SIMILARITIES, "similarity", f"must be one of {', '.join(SIMILARITIES)}"),
        (o.knn >= 1, "knn", "must be >= 1"),
        (o.symmetrise in SYMMETRISE, "symmetrise", f"must be one of {', '.join(SYMMETRISE)}"),
        (o.laplacian in LAPLACIANS, "laplacian", f"must be one of {', '.join(LAPLACIANS)}"),
        (o.response in RESPONSES, "response", f"must be one of {', '.join(RESPONSES)}"),
        (o.alpha >= 0 and _finite(o.alpha), "alpha", "must be >= 0"),
        (o.k_low >= 1, "k_low", "must be >= 1"),
        (o.max_nodes >= 2, "max_nodes", "must be >= 2"),
        (o.spectra >= 0, "spectra", "must be >= 0"),
    ]
    for ok, name, message in checks:
        if not ok:
            value = getattr(o, name)
            raise GradguideError(f"{message}, got {value!r}", field=f"guidance.spectral.{name}")
    if any(t in SPECTRAL_TERMS for t in terms) and method not in SPECTRAL_METHODS:
        raise GradguideError(
            f"the spectral terms apply to full, lora and setfit (graphs on weight matrices), "
            f"not {method}",
            field="method",
        )


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def response(eigenvalues: torch.Tensor, options: SpectralOptions) -> torch.Tensor:
    """The filter's gain h(λ) for each eigenvalue (ascending)."""
    lam = eigenvalues.clamp_min(0.0)
    if options.response == "inverse":
        return 1.0 / (1.0 + options.alpha * lam)
    if options.response == "exp":
        return torch.exp(-options.alpha * lam)
    if options.response == "lowk":
        h = torch.zeros_like(lam)
        h[: options.k_low] = 1.0
        return h
    raise GradguideError(
        f"unknown response {options.response!r}", field="guidance.spectral.response"
    )


@dataclasses.dataclass
class Coordinated:
    """One graphed weight matrix and the trainable tensors its update is made of."""

    name: str  # the matrix: parameter name (full) or LoRA module name
    target: str  # trainable parameter whose gradient is filtered: W (full) or B (lora)
    graph: Graph
    gain: torch.Tensor  # h(Λ)
    a: str | None = None  # LoRA: the A parameter
    scaling: float = 1.0  # LoRA: ΔW = scaling · B A
    w0: torch.Tensor | None = None  # full: the pretrained weight
    build_s: float = 0.0


@dataclasses.dataclass
class _Candidate:
    name: str
    target: str
    rows: torch.Tensor  # the pretrained weight whose rows are the nodes
    a: str | None = None
    scaling: float = 1.0


def _candidates(
    model: torch.nn.Module, trainable: dict[str, torch.nn.Parameter], method: str
) -> list[_Candidate]:
    """The weight matrices a graph can be built for, under ``method``."""
    names = {id(p): n for n, p in trainable.items()}
    out: list[_Candidate] = []
    if method in ("full", "setfit"):  # SetFit trains every weight of its encoder body
        seen: set[str] = set()
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and id(module.weight) in names:
                name = names[id(module.weight)]
                if name not in seen:  # tied weights (embedding = LM head) are one matrix
                    seen.add(name)
                    out.append(_Candidate(name, name, module.weight))
        return out
    if method == "lora":
        from peft.tuners.lora import LoraLayer

        for mod_name, module in model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            base = module.get_base_layer()
            for adapter in module.lora_A:
                a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
                if id(a) not in names or id(b) not in names:
                    continue
                if not isinstance(base, torch.nn.Linear) or getattr(
                    module, "fan_in_fan_out", False
                ):
                    raise GradguideError(
                        f"spectral terms need LoRA on linear layers; {mod_name} is "
                        f"{type(base).__name__}",
                        field="method_options.lora_targets",
                    )
                name = mod_name if adapter == "default" else f"{mod_name}[{adapter}]"
                scaling = float(module.scaling[adapter])
                out.append(_Candidate(name, names[id(b)], base.weight, names[id(a)], scaling))
        return out
    raise GradguideError(
        f"the spectral terms apply to full, lora and setfit (graphs on weight matrices), not "
        f"{method}",
        field="method",
    )


def _graph_options(options: SpectralOptions) -> dict[str, Any]:
    return {k: getattr(options, k) for k in ("similarity", "knn", "symmetrise", "laplacian")}


def _key(options: SpectralOptions, method: str, cands: Sequence[_Candidate]) -> str:
    """sha256 of what the graphs depend on: options, matrix names and the base weights."""
    return bases_key(_graph_options(options), method, [(c.name, c.rows) for c in cands])


class SpectralGraphs:
    """The run's parameter graphs (one per coordinated matrix), shared by both spectral terms."""

    def __init__(
        self,
        entries: list[Coordinated],
        params: dict[str, torch.nn.Parameter],
        skipped: list[dict[str, Any]],
        options: SpectralOptions,
        method: str,
        facts: dict[str, Any],
    ) -> None:
        self.entries = entries
        self.params = params
        self.skipped = skipped
        self.options = options
        self.method = method
        self.facts = facts
        self._end: tuple[tuple[int, ...], dict[str, Any]] | None = None

    @classmethod
    def build(
        cls,
        model: torch.nn.Module,
        trainable: dict[str, torch.nn.Parameter],
        method: str,
        options: SpectralOptions,
        run_dir: Path | None = None,
    ) -> SpectralGraphs:
        """Graphs for every coordinated matrix (loaded from ``run_dir`` when cached there)."""
        check_spectral(options, method, SPECTRAL_TERMS)
        started = time.perf_counter()
        cands: list[_Candidate] = []
        skipped: list[dict[str, Any]] = []
        for c in _candidates(model, trainable, method):
            if c.rows.shape[0] > options.max_nodes:
                skipped.append(
                    {"name": c.name, "rows": int(c.rows.shape[0]), "reason": "rows > max_nodes"}
                )
            else:
                cands.append(c)
        if not cands:
            raise GradguideError(
                f"no weight matrix of this {method} run has at most max_nodes="
                f"{options.max_nodes} rows (skipped: {', '.join(str(s['name']) for s in skipped)})",
                field="guidance.spectral.max_nodes",
            )
        key = _key(options, method, cands)
        path = Path(run_dir) / BASES_FILE if run_dir is not None else None
        if path is not None and path.exists():
            graphs, times = load_bases(path, key, [c.name for c in cands], options.laplacian)
            source = "loaded"
        else:
            graphs, times = [], []
            for c in cands:
                t0 = time.perf_counter()
                graphs.append(
                    build_graph(
                        c.rows,
                        knn=options.knn,
                        similarity=options.similarity,
                        symmetrise=options.symmetrise,
                        laplacian=options.laplacian,
                    )
                )
                times.append(time.perf_counter() - t0)
            if path is not None:
                save_bases(path, key, [c.name for c in cands], graphs, times)
            source = "built"
        entries = []
        for c, g, t in zip(cands, graphs, times, strict=True):
            p = trainable[c.target]
            # at least fp32: in bf16, U h(Λ) Uᵀ would no longer be a projection / low-pass filter
            g = g.to(p.device, torch.promote_types(p.dtype, torch.float32))
            w0 = None if c.a is not None else c.rows.detach().clone()
            gain = response(g.eigenvalues, options)
            entries.append(Coordinated(c.name, c.target, g, gain, c.a, c.scaling, w0, t))
        facts = {
            "bases": source,
            "build_s": sum(times),
            "setup_s": time.perf_counter() - started,
            "key": key[:16],
        }
        return cls(entries, trainable, skipped, options, method, facts)

    def energy(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
        """Σ_matrices tr(ΔWᵀ L ΔW) at ``params`` (unweighted; differentiable)."""
        total: torch.Tensor | None = None
        for e in self.entries:
            if e.a is None:
                assert e.w0 is not None
                value = e.graph.dirichlet(params[e.target] - e.w0)
            else:
                b, a = params[e.target], params[e.a]
                value = (e.scaling**2) * e.graph.dirichlet_lowrank(b, a)
            total = value if total is None else total + value
        assert total is not None
        return total

    @torch.no_grad()
    def filter_(self, params: dict[str, torch.nn.Parameter]) -> None:
        """G ← U h(Λ) Uᵀ G on the gradient of each coordinated W (full) or B (lora)."""
        for e in self.entries:
            grad = params[e.target].grad
            if grad is not None:
                grad.copy_(e.graph.filter(grad, e.gain))

    @torch.no_grad()
    def end_state(self) -> dict[str, Any]:
        """‖ΔW‖_F, its high-frequency share and the energy, per matrix and overall, now."""
        version = tuple(self.params[e.target]._version for e in self.entries)
        version += tuple(self.params[e.a]._version for e in self.entries if e.a is not None)
        if self._end is not None and self._end[0] == version:
            return self._end[1]
        rows, total, high_total, energy = [], 0.0, 0.0, 0.0
        for e in self.entries:
            if e.a is None:
                assert e.w0 is not None
                delta = self.params[e.target].detach() - e.w0
                per_k = e.graph.frequency_energy(delta.float())
                dirichlet = float(e.graph.dirichlet(delta.float()))
            else:
                b = self.params[e.target].detach().float()
                a = self.params[e.a].detach().float()
                per_k = (e.scaling**2) * e.graph.frequency_energy_lowrank(b, a)
                dirichlet = float((e.scaling**2) * e.graph.dirichlet_lowrank(b, a))
            sq = float(per_k.sum())
            high = float(per_k[e.graph.n // 2 :].sum())
            rows.append(
                {
                    "name": e.name,
                    "nodes": e.graph.n,
                    "edges": int(e.graph.edges.shape[1]),
                    "build_s": round(e.build_s, 4),
                    "delta_norm": sq**0.5,
                    "high_share": high / sq if sq > 0 else None,
                    "energy": dirichlet,
                }
            )
            total, high_total, energy = total + sq, high_total + high, energy + dirichlet
        out = {
            "delta_norm": total**0.5,
            "high_share": high_total / total if total > 0 else None,
            "energy": energy,
            "matrices": rows,
        }
        self._end = (version, out)
        return out

    def spectra(self) -> dict[str, list[float]]:
        """Eigenvalues of the first ``options.spectra`` graphs at evenly spaced ranks."""
        out = {}
        for e in self.entries[: self.options.spectra]:
            lam = e.graph.eigenvalues.detach().float().cpu()
            idx = torch.linspace(0, lam.numel() - 1, min(SPECTRUM_POINTS, lam.numel()))
            out[e.name] = [round(float(lam[round(float(i))]), 6) for i in idx]
        return out

    def summary(self) -> dict[str, Any]:
        """Run-level facts: graphs, build time, skipped matrices, spectra, the update at the end.

        ``high_share`` is the energy of Uᵀ ΔW in the upper half of each spectrum (by rank) over
        ‖ΔW‖²_F; the overall value pools the energies of all matrices.
        """
        end = self.end_state()
        return {
            **self.facts,
            "graphs": len(self.entries),
            "graph_options": _graph_options(self.options),
            "max_nodes": self.options.max_nodes,
            "skipped": self.skipped,
            "spectra": self.spectra(),
            **end,
        }


def shared_graphs(ctx: BuildContext) -> SpectralGraphs:
    """The run's graphs, built (or loaded from the run directory) once for all its terms."""
    graphs = ctx.shared.get("spectral_graphs")
    if graphs is None:
        graphs = SpectralGraphs.build(
            ctx.adapted.model,
            ctx.adapted.trainable,
            ctx.adapted.method,
            ctx.config.spectral,
            ctx.run_dir,
        )
        ctx.shared["spectral_graphs"] = graphs
    return graphs


class SpectralRegulariser:
    """Loss term λ_spec · Σ tr(ΔWᵀ L ΔW): penalises high graph frequencies of the update."""

    name = "spectral-reg"

    def __init__(self, graphs: SpectralGraphs, weight: float) -> None:
        self.graphs = graphs
        self.weight = weight

    def begin_step(self, step: int) -> None:
        """Nothing to prepare: the term is a deterministic function of the parameters."""

    def loss(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
        """The weighted Dirichlet energy of the update at ``params``."""
        return self.weight * self.graphs.energy(params)

    def summary(self) -> dict[str, Any]:
        """Graph facts, the update at the end and the final regulariser value."""
        s = self.graphs.summary()
        return {"lambda_spec": self.weight, "reg_final": self.weight * s["energy"], **s}

    def close(self) -> None:
        """Nothing to release."""


class SpectralFilter:
    """Gradient transform G ← U h(Λ) Uᵀ G with a low-pass response h."""

    name = "spectral-filter"

    def __init__(self, graphs: SpectralGraphs) -> None:
        self.graphs = graphs

    def apply(self, params: dict[str, torch.nn.Parameter]) -> None:
        """Filter the gradients of the coordinated matrices in place."""
        self.graphs.filter_(params)

    def summary(self) -> dict[str, Any]:
        """The response and the graph facts."""
        o = self.graphs.options
        gains = torch.cat([e.gain.detach().float().cpu() for e in self.graphs.entries])
        return {
            "response": o.response,
            "alpha": o.alpha if o.response != "lowk" else None,
            "k_low": o.k_low if o.response == "lowk" else None,
            "mean_gain": float(gains.mean()),
            **self.graphs.summary(),
        }


def build_regulariser(ctx: BuildContext) -> SpectralRegulariser:
    """The ``spectral-reg`` loss term of a run."""
    return SpectralRegulariser(shared_graphs(ctx), ctx.config.spectral.lambda_spec)


def build_filter(ctx: BuildContext) -> SpectralFilter:
    """The ``spectral-filter`` transform of a run."""
    return SpectralFilter(shared_graphs(ctx))


SPECTRAL = register_guidance(
    GuidanceSpec(
        names={
            "spectral": SPECTRAL_TERMS,
            "spectral-reg": ("spectral-reg",),
            "spectral-filter": ("spectral-filter",),
        },
        terms=(
            Term("spectral-reg", "loss", build_regulariser),
            Term("spectral-filter", "transform", build_filter),
        ),
        options=SpectralOptions,
        options_key="spectral",
        validate=check_spectral,
        # LoRA on smollm2-135m, benchmarks/spectral_cost.py (4 steps on a loaded machine, noisy):
        # 1.02 (reg), 1.02 (filter), 1.18 (both); the graphs cost ~5 s once per run
        cost={"spectral": 1.1, "spectral-reg": 1.05, "spectral-filter": 1.05},
    )
)
