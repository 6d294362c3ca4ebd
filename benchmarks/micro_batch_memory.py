"""Peak memory and step time of a many-candidate batch, whole against micro-batched.

Banking77 on smollm2-135m: every query has 77 multi-token intent candidates, so a batch of B
queries is 77·B rows in one scoring pass (B = 8 was killed by the OOM killer at 24 GB). Each arm
is one ``gradguide.train`` run of ``--steps`` steps in a fresh process of its own (the allocator
keeps freed pages, so a peak is only clean in a process no other arm used), evaluated on two
test queries; its record gives the peak resident memory (VmHWM) and the step seconds. Arms:
LoRA and LoRA + SGG (fd HVP), with ``micro_batch_tokens`` 0 (the whole batch in one pass) and
the default budget. Ratios are to the whole batch of the same method.

    .venv/bin/python benchmarks/micro_batch_memory.py [--batch 2] [--steps 2] [--budget 4096]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

from gradguide.train import GuidanceConfig, OptimConfig, TrainConfig, train


def child(method: str, budget: int, batch: int, steps: int) -> dict[str, float]:
    """One arm's run; its peak memory, median step seconds and the objective's facts."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            model="smollm2-135m",
            task="banking77",
            method="lora",
            shots=32,
            seed=1,
            out=out,
            eval_limit=2,
            micro_batch_tokens=budget,
            optim=OptimConfig(steps=steps, batch_size=batch),
            guidance=GuidanceConfig(use="sgg" if method == "lora+sgg" else ""),
        )
        record = train(config, show_progress=False).record
    seconds = [s for s in record["curves"]["step_seconds"] if s is not None]
    return {
        "peak_rss_mb": record["timings"]["peak_rss_mb"],
        "step_s": statistics.median(seconds),
        "batches_split": record["objective"].get("batches_split", 0),
        "largest_pass_tokens": record["objective"].get("largest_pass_tokens", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--budget", type=int, default=4096)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, budget = args.child
        print(json.dumps(child(method, int(budget), args.batch, args.steps)))
        return
    print(f"banking77, smollm2-135m, batch {args.batch} ({77 * args.batch} candidate rows)")
    print(f"{'arm':<28}{'peak RSS MiB':>14}{'ratio':>8}{'step s':>9}{'ratio':>8}{'split':>7}")
    for method in ("lora", "lora+sgg"):
        base: dict[str, float] | None = None
        for budget in (0, args.budget):
            cmd = [sys.executable, __file__, "--child", method, str(budget)]
            cmd += ["--batch", str(args.batch), "--steps", str(args.steps)]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            arm = json.loads(line.strip().splitlines()[-1])
            base = base or arm
            name = f"{method} {'whole' if budget == 0 else f'budget {budget}'}"
            print(
                f"{name:<28}{arm['peak_rss_mb']:>14.0f}"
                f"{arm['peak_rss_mb'] / base['peak_rss_mb']:>8.2f}{arm['step_s']:>9.1f}"
                f"{arm['step_s'] / base['step_s']:>8.2f}{int(arm['batches_split']):>7}",
                flush=True,
            )


if __name__ == "__main__":
    main()
