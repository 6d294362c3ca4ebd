"""GPU checks: CPU and CUDA agree, a resume on CUDA is exact, bf16 runs stay finite, NCCL works.

Marked ``gpu`` and skipped where PyTorch sees no CUDA GPU; ``benchmarks/gpu_check.sh`` runs them
on one. ``GRADGUIDE_GPU_TEST_DEVICE=cpu`` runs them against the CPU instead (a dry run of the
tests themselves on a machine without a GPU: every comparison is then CPU against CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (before CUDA)

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny_runs import tiny_config

from gradguide import fit as fit_mod
from gradguide import train as train_mod
from gradguide.guidance.engine import GuidedGradient
from gradguide.guidance.hvp import flat
from gradguide.guidance.ofa import OfaOptions, OfaSharpness, OfaStepRatio
from gradguide.guidance.priors import FixedPrior
from gradguide.guidance.sgg import DirectionPenalty, MagnitudePenalty
from gradguide.guidance.spectral import SpectralGraphs, SpectralOptions
from gradguide.methods import MethodOptions, get_method
from gradguide.models import load_model
from gradguide.scoring import candidate_scores
from gradguide.tasks import get_task
from gradguide.train import GuidanceConfig, OptimConfig, TrainConfig, train

DEVICE = torch.device(os.environ.get("GRADGUIDE_GPU_TEST_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE.type == "cuda" and not torch.cuda.is_available(),
        reason="needs a CUDA GPU (PyTorch sees none; GRADGUIDE_GPU_TEST_DEVICE=cpu dry-runs it)",
    ),
]
CPU = torch.device("cpu")
REL = 1e-4  # CPU against CUDA in fp32
#: the finite difference divides the devices' rounding (~1e-7 of g) by its step ε ~ 1e-4:
#: fd agrees with the exact HVP only to ~5e-3 on one device (test_sgg)
REL_FD = 2e-3
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")


@pytest.fixture(autouse=True)
def deterministic():
    """Deterministic kernels where PyTorch has them (warn, not fail, where it has none)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="module")
def batch():
    return get_task("demo-sentiment").load("train")[:4]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖, both taken on the CPU."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def adapted_on(device: torch.device, method: str = "lora", attn: str | None = None):
    """tiny-llama with ``method`` applied on the CPU (same seeds, same values), then moved."""
    lm = load_model("tiny-llama", seed=0, attn_implementation=attn)
    torch.manual_seed(0)
    adapted = get_method(method).apply(lm, MethodOptions(lora_r=4))
    with torch.no_grad():  # LoRA B off zero, so every LoRA parameter has a gradient
        gen = torch.Generator().manual_seed(1)
        for name, p in adapted.trainable.items():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    lm.model.to(device)
    return adapted.as_lm(lm), adapted


def closure(lm, batch):
    def loss() -> torch.Tensor:
        scores = candidate_scores(lm, batch)
        gold = torch.tensor([x.gold for x in batch], device=scores.device)
        return F.cross_entropy(scores, gold)

    return loss


def tiny(tmp_path: Path, **kw) -> TrainConfig:
    kw = {
        "method": "lora",
        "device": str(DEVICE),
        "optim": OptimConfig(steps=6, batch_size=4, lr=5e-3),
        **kw,
    }
    return tiny_config(tmp_path, **kw)


# --------------------------------------------------------------------------------------------
# CPU and CUDA compute the same numbers (fp32)


@pytest.mark.parametrize("mode", ["plain", "exact", "fd"])
def test_loss_gradient_and_guided_gradient_agree_across_devices(batch, mode):
    out = {}
    for device in (CPU, DEVICE):
        lm, adapted = adapted_on(device)
        params = list(adapted.trainable.values())
        assert {p.device.type for p in params} == {device.type}
        n = sum(p.numel() for p in params)
        prior = torch.linspace(-1.0, 1.0, n, device=device)
        penalties = [] if mode == "plain" else [DirectionPenalty(0.7), MagnitudePenalty(0.3, 0.05)]
        engine = GuidedGradient(
            penalties, hvp="exact" if mode == "plain" else mode, prior=FixedPrior(prior, "t")
        )
        stats = engine.backward(closure(lm, batch), params, 0)
        out[device.type] = (stats, flat([p.grad for p in params], params))
    (cpu, g_cpu), (dev, g_dev) = out[CPU.type], out[DEVICE.type]
    assert g_dev.device.type == DEVICE.type
    assert dev.loss == pytest.approx(cpu.loss, rel=REL)
    assert dev.grad_norm == pytest.approx(cpu.grad_norm, rel=REL)
    assert rel(g_dev, g_cpu) < (REL_FD if mode == "fd" else REL)
    if mode != "plain":
        assert dev.penalty_applied and abs(cpu.guided_norm / cpu.grad_norm - 1) > 1e-3


