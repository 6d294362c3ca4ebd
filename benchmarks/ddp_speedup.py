"""Data-parallel speed-up: median LoRA step time of 1 process vs N gloo processes (torchrun).

Each arm is a real ``gradguide train`` run (one thread per process) on the same global batch;
arms alternate, ``--repeats`` times each, and the ratio of the median step times is printed.
A step here is forward + backward of the global batch + the all-reduce + AdamW.

    .venv/bin/python benchmarks/ddp_speedup.py [--model smollm2-135m] [--steps 8] [--procs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _run(args: list[str], procs: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    base = [*args, "--out", str(out)]
    if procs == 1:
        cmd = [sys.executable, "-m", "gradguide", *base]
    else:
        torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
        cmd = [torchrun, "--standalone", f"--nproc_per_node={procs}", "-m", "gradguide", *base]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    (run,) = list(out.iterdir())
    return json.loads((run / "record.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--shots", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    args = [
        "train",
        "--model",
        a.model,
        "--task",
        a.task,
        "--method",
        "lora",
        "--shots",
        str(a.shots),
        "--steps",
        str(a.steps),
        "--batch-size",
        str(a.batch_size),
        "--eval-limit",
        "8",
        "--set",
        "guidance.measure_alignment=false",
    ]
    steps: dict[int, list[float]] = {1: [], a.procs: []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats):
            for procs in steps:
                record = _run(args, procs, Path(tmp) / f"p{procs}-r{rep}")
                times = record["curves"]["step_seconds"][1:]  # the first step warms up
                steps[procs].extend(times)
    one, many = statistics.median(steps[1]), statistics.median(steps[a.procs])
    print(f"{a.model} lora, global batch {a.batch_size}, {a.steps} steps x {a.repeats} repeats")
    print(f"{'processes':>10} {'median step s':>14} {'speed-up':>9}")
    print(f"{1:>10} {one:>14.3f} {1.0:>9.2f}")
    print(f"{a.procs:>10} {many:>14.3f} {one / many:>9.2f}")


if __name__ == "__main__":
    main()
