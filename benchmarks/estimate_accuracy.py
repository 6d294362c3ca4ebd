"""How far the run-time formula (gradguide.bench.estimate) is from the archived runs' wall times.

For every archived run with a recorded wall time, the formula estimate with and without the
scoring path (gradguide.bench.workload: one pass, one row per candidate, the prefix cache) is set
against what the run measured. Printed per (model, task): the median measured/formula ratio of
each, and over all runs the spread of log2(ratio): a formula that knows the paths has ratios
closer to each other (the stored-run calibration then carries less).

    python benchmarks/estimate_accuracy.py [results] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path

from gradguide.bench.checks import check_data
from gradguide.bench.estimate import estimate_config_seconds
from gradguide.bench.spec import GridRun
from gradguide.bench.workload import TaskText
from gradguide.config import from_dict
from gradguide.train_config import TrainConfig


def main() -> None:
    """Print the formula's ratios to the archived wall times, path-blind against path-aware."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="?", default="results")
    p.add_argument("--model", default=None, help="only this model's runs")
    a = p.parse_args()
    runs: list[tuple[GridRun, float]] = []
    for line in (Path(a.results) / "rows.jsonl").read_text().splitlines():
        row = json.loads(line)
        if not row.get("wall_s") or (a.model and row["model"] != a.model):
            continue
        try:
            config = from_dict(TrainConfig, row["config"])
        except Exception:  # a row from an older config schema
            continue
        runs.append((GridRun(len(runs), row["key"], config, {}), float(row["wall_s"])))
    aware = check_data([r for r, _ in runs], a.results, tokenizers=True)
    blind = dataclasses.replace(  # the formula before the paths: prompt + longest candidate
        aware, texts={t: (_longest(p), _longest(e)) for t, (p, e) in aware.texts.items()}
    )
    for problem in aware.problems:
        print(f"warning: {problem}")
    ratios: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for run, wall in runs:
        if run.config.task not in aware.texts:
            continue
        pair = ratios.setdefault((run.config.model, run.config.task), ([], []))
        for i, data in enumerate((blind, aware)):
            pair[i].append(wall / estimate_config_seconds(run.config, data))
    print(f"{'model':14} {'task':22} {'runs':>5} {'one pass':>8} {'blind':>7} {'aware':>7}")
    by_model: dict[str, tuple[list[float], list[float]]] = {}
    for (model, task), (b, w) in sorted(ratios.items()):
        one = aware.one_pass.get((model, task))
        shown = "?" if one is None else ("yes" if one else "no")
        print(
            f"{model:14} {task:22} {len(b):5d} {shown:>8} "
            f"{statistics.median(b):7.2f} {statistics.median(w):7.2f}"
        )
        every = by_model.setdefault(model, ([], []))
        every[0].extend(b)
        every[1].extend(w)
    for model, every in by_model.items():
        for name, values in zip(("blind", "aware"), every, strict=True):
            logs = [math.log2(v) for v in values]
            spread = statistics.pstdev(logs)
            print(
                f"{model} {name}: {len(values)} runs, median ratio "
                f"{statistics.median(values):.2f}, spread of log2(ratio) {spread:.2f} "
                f"(x{2**spread:.2f})"
            )


def _longest(text: TaskText) -> TaskText:
    """``text`` read as one pass of prompt and longest candidate, whatever the path."""
    return TaskText(*[text.longest] * 5, candidates=1.0)


if __name__ == "__main__":
    main()