def test_exact_hvp_on_sdpa_equals_eager_attention_on_the_device(batch):
    """The engine runs an exact step on SDPA's math kernel (the fused ones, flash and
    memory-efficient, have no double backward): same result as eager attention."""
    grads = []
    for attn in ("eager", "sdpa"):
        lm, adapted = adapted_on(DEVICE, attn=attn)
        params = list(adapted.trainable.values())
        prior = torch.linspace(-1.0, 1.0, sum(p.numel() for p in params), device=DEVICE)
        engine = GuidedGradient([DirectionPenalty(0.7)], hvp="exact", prior=FixedPrior(prior, "t"))
        engine.backward(closure(lm, batch), params, 0)
        grads.append(flat([p.grad for p in params], params))
    assert rel(grads[1], grads[0]) < 1e-5


def test_ofa_terms_agree_across_devices(batch):
    out = {}
    options = OfaOptions(lambda_step=1.0, lambda_sharp=1.0, probes=2)
    for device in (CPU, DEVICE):
        lm, adapted = adapted_on(device, "layernorm")
        params = list(adapted.trainable.values())
        ratio = OfaStepRatio(lm.model, options, seed=0)
        sharp = OfaSharpness(lm.model, options, seed=0)
        candidate_scores(lm, batch)
        (p,) = sharp.capture.take()
        j = ratio.value(ratio.capture.take())
        # the same probes on both devices: drawn on the CPU from one seed, then moved
        # per-block signed values (the penalty keeps their positive parts: could be all zero)
        s = sharp.layer_values([p], torch.Generator().manual_seed(5))
        grads = torch.autograd.grad(j + s.sum(), params, allow_unused=True)
        out[device.type] = (j.detach(), s.detach(), flat(grads, params))
        # a training step draws its probes on the model's device
        sharp.begin_step(0)
        candidate_scores(lm, batch)
        assert torch.isfinite(sharp.loss({})).all()
        ratio.close()
        sharp.close()
    (j0, s0, g0), (j1, s1, g1) = out[CPU.type], out[DEVICE.type]
    assert float(j1) == pytest.approx(float(j0), rel=REL)
    assert rel(s1, s0) < REL
    assert rel(g1, g0) < REL


def test_spectral_terms_agree_across_devices(batch):
    out = {}
    for device in (CPU, DEVICE):
        lm, adapted = adapted_on(device)
        graphs = SpectralGraphs.build(
            adapted.model, adapted.trainable, "lora", SpectralOptions(knn=3)
        )
        e = graphs.entries[0]
        assert e.graph.eigenvectors.device.type == device.type
        assert e.graph.eigenvectors.dtype == torch.float32
        params = list(adapted.trainable.values())
        energy = graphs.energy(adapted.trainable)
        loss = closure(lm, batch)() + 0.1 * energy
        loss.backward()
        graphs.filter_(adapted.trainable)  # the filter edits the gradients in place
        out[device.type] = (energy.detach(), flat([p.grad for p in params], params))
    (e0, g0), (e1, g1) = out[CPU.type], out[DEVICE.type]
    assert float(e1) == pytest.approx(float(e0), rel=REL)
    assert rel(g1, g0) < REL


# --------------------------------------------------------------------------------------------
# Whole runs on the device


