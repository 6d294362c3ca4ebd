"""Zero-shot and in-context accuracy of one model over several tasks, as a table.

Each cell is an ordinary evaluation with its run record (under ``--out``); ICL is repeated over
seeds (different demonstration samples) and reported as mean ± 95% interval.

    .venv/bin/python benchmarks/zero_shot_icl.py --tasks sst2,rte,cb,copa,wic \
        --shots 4 --seeds 1,2,3 [--limit boolq=500,multirc=100]
"""

from __future__ import annotations

import argparse
import time

from gradguide.bench.stats import mean_ci
from gradguide.config import EvalConfig
from gradguide.evaluate import evaluate
from gradguide.models import load_model
from gradguide.scoring import ScoringOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="sst2,rte,cb,copa,wic,boolq,multirc")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--limit", default="", help="per-task limits, e.g. boolq=500,multirc=100")
    ap.add_argument("--icl-seeds", default="", help="per-task seeds, e.g. boolq=1,multirc=1+2")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--out", default="runs/zero_shot_icl")
    a = ap.parse_args()
    limits = {k: int(v) for k, v in (p.split("=") for p in a.limit.split(",") if p)}
    seed_override = {k: v for k, v in (p.split("=") for p in a.icl_seeds.split(",") if p)}
    lm = load_model(a.model)
    opts = ScoringOptions(max_length=a.max_length, batch_size=8)
    rows = []
    for task in a.tasks.split(","):
        base = EvalConfig(model=a.model, task=task, limit=limits.get(task), out=a.out, scoring=opts)
        t0 = time.perf_counter()
        zs = evaluate(base, lm=lm, show_progress=False)
        zs_s = time.perf_counter() - t0
        seed_text = seed_override.get(task, a.seeds.replace(",", "+"))
        seeds = [int(s) for s in seed_text.split("+")]
        icl = {m: [] for m in zs.metrics}
        t0 = time.perf_counter()
        for seed in seeds:
            cfg = EvalConfig(**{**base.__dict__, "shots": a.shots, "seed": seed})
            r = evaluate(cfg, lm=lm, show_progress=False)
            for m, v in r.metrics.items():
                icl[m].append(v)
        icl_s = (time.perf_counter() - t0) / len(seeds)
        n = zs.record["data"]["eval_size"]
        for m in zs.metrics:
            rows.append((task, m, n, zs.metrics[m], mean_ci(icl[m]), len(seeds), zs_s, icl_s))
        print(
            f"done {task}: n={n} zero-shot {zs.metrics} ({zs_s:.0f}s), "
            f"icl {icl} ({icl_s:.0f}s/seed)",
            flush=True,
        )
    print(f"\n{a.model}: zero-shot vs {a.shots}-shot ICL (mean ± 95% interval over ICL seeds)")
    head = ("task", "metric", "n", "zero-shot", "icl", "seeds", "zs s", "icl s")
    print(f"{head[0]:<9}{head[1]:<10}{head[2]:>6}{head[3]:>11}  {head[4]:<18}{head[5]:>6}", end="")
    print(f"{head[6]:>7}{head[7]:>7}")
    for task, m, n, z, ci, k, zs_s, icl_s in rows:
        print(f"{task:<9}{m:<10}{n:>6}{z:>11.3f}  {ci!s:<18}{k:>6}{zs_s:>7.0f}{icl_s:>7.0f}")


if __name__ == "__main__":
    main()
