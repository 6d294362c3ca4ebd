"""Main job of `make demo`: the embedded LLM zero-shot and in context on a real task.

Uses SST-2 (dev) when the data root is found, otherwise gradguide's own small demonstration task,
and says which. Every evaluation writes its run record under runs/demo/.
"""

from __future__ import annotations

import sys

from gradguide.bench.stats import mean_ci
from gradguide.config import EvalConfig
from gradguide.evaluate import evaluate
from gradguide.models import load_model
from gradguide.tasks import resolve_data_root

SEEDS = (1, 2, 3)
SHOTS = 4
LIMIT = 300


def main() -> int:
    root = resolve_data_root()
    if root is not None:
        task, limit = "sst2", LIMIT
        print(f"data root {root}: evaluating on SST-2 dev (first {limit} examples)")
    else:
        task, limit = "demo-sentiment", None
        print("no data root found: using gradguide's small demonstration task 'demo-sentiment'")
    lm = load_model("smollm2-135m")
    print(
        f"model smollm2-135m loaded ({lm.info.get('cache', '?')} cache, "
        f"{lm.info.get('load_seconds', 0):.1f} s)"
    )
    rows = []
    zs = evaluate(EvalConfig(task=task, limit=limit, out="runs/demo"), lm=lm)
    rows.append(("zero-shot", [zs.metrics["accuracy"]], zs.record["scoring"]["examples_per_s"]))
    accs, speed = [], []
    for seed in SEEDS:
        r = evaluate(
            EvalConfig(task=task, limit=limit, shots=SHOTS, seed=seed, out="runs/demo"), lm=lm
        )
        accs.append(r.metrics["accuracy"])
        speed.append(r.record["scoring"]["examples_per_s"])
    rows.append((f"icl ({SHOTS} demos)", accs, sum(speed) / len(speed)))
    print(f"\nsmollm2-135m on {task}: accuracy, mean ± 95% interval over seeds {list(SEEDS)}")
    print(f"{'method':<16}{'accuracy':<22}{'seeds':<8}{'examples/s':>10}")
    for name, values, eps in rows:
        print(f"{name:<16}{mean_ci(values)!s:<22}{len(values):<8}{eps:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
