"""Checkpoints: the trainable tensors, optimiser, scheduler, RNG states and loop state of a run.

A checkpoint is a directory built aside and renamed into place whole (gradguide.atomic), with a
manifest of checksums; a damaged one is reported, never loaded. Optimiser state is read back with
``torch.load(weights_only=True)`` onto the CPU (the optimiser moves it to its parameters' device).
Files hold CPU tensors, so a checkpoint resumes on another device; the random state of every
CUDA device is saved beside the CPU's, so a GPU run resumes exactly where the device is the same.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gradguide.atomic import publish_dir, verify_manifest, write_json_atomic, write_manifest
from gradguide.errors import GradguideError
from gradguide.methods import Adapted

CHECKPOINT_NAME = "checkpoint"
EXTRA_NAME = "guidance.safetensors"


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(
    run_dir: Path,
    adapted: Adapted,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the resumable state atomically (a directory swapped in whole, with checksums)."""

    def build(tmp: Path) -> None:
        if extra:
            save_file({k: v.cpu().contiguous() for k, v in extra.items()}, str(tmp / EXTRA_NAME))
        tensors = {k: p.detach().cpu().contiguous() for k, p in adapted.trainable.items()}
        save_file(tensors, str(tmp / "trainable.safetensors"))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
            },
            tmp / "optimizer.pt",
        )
        write_json_atomic(tmp / "state.json", state)
        write_manifest(tmp)

    publish_dir(run_dir / CHECKPOINT_NAME, build, replace=True)


def load_checkpoint(
    run_dir: Path, adapted: Adapted, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore a checkpoint written by ``save_checkpoint`` after verifying every checksum."""
    path = run_dir / CHECKPOINT_NAME
    if not path.is_dir():
        raise GradguideError("no checkpoint to resume from (the run saved none yet)", file=path)
    problem = verify_manifest(path)
    if problem:
        raise GradguideError(f"checkpoint is damaged: {problem}; it was not loaded", file=path)
    tensors = load_file(str(path / "trainable.safetensors"))
    if set(tensors) != set(adapted.trainable):
        raise GradguideError("checkpoint tensors do not match this run's method", file=path)
    with torch.no_grad():
        for name, p in adapted.trainable.items():
            p.copy_(tensors[name])
    extra = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    _set_rng_state(extra["rng"])
    state: dict[str, Any] = json.loads((path / "state.json").read_text())
    return state


def load_extra(run_dir: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The extra tensors a checkpoint was saved with, on ``device`` (empty when there are none)."""
    path = run_dir / CHECKPOINT_NAME / EXTRA_NAME
    tensors = load_file(str(path), device=str(device)) if path.exists() else {}
    # fresh memory: a reduction over a tensor read from the file can round differently (the first
    # cos_prev after a resume differed by 3e-7), so the resume would not be exact
    return {k: v.clone() for k, v in tensors.items()}


def remove_checkpoint(run_dir: Path) -> None:
    """Delete a finished run's checkpoint (renamed aside first: no half-deleted one is resumed)."""
    path = run_dir / CHECKPOINT_NAME
    if not path.exists():
        return
    trash = run_dir / f".{CHECKPOINT_NAME}.old-{os.getpid()}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
