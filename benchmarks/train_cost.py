"""Step time and peak memory of every training method, fp32 and bf16 autocast, side by side.

smollm2-135m, a batch of 8 SST-2 instances cut to 64 tokens (two single-token candidates each).
Step time: arms (method × precision) are built once in this process and stepped in turn, so
machine noise hits all alike; each step is forward, backward, AdamW step. Peak memory: each arm
again in a fresh process of its own (one in which no other arm ever allocated, since the
allocator keeps freed pages), its peak resident memory (VmHWM) over ``--steps`` steps, and that
peak less the memory of the loaded model, which is what training adds (gradients, optimiser
state, activations). Ratios are to LoRA in fp32.

    .venv/bin/python benchmarks/train_cost.py [--steps 5] [--methods full,lora,prompt]
                                              [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F
from _common import batch_of, time_interleaved

from gradguide.methods import MethodOptions, get_method
from gradguide.models import load_model
from gradguide.record import peak_rss_mb, reset_peak_rss
from gradguide.scoring import ScoringOptions, candidate_scores

Arm = tuple[str, bool]  # method, bf16


def build_arm(model: str, name: str) -> tuple[object, torch.optim.Optimizer, int]:
    """The adapted model, its AdamW optimiser and its number of trainable parameters."""
    torch.manual_seed(0)
    lm = load_model(model)
    method = get_method(name)
    adapted = method.apply(lm, MethodOptions())
    params = list(adapted.trainable.values())
    opt = torch.optim.AdamW(params, lr=method.default_lr)
    return adapted.as_lm(lm), opt, adapted.n_trainable()


def step_fn(lm: object, opt: torch.optim.Optimizer, bf16: bool):
    """One training step (forward, backward, AdamW) on the benchmark batch."""
    batch = batch_of(8)
    gold = torch.tensor([x.gold for x in batch])
    options = ScoringOptions(max_length=64)

    def step(_: int) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(candidate_scores(lm, batch, "", options), gold)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def one_arm_memory(model: str, name: str, bf16: bool, steps: int) -> dict[str, float]:
    """Peak RSS (MiB) of this process over ``steps`` steps of one arm, and of its loaded model."""
    lm, opt, _ = build_arm(model, name)
    step = step_fn(lm, opt, bf16)
    reset_peak_rss()
    loaded = peak_rss_mb()
    for i in range(steps):
        step(i)
    return {"loaded_mb": loaded, "peak_mb": peak_rss_mb()}


def measure_memory(model: str, arm: Arm, steps: int) -> dict[str, float]:
    """Run :func:`one_arm_memory` in a fresh Python process and read its result."""
    cmd = [sys.executable, __file__, "--model", model, "--steps", str(steps), "--one-arm"]
    cmd.append(f"{arm[0]}:{'bf16' if arm[1] else 'fp32'}")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--methods", default="full,lora,prompt,adapter,layernorm")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--one-arm", help=argparse.SUPPRESS)  # METHOD:PRECISION, memory child
    a = ap.parse_args()
    if a.one_arm:
        name, prec = a.one_arm.split(":")
        print(json.dumps(one_arm_memory(a.model, name, prec == "bf16", max(1, a.steps))))
        return
    precisions = [p == "bf16" for p in a.precisions.split(",")]
    arms: dict[Arm, tuple[object, torch.optim.Optimizer, int]] = {
        (name, bf16): build_arm(a.model, name)
        for name in a.methods.split(",")
        for bf16 in precisions
    }
    steps = {k: step_fn(lm, opt, k[1]) for k, (lm, opt, _) in arms.items()}
    times, _ = time_interleaved(steps, a.steps)
    n_trained = {k: n for k, (_, _, n) in arms.items()}
    arms.clear()  # free the models before the memory children start
    memory = {k: measure_memory(a.model, k, a.steps) for k in n_trained}
    ref_t = statistics.median(times[("lora", False)]) if ("lora", False) in times else 1.0
    ref_m = memory[("lora", False)]["peak_mb"] if ("lora", False) in memory else 1.0
    threads = torch.get_num_threads()
    print(f"{a.model}, batch 8 x 64 tokens, {a.steps} steps per arm, threads {threads}")
    print("peak: the arm's own process (VmHWM); +train: peak less the loaded model's memory")
    head = ("method", "precision", "trained", "median s", "x lora fp32", "peak MiB", "x lora")
    print(
        f"{head[0]:<11}{head[1]:<10}{head[2]:>13}{head[3]:>10}{head[4]:>12}{head[5]:>10}"
        f"{head[6]:>8}{'+train MiB':>12}"
    )
    for (name, bf16), n in n_trained.items():
        med = statistics.median(times[(name, bf16)])
        mem = memory[(name, bf16)]
        prec = "bf16" if bf16 else "fp32"
        print(
            f"{name:<11}{prec:<10}{n:>13,}{med:>10.3f}{med / ref_t:>12.2f}"
            f"{mem['peak_mb']:>10.0f}{mem['peak_mb'] / ref_m:>8.2f}"
            f"{mem['peak_mb'] - mem['loaded_mb']:>12.0f}"
        )


if __name__ == "__main__":
    main()
