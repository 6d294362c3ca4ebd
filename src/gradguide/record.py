"""Run records: the self-describing JSON every run writes (config, seed, versions, data, metrics).

The report reads these and nothing else, so everything a reader needs to trust a number is here.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import os
import platform
import re
import resource
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gradguide.atomic import write_json_atomic
from gradguide.config import to_dict
from gradguide.device import describe, peak_memory_mb
from gradguide.errors import GradguideError
from gradguide.metrics import dynamics_summary, majority_accuracy

if TYPE_CHECKING:
    from gradguide.distributed import DistContext
    from gradguide.fit import Fitted
    from gradguide.methods import Adapted
    from gradguide.models import LoadedModel
    from gradguide.tasks.base import Instance
    from gradguide.train_config import TrainConfig
    from gradguide.train_data import RunData

PACKAGES = (
    "gradguide",
    "torch",
    "transformers",
    "peft",
    "gguf",
    "safetensors",
    "numpy",
    "scipy",
    "accelerate",
)
RECORD_NAME = "record.json"


@functools.cache
def _git_commit() -> str | None:
    """The commit (``-dirty`` when tracked files differ) of the checkout this process runs from,
    read once: a long grid keeps the code it imported while the checkout moves on, so later
    reads would name code that never ran in it."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    suffix = "-dirty" if dirty.stdout.strip() else ""
    return out.stdout.strip() + suffix


def environment() -> dict[str, Any]:
    """Package versions, interpreter, machine, threads and load: what reproduces a number."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # 1/5/15-minute load when the record is written: whether the run's timings shared cores
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "packages": versions,
        "git_commit": _git_commit(),
    }


def reset_peak_rss() -> bool:
    """Start a new resident-memory high-water mark for this process (Linux); False if unsupported.

    Runs of one in-process grid share a process, whose lifetime peak would otherwise be every
    later run's "peak"."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident memory in MiB since the last :func:`reset_peak_rss` (Linux's VmHWM), else
    the process's lifetime peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def new_run_dir(root: str | Path, name: str) -> Path:
    """Create a fresh, uniquely named run directory under ``root`` (never reuses one)."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"
    base = Path(root)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GradguideError(f"cannot create output directory: {e.strerror}", file=base) from None
    for k in range(1000):
        path = base / f"{stamp}-{slug}" if k == 0 else base / f"{stamp}-{slug}-{k}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise GradguideError(f"cannot create run directory: {e.strerror}", file=path) from None
    raise GradguideError("could not find a free run directory name", file=base)


def write_record(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record.json`` atomically into the run directory."""
    path = Path(run_dir) / RECORD_NAME
    write_json_atomic(path, record)
    return path


def train_record(
    *,
    config: TrainConfig,
    lm: LoadedModel,
    data: RunData,
    demos: Sequence[Instance],
    adapted: Adapted | None,
    fit: Fitted,
    metrics: dict[str, float],
    facts: dict[str, Any],
    diagnostics: Any,
    started: float,
    load_s: float,
    dist: DistContext,
    own_peak: bool,
) -> dict[str, Any]:
    """A training run's record: its settings, environment, data, curves, metrics and timings.

    ``facts`` are the evaluation's (its ``seconds`` go to the timings); ``started`` is the
    run's ``time.perf_counter()`` at its start, ``own_peak`` whether the resident-memory peak
    could be reset for it.
    """
    device = dist.device
    return {
        "kind": "train",
        "method": config.method,
        "config": to_dict(config),
        "seed": config.seed,
        "environment": environment(),
        "model": {"name": lm.name, "kind": lm.kind, **lm.info},
        "task": {
            "name": data.task.name,
            "suite": data.task.suite,
            "template": data.task.template,
            "verbalizer": dict(data.task.verbalizer),
            "metrics": list(data.task.metrics),
            "data_root": str(data.data_root) if data.data_root else None,
        },
        "data": {
            "train_split": data.task.train_split,
            "train_ids": [x.id for x in data.train],
            # a cross-validation run scores the held-out fold of its own k shots
            "eval_split": (
                f"{data.task.train_split} (fold {config.cv_fold} of {config.cv_folds} of the shots)"
                if config.cv_folds
                else config.eval_split or data.task.eval_split
            ),
            "eval_size": len(data.eval),
            "eval_majority": majority_accuracy(data.eval),
            "eval_ids": [x.id for x in data.eval],
            "demonstration_ids": [x.id for x in demos],
        },
        "trainable_parameters": adapted.n_trainable() if adapted is not None else 0,
        "objective": fit.objective,
        "steps": fit.steps,
        "skipped_steps": fit.skipped,
        "curves": fit.curves,
        "dynamics": dynamics_summary(fit.curves) if adapted is not None else None,
        "guidance": fit.guidance,
        "scoring": scoring_section(config.scoring, facts),
        "metrics": metrics,
        "predictions": facts["label_counts"],
        "layer_diagnostics": diagnostics,
        "timings": {
            "model_load_s": load_s,
            "train_s": fit.train_s,
            "step_s_median": _median(fit.curves["step_seconds"]),
            "eval_s": facts["seconds"],
            # a resumed run's wall time counts the training of its earlier sessions too
            "total_s": time.perf_counter() - started + fit.carried_s,
            "resumed_at_step": fit.resumed_at,
            "peak_rss_mb": peak_rss_mb(),
            "peak_device_mb": peak_memory_mb(device),
        },
        "device": {
            **describe(device, lm.info["dtype"], config.bf16),
            "world": dist.world,
            "backend": dist.backend,  # the process group's (None: not launched distributed)
        },
        # "run": the peak of this run alone; "process": of its whole process (earlier runs too)
        "peak_rss_scope": "run" if own_peak else "process",
    }


def scoring_section(options: Any, facts: dict[str, Any]) -> dict[str, Any]:
    """A record's ``scoring``: the scoring options, and the evaluation's facts that describe how
    it scored (its seconds go to the timings, its label counts to ``predictions``)."""
    return {
        **to_dict(options),
        **{k: v for k, v in facts.items() if k not in ("seconds", "label_counts")},
    }


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None
