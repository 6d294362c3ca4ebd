"""Step time and peak memory of every training method, fp32 and bf16 autocast, side by side.

smollm2-135m, a batch of 8 SST-2 instances cut to 64 tokens (two single-token candidates each).
Arms (method × precision) are built once and stepped in turn, so machine noise hits all alike;
each step is forward, backward, AdamW step. Ratios are to LoRA in fp32.

    .venv/bin/python benchmarks/train_cost.py [--steps 5] [--methods full,lora,prompt]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from _common import batch_of, time_interleaved

from gradguide.methods import MethodOptions, get_method
from gradguide.models import load_model
from gradguide.scoring import ScoringOptions, candidate_scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--methods", default="full,lora,prompt,adapter,layernorm")
    a = ap.parse_args()
    batch = batch_of(8)
    gold = torch.tensor([x.gold for x in batch])
    options = ScoringOptions(max_length=64)
    arms = {}
    for name in a.methods.split(","):
        for bf16 in (False, True):
            torch.manual_seed(0)
            lm = load_model(a.model)
            method = get_method(name)
            adapted = method.apply(lm, MethodOptions())
            params = list(adapted.trainable.values())
            opt = torch.optim.AdamW(params, lr=method.default_lr)
            arms[(name, bf16)] = (adapted.as_lm(lm), params, opt, adapted.n_trainable())

    def step_of(key: tuple[str, bool]):
        lm, _, opt, _ = arms[key]

        def step(_: int) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=key[1]):
                loss = F.cross_entropy(candidate_scores(lm, batch, "", options), gold)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    times, peaks = time_interleaved({k: step_of(k) for k in arms}, a.steps)
    ref_t = statistics.median(times[("lora", False)]) if ("lora", False) in times else 1.0
    threads = torch.get_num_threads()
    print(f"{a.model}, batch 8 x 64 tokens, {a.steps} steps per arm, threads {threads}")
    head = ("method", "precision", "trained", "median s", "x lora fp32", "peak MB")
    print(f"{head[0]:<11}{head[1]:<10}{head[2]:>13}{head[3]:>10}{head[4]:>12}{head[5]:>9}")
    for (name, bf16), (_, _, _, n) in arms.items():
        med = statistics.median(times[(name, bf16)])
        pk = statistics.median(peaks[(name, bf16)])
        prec = "bf16" if bf16 else "fp32"
        print(f"{name:<11}{prec:<10}{n:>13,}{med:>10.3f}{med / ref_t:>12.2f}{pk:>9.0f}")


if __name__ == "__main__":
    main()
