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
import subprocess
from pathlib import Path
from typing import Any

import torch

from gradguide.atomic import write_json_atomic
from gradguide.errors import GradguideError

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