def test_a_run_on_the_device_keeps_every_tensor_there_and_records_it(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The film was long.\nThe answer is yes.\nA kettle boils water.\n")
    r = train(
        tiny(
            tmp_path / "a",
            guidance=GuidanceConfig(use="sgg", hvp="exact", prior_corpus=str(corpus)),
        ),
        show_progress=False,
    )
    assert {p.device.type for p in r.adapted.trainable.values()} == {DEVICE.type}
    rec = r.record
    assert rec["device"]["type"] == DEVICE.type and rec["guidance"]["prior"] == "pretrain"
    assert all(c is not None for c in rec["curves"]["cos_prior"])
    if DEVICE.type == "cuda":
        assert rec["timings"]["peak_device_mb"] > 0 and rec["device"]["name"]
    # the saved prior reloads onto the device (file prior), and a run's mean gradient as a source
    prior_file = r.run_dir / "prior.safetensors"
    again = train(
        tiny(
            tmp_path / "b",
            guidance=GuidanceConfig(
                use="sgg", hvp="fd", prior=f"file:{prior_file}", source_run=str(r.run_dir)
            ),
        ),
        show_progress=False,
    )
    assert again.record["skipped_steps"] == [] and again.record["guidance"]["source"]


def test_a_killed_run_resumes_exactly_on_the_device(tmp_path, monkeypatch):
    """Interrupted after its first checkpoint and resumed: the numbers of the unbroken run. LoRA
    dropout draws from the device's generator, so its state must travel in the checkpoint."""
    cfg = tiny(
        tmp_path,
        checkpoint_every=2,
        method_options=MethodOptions(lora_r=4, lora_dropout=0.1),
        guidance=GuidanceConfig(use="sgg-dir,sgg-mag", hvp="exact", prior="ema:0.5"),
    )
    full = train(cfg, show_progress=False).record
    real = fit_mod.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(fit_mod, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(cfg, show_progress=False)
    monkeypatch.undo()
    (run_dir,) = [d for d in tmp_path.iterdir() if not (d / "record.json").exists()]
    torch.manual_seed(123)  # the process's random state moved on: the checkpoint must restore it
    if DEVICE.type == "cuda":
        torch.cuda.manual_seed_all(123)
    resumed = train(train_mod.load_run_config(run_dir), resume=run_dir, show_progress=False)
    a = resumed.record
    assert a["timings"]["resumed_at_step"] == 2
    for key in ("loss", "grad_norm", "guided_norm", "cos_prev"):
        assert a["curves"][key] == full["curves"][key], key
    assert a["metrics"] == full["metrics"]


@pytest.mark.parametrize(
    "settings",
    [
        {"dtype": "bf16", "guidance": GuidanceConfig(use="sgg", hvp="exact", prior="ema:0.5")},
        {"bf16": True, "guidance": GuidanceConfig(use="sgg", hvp="exact", prior="ema:0.5")},
        {"dtype": "bf16", "method": "ofa", "guidance": GuidanceConfig(ofa=OfaOptions(jvp="exact"))},
        {"bf16": True, "method": "ofa"},
        {"dtype": "bf16", "method": "full", "guidance": GuidanceConfig(use="spectral")},
    ],
    ids=["bf16-sgg", "autocast-sgg", "bf16-ofa-exact", "autocast-ofa-fd", "bf16-spectral"],
)
def test_bf16_runs_are_finite_at_every_step(tmp_path, settings):
    r = train(tiny(tmp_path, **settings), show_progress=False)
    rec = r.record
    assert rec["skipped_steps"] == []
    assert all(v is not None for v in rec["curves"]["loss"] + rec["curves"]["grad_norm"])
    assert rec["device"]["dtype"] == ("bfloat16" if "dtype" in settings else "float32")
    assert rec["device"]["autocast"] == ("bf16" if settings.get("bf16") else None)


@pytest.mark.parametrize("hvp", ["fd", "exact"])
def test_gradient_checkpointing_changes_no_number_on_the_device(tmp_path, hvp):
    guidance = GuidanceConfig(use="sgg", hvp=hvp, prior="ema:0.5")
    curves = [
        train(
            tiny(tmp_path / str(ck), guidance=guidance, gradient_checkpointing=ck),
            show_progress=False,
        ).record["curves"]
        for ck in (False, True)
    ]
    for key in ("loss", "grad_norm", "guided_norm"):
        assert curves[1][key] == pytest.approx(curves[0][key], rel=1e-5), key


RUN_SCRIPT = """
import sys
from gradguide.train import GuidanceConfig, OptimConfig, TrainConfig, train
from gradguide.distributed import finish
config = TrainConfig(
    model="tiny-llama", task="demo-sentiment", shots=8, method="lora", seed=1, out=sys.argv[1],
    device="auto", optim=OptimConfig(steps=3, batch_size=8, lr=5e-3),
    guidance=GuidanceConfig(use="sgg-dir,sgg-mag", prior="ema:0.9", hvp="exact"),
)
train(config, show_progress=False)
finish()
"""


@pytest.mark.skipif(not Path(TORCHRUN).exists(), reason="torchrun not installed")
def test_one_device_through_the_distributed_path(tmp_path):
    """torchrun with one process: NCCL on a GPU (gloo on the CPU dry run), rank 0 on cuda:0,
    every sum an all-reduce on the device; the same adapter as a plain run on the device. (A
    script, not the CLI, so that only the training path's packages are needed.)"""
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if DEVICE.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run: auto is the CPU
    runs = {}
    for name, launcher in (
        ("plain", [sys.executable]),
        ("group", [TORCHRUN, "--standalone", "--nproc_per_node=1"]),
    ):
        out = tmp_path / name
        done = subprocess.run(
            [*launcher, str(script), str(out)], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        (run,) = [d for d in out.iterdir() if d.is_dir()]
        runs[name] = (
            load_file(run / "adapter" / "adapter_model.safetensors"),
            json.loads((run / "record.json").read_text())["device"],
        )
    (plain, plain_dev), (group, group_dev) = runs["plain"], runs["group"]
    assert group_dev["backend"] == ("nccl" if DEVICE.type == "cuda" else "gloo")
    assert group_dev["type"] == plain_dev["type"] == DEVICE.type and plain_dev["backend"] is None
    for k in plain:
        assert rel(group[k], plain[k]) < 1e-5, k
