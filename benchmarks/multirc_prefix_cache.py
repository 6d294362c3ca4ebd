"""MultiRC evaluation time with and without shared-prefix caching, side by side.

Loads smollm2-135m once and scores the answer options of the first ``--passages`` MultiRC
validation passages twice per round, with ``prefix_cache`` on (each passage, and each question
within it, encoded once) and off (every option re-encodes its passage), in the same process.
Prints each arm's seconds, the ratio, whether the two agree (predictions, largest score
difference, metrics), and each arm's time extrapolated to the whole validation set (953
questions, 4848 options) by the tokens that arm encodes there: seconds per encoded token of the
sample times the tokens of the whole set (the rows' tokens in full; with the cache, every shared
prefix once plus what each row adds to its own).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/multirc_prefix_cache.py [--passages 2]
                                       [--repeats 1] [--batch-size 16] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch

from gradguide.metrics import compute_metrics
from gradguide.models import load_model
from gradguide.prefix_tree import shared_prefix_tree
from gradguide.scoring import ScoringOptions, encode_causal, score_dataset
from gradguide.tasks import get_task, resolve_data_root
from gradguide.tasks.base import Instance


def encoded_tokens(lm: Any, xs: Sequence[Instance], options: ScoringOptions) -> int:
    """Tokens a forward pass encodes for ``xs`` (no padding): full rows, or with the cache."""
    enc = encode_causal(lm.tokenizer, xs, [], options)
    if not options.prefix_cache:
        return sum(len(r) for r in enc.rows)
    limits = [len(r) - c - 1 for r, c in zip(enc.rows, enc.completion_lens, strict=True)]
    tree = shared_prefix_tree(enc.rows, limits, options.prefix_min_tokens)
    total, stack = 0, [(tree, 0)]
    while stack:
        node, parent = stack.pop()
        total += node.length - parent + sum(len(enc.rows[k]) - node.length for k in node.rows)
        stack.extend((child, node.length) for child in node.children)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--passages", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    a = ap.parse_args()
    task = get_task("multirc")
    every = task.load(task.eval_split, resolve_data_root())
    passage_of = {x.id: (x.group or "").split("/")[0] for x in every}
    kept = list(dict.fromkeys(passage_of[x.id] for x in every))[: a.passages]
    xs = [x for x in every if passage_of[x.id] in kept]
    lm = load_model(a.model)
    arms = {
        "cached": ScoringOptions(batch_size=a.batch_size, prefix_cache=True),
        "full": ScoringOptions(batch_size=a.batch_size, prefix_cache=False),
    }
    score_dataset(lm, xs[:2], "", arms["cached"])  # warm-up
    seconds: dict[str, list[float]] = {k: [] for k in arms}
    cpu: dict[str, list[float]] = {k: [] for k in arms}
    scored: dict[str, Any] = {}
    for _ in range(a.repeats):
        for name, opts in arms.items():
            t0, c0 = time.perf_counter(), time.process_time()
            scored[name] = score_dataset(lm, xs, "", opts)
            seconds[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    questions = len({x.group for x in xs})
    print(
        f"model {a.model}, MultiRC val, first {len(kept)} passages ({questions} questions, "
        f"{len(xs)} options), batch {a.batch_size}, threads {torch.get_num_threads()}, "
        f"repeats {a.repeats}"
    )
    median = {k: statistics.median(v) for k, v in seconds.items()}
    median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    for name in arms:
        s = scored[name]
        metrics = compute_metrics(task.metrics, xs, s.predictions)
        print(
            f"  {name:<6} median {median[name]:7.1f} s wall, {median_cpu[name]:7.1f} s CPU  "
            f"({len(xs) / median[name]:5.2f} options/s; "
            f"runs: {', '.join(f'{t:.1f}' for t in seconds[name])}; "
            f"{s.shared_prefixes} shared prefixes; "
            + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + ")"
        )
    cached, full = scored["cached"], scored["full"]
    agree = sum(p == q for p, q in zip(cached.predictions, full.predictions, strict=True))
    diff = max(
        abs(u - v)
        for r, q in zip(cached.scores, full.scores, strict=True)
        for u, v in zip(r, q, strict=True)
    )
    print(
        f"  full/cached time ratio: {median['full'] / median['cached']:.2f}x wall, "
        f"{median_cpu['full'] / median_cpu['cached']:.2f}x CPU; predictions "
        f"agree on {agree}/{len(xs)}; largest score difference {diff:.2e}"
    )
    print(f"  extrapolated to the whole validation set ({len(every)} options):")
    for name, opts in arms.items():
        sample, whole = encoded_tokens(lm, xs, opts), encoded_tokens(lm, every, opts)
        hours, cpu_hours = (m[name] / sample * whole / 3600 for m in (median, median_cpu))
        print(
            f"    {name:<6} {hours:6.2f} h wall, {cpu_hours:6.2f} h CPU  ({whole} tokens encoded; "
            f"{sample} in the sample, {1000 * median[name] / sample:.2f} ms wall per token)"
        )


if __name__ == "__main__":
    main()
