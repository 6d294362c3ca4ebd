"""Main job of `make demo`: a short comparison on the embedded LLM, printed as a table.

SmolLM2-135M-Instruct on SST-2 (first 200 dev examples) when the data root is found, otherwise on
gradguide's small demonstration task (and it says so): zero-shot, in-context learning, LoRA and
LoRA + SGG, each on the same 16-shot samples for seeds 1 and 2. Every run writes its record under
runs/demo/. An estimated 5–10 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys

from gradguide.bench.compare import compare
from gradguide.tasks import resolve_data_root
from gradguide.train import GuidanceConfig, OptimConfig, TrainConfig, TrainResult

METHODS = ("zero-shot", "icl", "lora", "sgg")
SEEDS = (1, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    root = resolve_data_root()
    if root is not None:
        task, limit = "sst2", 200
        print(f"data root {root}: SST-2, evaluated on the first {limit} dev examples")
    else:
        task, limit = "demo-sentiment", None
        print("no data root found: using gradguide's small demonstration task 'demo-sentiment'")
    base = TrainConfig(
        model=a.model,
        task=task,
        shots=16,
        eval_limit=limit,
        out="runs/demo",
        optim=OptimConfig(epochs=5, batch_size=8),
        # d_prior from Wikipedia passages in the data root; without one, a running average
        guidance=GuidanceConfig(prior="pretrain" if root else "ema:0.9"),
    )

    def progress(method: str, seed: int, r: TrainResult) -> None:
        acc, wall = r.metrics["accuracy"], r.record["timings"]["total_s"]
        print(f"  {method:<10} seed {seed}: accuracy {acc:.3f} ({wall:.0f} s)")

    rows = compare(base, METHODS, seeds, on_run=progress)
    print(f"\n{a.model} on {task}, 16 shots, seeds {seeds}: mean ± 95% interval")
    print(f"{'method':<11}{'accuracy':<20}{'trained params':>15}{'wall s/run':>12}")
    for r in rows:
        acc = r.metrics["accuracy"]
        print(f"{r.method:<11}{acc!s:<20}{r.trainable_parameters:>15,}{r.wall_s.mean:>12.0f}")
    print("(2 seeds give wide intervals; `gradguide compare --seeds 1,2,3,4,5` for more)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
