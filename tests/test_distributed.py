"""Data-parallel training: 2 gloo processes equal one process on the union of their batches."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_cli import tiny_train

TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
COMMON = tiny_train("--method", "lora", "--lr", "5e-3", "--seed", "1", batch_size=8)


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), so a kill reaches all of a run's ranks."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [c for c, p in parents.items() if p in frontier]
        found += children
        frontier = children
    return found


def _cmd(args: list[str], procs: int) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "gradguide", *args]
    return [TORCHRUN, "--standalone", f"--nproc_per_node={procs}", "-m", "gradguide", *args]


def _run(out: Path, *extra: str, procs: int = 1) -> dict[str, torch.Tensor]:
    args = [*COMMON, "--out", str(out), *extra]
    done = subprocess.run(_cmd(args, procs), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = [d for d in out.iterdir() if d.is_dir()]
    peft, own = (
        run / "adapter" / "adapter_model.safetensors",
        run / "adapter" / "trainable.safetensors",
    )
    return load_file(peft if peft.exists() else own)


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rel: float) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        diff = float((a[k] - b[k]).norm())
        assert diff <= rel * float(b[k].norm()) + 1e-8, (k, diff)


needs_torchrun = pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")


@needs_torchrun
@pytest.mark.parametrize(
    ("extra", "rel"),
    [
        ((), 1e-5),
        (("--guidance", "sgg-dir,sgg-mag", "--prior", "ema:0.9", "--hvp", "exact"), 1e-5),
        # the filter's U h(Λ) Uᵀ adds rounding that Adam's per-coordinate normalisation
        # magnifies in near-zero coordinates: measured 1.5e-5 relative on one LoRA B tensor
        (("--guidance", "spectral", "--set", "guidance.spectral.knn=3"), 5e-5),
        (("--method", "prompt", "--set", "method_options.prompt_tokens=4"), 1e-5),
        (("--method", "adapter"), 1e-5),
        # every weight: Adam's per-coordinate step magnifies rounding where the gradient is
        # near zero (embedding rows of tokens seen once); measured 4.4e-5 on embed_tokens
        (("--method", "full"), 2e-4),
        # OFA's token-averaged terms are weighted per rank by examples, not tokens (documented)
        (("--method", "ofa"), 1e-2),
    ],
    ids=["plain", "sgg", "spectral", "prompt", "adapter", "full", "ofa"],
)
def test_two_processes_match_one_on_the_union(tmp_path, extra, rel):
    one = _run(tmp_path / "one", *extra)
    two = _run(tmp_path / "two", *extra, procs=2)
    _assert_close(two, one, rel)
    if "sgg-dir,sgg-mag" in extra:  # the guidance really acted: the guided run is not plain
        plain = _run(tmp_path / "plain")
        assert any(not torch.allclose(plain[k], one[k], rtol=1e-3) for k in one)


@needs_torchrun
def test_killed_distributed_run_resumes_exactly(tmp_path):
    """SIGKILL a 2-process run after a checkpoint; torchrun --resume ends as the unbroken run."""
    args = [*COMMON, "--batch-size", "4", "--shots", "16", "--checkpoint-every", "3"]
    args[args.index("--steps") + 1] = "30"
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd([*args, "--out", str(out)], 2),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        states = list(out.glob("*/checkpoint/state.json"))
        try:
            if states and json.loads(states[0].read_text())["step"] >= 3:
                break
        except (ValueError, OSError):
            pass
        time.sleep(0.01)
    ranks = _descendants(proc.pid)  # torchrun's workers live in process groups of their own
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    (run_dir,) = list(out.iterdir())
    assert not (run_dir / "record.json").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(
        _cmd(["train", "--resume", str(run_dir)], 2), env=ENV, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full = subprocess.run(
        _cmd([*args, "--out", str(tmp_path / "full")], 2), env=ENV, capture_output=True, text=True
    )
    assert full.returncode == 0, full.stderr[-3000:]
    a = json.loads((run_dir / "record.json").read_text())
    (full_dir,) = list((tmp_path / "full").iterdir())
    b = json.loads((full_dir / "record.json").read_text())
    assert a["curves"]["loss"] == b["curves"]["loss"] and len(a["curves"]["loss"]) == 30
    assert a["metrics"] == b["metrics"]


@needs_torchrun
def test_a_one_process_launch_takes_the_group_path_and_equals_a_plain_run(tmp_path):
    """torchrun with one process joins a process group (gloo here; NCCL on one GPU, the path
    tests/test_gpu.py takes there) whose sums are identities: the run equals a plain process's."""
    extra = ("--guidance", "sgg-dir,sgg-mag", "--prior", "ema:0.9")
    plain = _run(tmp_path / "plain", *extra)
    args = [*COMMON, *extra, "--out", str(tmp_path / "group")]
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=1", "-m", "gradguide", *args]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = [d for d in (tmp_path / "group").iterdir() if d.is_dir()]
    _assert_close(load_file(run / "adapter" / "adapter_model.safetensors"), plain, 1e-6)
    device = json.loads((run / "record.json").read_text())["device"]
    assert device["backend"] == "gloo" and device["world"] == 1
    (plain_run,) = [d for d in (tmp_path / "plain").iterdir() if d.is_dir()]
    assert json.loads((plain_run / "record.json").read_text())["device"]["backend"] is None
