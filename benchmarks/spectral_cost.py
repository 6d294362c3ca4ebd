"""Cost of spectral parameter coordination: graph builds, and training steps as ratios to LoRA.

1. Graph build (kNN similarity graph of the pretrained rows + float64 eigendecomposition) for
   every matrix the spectral terms would graph on smollm2-135m: under LoRA (the default q_proj,
   v_proj targets) and under full fine-tuning (every Linear weight with at most max_nodes rows;
   the 49152-row tied embedding / LM head is skipped). Default graph options.
2. Training step time of LoRA (PEFT, r=8, q/v) alone, + spectral-reg, + spectral-filter, + both,
   interleaved step by step in one process so that machine noise hits every arm alike. A batch of
   8 SST-2 instances cut to 64 tokens, two single-token candidates each. Step = forward, backward,
   the filter (if any), AdamW step.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/spectral_cost.py [--steps 4] [--no-full]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from _common import batch_of, time_interleaved

from gradguide.bench.stats import mean_ci
from gradguide.guidance.spectral import SpectralGraphs, SpectralOptions
from gradguide.methods import MethodOptions, get_method
from gradguide.models import load_model
from gradguide.scoring import ScoringOptions, candidate_scores


def build_report(model: str, method: str) -> None:
    """Build every graph of ``method`` on a fresh model and print the times by matrix kind."""
    lm = load_model(model)
    adapted = get_method(method).apply(lm, MethodOptions())
    t0 = time.perf_counter()
    graphs = SpectralGraphs.build(adapted.model, adapted.trainable, method, SpectralOptions())
    wall = time.perf_counter() - t0
    kinds: dict[tuple[str, int], list[float]] = defaultdict(list)
    for e in graphs.entries:
        kind = e.name.split(".")[-1] if method == "lora" else e.name.split(".")[-2]
        kinds[(kind, e.graph.n)].append(e.build_s)
    print(f"\n{model} + {method}: {len(graphs.entries)} graphs in {wall:.1f} s wall", end="")
    print(f" (graph builds {graphs.facts['build_s']:.1f} s, the rest: finding and hashing weights)")
    print(f"{'matrix':<12}{'rows':>7}{'count':>7}{'median s':>10}{'total s':>9}")
    for (kind, n), times in sorted(kinds.items(), key=lambda kv: -sum(kv[1])):
        med = statistics.median(times)
        print(f"{kind:<12}{n:>7}{len(times):>7}{med:>10.3f}{sum(times):>9.1f}")
    for s in graphs.skipped:
        print(f"skipped: {s['name']} ({s['rows']} rows, {s['reason']})")
    mb = sum(e.graph.eigenvectors.numel() * 4 for e in graphs.entries) / 2**20
    print(f"eigenvector storage: {mb:.0f} MB (float32)")


def make_arm(model: str, reg: bool, filt: bool):
    torch.manual_seed(0)
    lm = load_model(model)
    adapted = get_method("lora").apply(lm, MethodOptions())
    graphs = None
    if reg or filt:
        graphs = SpectralGraphs.build(adapted.model, adapted.trainable, "lora", SpectralOptions())
    opt = torch.optim.AdamW(list(adapted.trainable.values()), lr=5e-4)
    return adapted.as_lm(lm), adapted.trainable, graphs, opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=4, help="measured steps per arm")
    ap.add_argument("--no-full", action="store_true", help="skip the full fine-tuning graphs")
    a = ap.parse_args()
    print(f"threads {torch.get_num_threads()}")
    build_report(a.model, "lora")
    if not a.no_full:
        build_report(a.model, "full")

    batch = batch_of(8)
    options = ScoringOptions(max_length=64)
    gold = torch.tensor([x.gold for x in batch])
    lam = SpectralOptions().lambda_spec
    arms = {
        "lora": make_arm(a.model, False, False),
        "+ spectral-reg": make_arm(a.model, True, False),
        "+ spectral-filter": make_arm(a.model, False, True),
        "+ both": make_arm(a.model, True, True),
    }
    uses = {"lora": (0, 0), "+ spectral-reg": (1, 0), "+ spectral-filter": (0, 1), "+ both": (1, 1)}
    task_loss: dict[str, float] = {}

    def step_of(name: str):
        lm, params, graphs, opt = arms[name]
        reg, filt = uses[name]

        def step(_: int) -> None:
            task = F.cross_entropy(candidate_scores(lm, batch, "", options), gold)
            loss = task + lam * graphs.energy(params) if reg and graphs is not None else task
            loss.backward()
            if filt and graphs is not None:
                graphs.filter_(params)
            opt.step()
            opt.zero_grad(set_to_none=True)
            task_loss[name] = float(task.detach())

        return step

    times, _ = time_interleaved({k: step_of(k) for k in arms}, a.steps)
    last: dict[str, tuple[float, float]] = {}
    for name, (_, params, graphs, _) in arms.items():
        with torch.no_grad():
            energy = float(graphs.energy(params)) if graphs is not None else float("nan")
        last[name] = (task_loss[name], energy)
    base = statistics.median(times["lora"])
    print(f"\n{a.model} + LoRA step, batch 8 x 64 tokens, {a.steps} steps per arm (interleaved)")
    print(
        f"{'arm':<19}{'median s':>10}{'x lora':>8}{'paired x, mean ± 95%':>22}"
        f"{'task loss':>11}{'energy':>11}"
    )
    for name in arms:
        med = statistics.median(times[name])
        # ratio to the LoRA step of the same round, so both saw the same machine load
        ratio = mean_ci([t / b for t, b in zip(times[name], times["lora"], strict=True)])
        task, energy = last[name]
        shown = f"{energy:>11.3e}" if math.isfinite(energy) else f"{'n/a':>11}"
        paired = f"{ratio.mean:.3f} ± {ratio.half_width:.3f}"
        print(f"{name:<19}{med:>10.3f}{med / base:>8.3f}{paired:>22}{task:>11.4f}{shown}")
    print(f"energy: Σ tr(ΔWᵀLΔW) after the last step (the regulariser adds λ_spec={lam} × it)")


if __name__ == "__main__":
    main()
