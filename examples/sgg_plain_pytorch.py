"""SGG in a plain PyTorch loop: GuidedGradient fills .grad with ∇(L + R_dir + R_mag).

    .venv/bin/python examples/sgg_plain_pytorch.py [--model smollm2-135m] [--steps 20]

The loop is ordinary PyTorch; the only change is the backward pass, one call.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from gradguide.guidance.engine import GuidedGradient
from gradguide.guidance.priors import build_prior
from gradguide.guidance.sgg import DirectionPenalty, MagnitudePenalty
from gradguide.methods import MethodOptions, get_method
from gradguide.models import load_model
from gradguide.scoring import candidate_scores
from gradguide.tasks import get_task, resolve_data_root, sample_k_shot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model(a.model)
    adapted = get_method("lora").apply(lm, MethodOptions())  # PEFT LoRA, base model frozen
    model = adapted.as_lm(lm)
    params = list(adapted.trainable.values())
    task = get_task("demo-sentiment")
    train = sample_k_shot(task.load("train"), 16, seed=1)

    # d_prior: mean LM-loss gradient on Wikipedia passages (BoolQ in the data root), else an EMA
    spec = "pretrain" if resolve_data_root() else "ema:0.9"
    prior = build_prior(spec, model, adapted.trainable, resolve_data_root())
    engine = GuidedGradient(
        [DirectionPenalty(0.1), MagnitudePenalty(0.1, tau=None)], hvp="fd", prior=prior
    )
    optimizer = torch.optim.AdamW(params, lr=5e-4)
    for step in range(a.steps):
        batch = [train[(step * 4 + i) % len(train)] for i in range(4)]

        def loss_fn(batch=batch) -> torch.Tensor:
            scores = candidate_scores(model, batch)
            return F.cross_entropy(scores, torch.tensor([x.gold for x in batch]))

        stats = engine.backward(loss_fn, params, step)  # .grad = g + H·∂R/∂g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        print(
            f"step {step}: loss {stats.loss:.4f} |g| {stats.grad_norm:.4f} "
            f"cos(g, d_prior) {stats.cos_prior} penalties {stats.penalties}"
        )


if __name__ == "__main__":
    main()
