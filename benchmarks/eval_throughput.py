"""Evaluation throughput with and without the single-token fast path, side by side.

Loads smollm2-135m once, then alternates fast and slow scoring of the same SST-2 dev examples
(demo task if no data root) for ``--repeats`` rounds and prints median examples/s and the ratio.
Both arms run in the same process, interleaved, so machine noise hits them alike.

    .venv/bin/python benchmarks/eval_throughput.py --limit 200 --repeats 3 [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gradguide.models import load_model
from gradguide.scoring import ScoringOptions, build_prefix, score_dataset
from gradguide.tasks import get_task, resolve_data_root
from gradguide.tasks.sampling import sample_demonstrations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument(
        "--task", default=None, help="default: sst2 if data is found, else demo-sentiment"
    )
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--shots", type=int, default=0, help="in-context demonstrations (0 = zero-shot)"
    )
    a = ap.parse_args()
    root = resolve_data_root()
    task = get_task(a.task or ("sst2" if root else "demo-sentiment"))
    xs = task.load(task.eval_split, root)[: a.limit]
    prefix = ""
    if a.shots:
        prefix = build_prefix(sample_demonstrations(task.load(task.train_split, root), a.shots, 1))
    lm = load_model(a.model)
    arms = {
        "fast": ScoringOptions(batch_size=a.batch_size, fast_path=True),
        "slow": ScoringOptions(batch_size=a.batch_size, fast_path=False),
    }
    rates: dict[str, list[float]] = {k: [] for k in arms}
    preds: dict[str, list[int]] = {}
    score_dataset(lm, xs[: a.batch_size], prefix, arms["fast"])  # warm-up
    for _ in range(a.repeats):
        for name, opts in arms.items():
            t0 = time.perf_counter()
            scored = score_dataset(lm, xs, prefix, opts)
            rates[name].append(len(xs) / (time.perf_counter() - t0))
            preds[name] = scored.predictions
    agree = sum(p == q for p, q in zip(preds["fast"], preds["slow"], strict=True)) / len(xs)
    print(
        f"model {a.model}, task {task.name}, n={len(xs)}, shots={a.shots}, batch {a.batch_size}, "
        f"threads {torch.get_num_threads()}, repeats {a.repeats}"
    )
    for name in arms:
        print(
            f"  {name:<5} median {statistics.median(rates[name]):8.1f} examples/s  (runs: "
            + ", ".join(f"{r:.1f}" for r in rates[name])
            + ")"
        )
    ratio = statistics.median(rates["fast"]) / statistics.median(rates["slow"])
    print(f"  fast/slow throughput ratio: {ratio:.2f}x; prediction agreement {agree:.3f}")


if __name__ == "__main__":
    main()
