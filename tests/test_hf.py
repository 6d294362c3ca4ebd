"""GuidedTrainer (the Hugging Face integration): data parallel, non-finite steps, precision."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_trainer_worker import trainer_for
from safetensors.torch import load_file
from transformers import TrainerCallback

from gradguide.errors import GradguideError
from gradguide.guidance.hf import GuidedTrainer

WORKER = Path(__file__).with_name("hf_trainer_worker.py")
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(out: Path, procs: int) -> None:
    """The worker in one process on the whole batch of 8, or in ``procs`` taking 8 // procs."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([SRC, str(WORKER.parent), os.environ.get("PYTHONPATH", "")]),
    }
    args = [str(WORKER), str(out), str(8 // procs)]
    cmd = (
        [sys.executable, *args]
        if procs == 1
        else [TORCHRUN, "--standalone", f"--nproc_per_node={procs}", *args]
    )
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
def test_two_gloo_processes_take_the_single_process_step(tmp_path):
    """DDP never sees autograd.grad's gradients: without the trainer's own reduce each rank
    would step on its half-batch guided gradient (and the ranks drift apart)."""
    _run(tmp_path / "one", 1)
    _run(tmp_path / "two", 2)
    one = load_file(tmp_path / "one" / "rank0.safetensors")
    ranks = [load_file(tmp_path / "two" / f"rank{r}.safetensors") for r in (0, 1)]
    assert one.keys() == ranks[0].keys() == ranks[1].keys() and one
    for k in one:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        assert float((ranks[0][k] - one[k]).norm()) <= 1e-5 * float(one[k].norm()), k
    logs = [json.loads((tmp_path / d / "rank0.json").read_text()) for d in ("one", "two")]
    assert logs[1]["wrapper"] == "DistributedDataParallel"  # the set-up really was DDP
    for a, b in zip(logs[0]["log"], logs[1]["log"], strict=True):  # global loss and gradient
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    first = logs[0]["log"][0]  # the penalty acted: the guided gradient is not the task gradient
    assert abs(first["guided_norm"] - first["grad_norm"]) > 0.1 * first["grad_norm"]


class PoisonedTrainer(GuidedTrainer):
    """A loss that is NaN at step 1."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return loss * float("nan") if self.state.global_step == 1 else loss


class Snapshot(TrainerCallback):
    """The parameters after each optimiser step."""

    def __init__(self) -> None:
        self.params: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.params.append(
            {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        )


def test_a_non_finite_step_moves_no_weight(tmp_path):
    """AdamW with momentum and weight decay moves weights even on a zero gradient: a skipped
    step must leave them (and the optimiser's state) exactly as they were."""
    trainer = trainer_for(tmp_path, 4, steps=3, trainer_class=PoisonedTrainer)
    snap = Snapshot()
    trainer.add_callback(snap)
    trainer.train()
    assert [s.finite for s in trainer.guidance_log] == [True, False, True]
    after_first, after_poisoned, after_third = snap.params
    for name, p in after_first.items():
        assert torch.equal(after_poisoned[name], p), name
        assert not torch.equal(after_third[name], p), name  # training goes on after it
    optimizer = trainer.optimizer.optimizer  # accelerate's wrapper around torch's AdamW
    assert {int(s["step"]) for s in optimizer.state.values()} == {2}  # two real steps


def test_precisions_that_would_be_wrong_are_refused(tmp_path):
    with pytest.raises(GradguideError, match="scaler"):
        trainer_for(tmp_path, 4, fp16=True)
    # bf16 autocast sits inside the model's forward, out of the fd HVP's reach
    with pytest.raises(GradguideError, match="hvp='exact'"):
        trainer_for(tmp_path, 4, bf16=True, hvp="fd")
    assert trainer_for(tmp_path, 4, bf16=True).guidance.hvp == "exact"  # exact HVP: allowed
