"""Cost of SetFit's steps and evaluation on minilm-l6, as ratios to a LoRA step (the estimator's).

Arms, interleaved step by step in one process so that machine noise hits every arm alike:
LoRA (PEFT r=8, q/v; a batch of 8 SST-2 instances scored by the encoder head, gradguide's rank
loss), SetFit's body step (8 pairs of SST-2 sentences, CosineSimilarityLoss, every weight), and
the same with SGG (direction + magnitude penalties, finite-difference HVP, EMA prior). The
estimator's per-8 unit is a LoRA step of 8 instances; a SetFit step of 8 pairs embeds 16
sentences. Then evaluation throughput: 300 SST-2 dev examples scored by the encoder head
(prompt + label words) and by a SetFit model's head (one embedding each).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/setfit_cost.py [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import time_interleaved

from gradguide.guidance import build_penalties
from gradguide.guidance.engine import GuidedGradient
from gradguide.guidance.priors import EmaPrior
from gradguide.methods import MethodOptions, get_method
from gradguide.models import load_model
from gradguide.objective import rank_loss
from gradguide.scoring import ScoringOptions, score_dataset
from gradguide.tasks import get_task, resolve_data_root
from gradguide.train_config import GuidanceConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="measured steps per arm")
    a = ap.parse_args()
    root = resolve_data_root()
    task = get_task("sst2" if root else "demo-sentiment")
    pool = task.load(task.train_split, root)
    evals = task.load(task.eval_split, root)[:300]
    batch = pool[:8]
    print(f"threads {torch.get_num_threads()}, task {task.name}")

    lora_lm = load_model("minilm-l6")
    lora = get_method("lora").apply(lora_lm, MethodOptions())
    lora_scored = lora.as_lm(lora_lm)
    lora_opt = torch.optim.AdamW(list(lora.trainable.values()), lr=5e-4)

    setfit = get_method("setfit")
    arms: dict[str, object] = {}
    for name in ("setfit", "setfit+sgg"):
        adapted = setfit.apply(load_model("minilm-l6"), MethodOptions())
        objective = setfit.objective(adapted)  # type: ignore[attr-defined]
        pairs = objective.items(pool[:32])[:8]
        params = list(adapted.trainable.values())
        use = "sgg" if name.endswith("sgg") else ""
        penalties = build_penalties([use] if use else [], GuidanceConfig(), has_source=False)
        engine = GuidedGradient(penalties, prior=EmaPrior(0.9))
        opt = torch.optim.AdamW(params, lr=2e-5)
        adapted.model.train()
        arms[name] = (adapted, objective, pairs, params, engine, opt)

    def lora_step(_: int) -> None:
        lora_lm.model.train()
        lora_opt.zero_grad()
        rank_loss(lora_scored, batch, ScoringOptions()).backward()
        lora_opt.step()

    def setfit_step(name: str):
        def step(i: int) -> None:
            _, objective, pairs, params, engine, opt = arms[name]  # type: ignore[misc]
            engine.backward(lambda: objective.loss(pairs), params, i)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    steps = {name: setfit_step(name) for name in ("setfit", "setfit+sgg")}
    times, _ = time_interleaved({"lora": lora_step, **steps}, a.steps)
    base = statistics.median(times["lora"])
    print(f"\nstep (median of {a.steps}): seconds, ratio to a LoRA step of 8 instances")
    for name, ts in times.items():
        print(f"  {name:<12}{statistics.median(ts):8.2f} s  x{statistics.median(ts) / base:.2f}")

    adapted = arms["setfit"][0]  # type: ignore[index]
    adapted.setfit.fit([x.text for x in pool[:32]], [x.gold for x in pool[:32]], num_epochs=1)
    scorer = adapted.as_lm(load_model("minilm-l6"))
    lora_lm.model.eval()
    adapted.model.eval()
    for name, lm in (("encoder head", lora_scored), ("setfit head", scorer)):
        t0 = time.perf_counter()
        score_dataset(lm, evals, "", ScoringOptions())
        dt = time.perf_counter() - t0
        print(f"eval {name:<13}{len(evals) / dt:8.1f} examples/s")


if __name__ == "__main__":
    main()
