"""Cost of OFA per training step, as ratios to plain LayerNorm tuning measured side by side.

smollm2-135m, LayerNorm tuning (every RMSNorm gain trained), a batch of 8 SST-2 instances cut to
64 tokens, two single-token candidates each. Arms, interleaved step by step in one process so that
machine noise hits all of them alike: layernorm (cross entropy only), + ofa-step (the step ratio:
no extra pass), + ofa-sharp (fd: two extra forward passes of every block per probe), + both (the
``ofa`` method); with ``--exact``, an eager-attention pair as well: layernorm eager and ofa with
the forward-mode JVP (which needs eager attention). Step = forward, terms, backward, AdamW step.
Memory = the largest RSS growth during a step over the process's RSS before it (2 ms sampling).

    .venv/bin/python benchmarks/ofa_cost.py [--steps 4] [--model smollm2-135m] [--exact]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from _common import batch_of, time_interleaved

from gradguide.guidance.ofa import OfaOptions, OfaSharpness, OfaStepRatio
from gradguide.methods import MethodOptions, get_method
from gradguide.models import load_model
from gradguide.scoring import ScoringOptions, candidate_scores


def make_arm(model: str, attn: str, terms: tuple[str, ...], jvp: str = "fd"):
    torch.manual_seed(0)
    lm = load_model(model, attn_implementation=attn)
    adapted = get_method("layernorm").apply(lm, MethodOptions())
    options = OfaOptions(jvp=jvp)
    built = []
    if "step" in terms:
        built.append(OfaStepRatio(adapted.model, options, seed=1))
    if "sharp" in terms:
        built.append(OfaSharpness(adapted.model, options, seed=1))
    params = list(adapted.trainable.values())
    opt = torch.optim.AdamW(params, lr=1e-3)
    return adapted.as_lm(lm), adapted.trainable, built, opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=4, help="measured steps per arm")
    ap.add_argument("--exact", action="store_true", help="add the eager / exact-JVP arms")
    a = ap.parse_args()
    batch = batch_of(8)
    options = ScoringOptions(max_length=64)
    gold = torch.tensor([x.gold for x in batch])
    arms = {
        "layernorm": make_arm(a.model, "sdpa", ()),
        "+ ofa-step": make_arm(a.model, "sdpa", ("step",)),
        "+ ofa-sharp fd": make_arm(a.model, "sdpa", ("sharp",)),
        "ofa (fd)": make_arm(a.model, "sdpa", ("step", "sharp")),
    }
    if a.exact:
        arms["layernorm eager"] = make_arm(a.model, "eager", ())
        arms["ofa exact"] = make_arm(a.model, "eager", ("step", "sharp"), "exact")

    def step_of(lm, params, terms, opt):
        def step(i: int) -> None:
            for term in terms:
                term.begin_step(i)
            loss = F.cross_entropy(candidate_scores(lm, batch, "", options), gold)
            for term in terms:
                loss = loss + term.loss(params)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    times, peaks = time_interleaved({k: step_of(*arm) for k, arm in arms.items()}, a.steps)
    base_t = statistics.median(times["layernorm"])
    n_blocks = len(arms["ofa (fd)"][2][0].capture.stack.blocks)
    print(
        f"{a.model} + LayerNorm tuning ({n_blocks} blocks), batch 8 x 64 tokens, {a.steps} steps "
        f"per arm, 1 probe, threads {torch.get_num_threads()}"
    )
    print(f"{'arm':<17}{'median s':>10}{'mean s':>9}{'x layernorm':>13}{'extra MB':>10}")
    for name in arms:
        med, mean = statistics.median(times[name]), statistics.mean(times[name])
        pk = statistics.median(peaks[name])
        print(f"{name:<17}{med:>10.3f}{mean:>9.3f}{med / base_t:>13.2f}{pk:>10.0f}")
    print("extra MB: median RSS growth during a step beyond the process's RSS before it")


if __name__ == "__main__":
    main()
