"""Cost of SGG per training step, as ratios to plain training measured side by side.

smollm2-135m + LoRA (PEFT, r=8, q/v), a batch of 8 SST-2 instances cut to 64 tokens, two
single-token candidates each. Arms, interleaved step by step in one process so that machine noise
hits all of them alike: plain (SDPA attention), sgg fd, sgg fd lazy:4, sgg exact (eager attention,
which double backward needs; a plain eager arm is shown for reference). Step = forward, backward
(guided), AdamW step. Memory = the largest RSS growth during a step over the process's RSS before
it, sampled every 2 ms in a thread: what an arm needs beyond what earlier steps already hold.

    .venv/bin/python benchmarks/sgg_cost.py [--steps 8] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from _common import batch_of, time_interleaved

from gradguide.guidance.engine import GuidedGradient
from gradguide.guidance.priors import FixedPrior, unit
from gradguide.guidance.sgg import DirectionPenalty, MagnitudePenalty
from gradguide.methods import MethodOptions, get_method
from gradguide.models import load_model
from gradguide.scoring import ScoringOptions, candidate_scores


def make_arm(model: str, attn: str, penalties: list, hvp: str, lazy: int):
    torch.manual_seed(0)
    lm = load_model(model, attn_implementation=attn)
    adapted = get_method("lora").apply(lm, MethodOptions())
    params = list(adapted.trainable.values())
    n = sum(p.numel() for p in params)
    prior = FixedPrior(unit(torch.randn(n, generator=torch.Generator().manual_seed(1))), "random")
    engine = GuidedGradient(penalties, hvp=hvp, lazy=lazy, prior=prior)
    opt = torch.optim.AdamW(params, lr=1e-4)
    return adapted.as_lm(lm), params, engine, opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per arm (multiple of 4)")
    a = ap.parse_args()
    batch = batch_of(8)
    options = ScoringOptions(max_length=64)
    gold = torch.tensor([x.gold for x in batch])
    sgg = lambda: [DirectionPenalty(0.1), MagnitudePenalty(0.1, tau=1.0)]  # noqa: E731
    arms = {
        "plain": make_arm(a.model, "sdpa", [], "fd", 1),
        "sgg fd": make_arm(a.model, "sdpa", sgg(), "fd", 1),
        "sgg fd lazy:4": make_arm(a.model, "sdpa", sgg(), "fd", 4),
        "plain eager": make_arm(a.model, "eager", [], "fd", 1),
        "sgg exact": make_arm(a.model, "eager", sgg(), "exact", 1),
    }

    def step_of(lm, params, engine, opt):
        def loss_fn() -> torch.Tensor:
            return F.cross_entropy(candidate_scores(lm, batch, "", options), gold)

        def step(i: int) -> None:
            engine.backward(loss_fn, params, i)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    times, peaks = time_interleaved({k: step_of(*arm) for k, arm in arms.items()}, a.steps)
    base_t = statistics.median(times["plain"])
    print(
        f"{a.model} + LoRA, batch 8 x 64 tokens, {a.steps} steps per arm, "
        f"threads {torch.get_num_threads()}"
    )
    print(f"{'arm':<15}{'median s':>10}{'mean s':>9}{'x plain':>9}{'extra MB':>10}")
    for name in arms:
        med, mean = statistics.median(times[name]), statistics.mean(times[name])
        pk = statistics.median(peaks[name])
        # lazy arms alternate cheap and costly steps: their cost is the mean over whole cycles
        ratio = (mean if "lazy" in name else med) / base_t
        print(f"{name:<15}{med:>10.3f}{mean:>9.3f}{ratio:>9.2f}{pk:>10.0f}")
    print("extra MB: median RSS growth during a step beyond the process's RSS before it (after the")
    print("warm-up step, memory a plain step needs is already held, so plain shows ~0)")


if __name__ == "__main__":
    main()
