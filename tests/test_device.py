"""Device settings and the device-correct paths, checked on the CPU (GPU checks: test_gpu.py).

Where a path must keep tensors on the model's device, the test puts the model (or a stub of it)
on PyTorch's "meta" device, which holds no data: a tensor left on the CPU shows up as a device
mismatch there, as it would on a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tiny_runs import tiny_config

from gradguide import device as device_mod
from gradguide import distributed
from gradguide import fit as fit_mod
from gradguide import train as train_mod
from gradguide.bench.grid import run_key
from gradguide.checkpoint import _rng_state, _set_rng_state
from gradguide.cli import main
from gradguide.device import (
    check_device_settings,
    double_backward_attention,
    enable_checkpointing,
    resolve_device,
)
from gradguide.errors import GradguideError
from gradguide.guidance.assembly import Guide
from gradguide.guidance.engine import GuidedGradient
from gradguide.guidance.hvp import exact_hvp, flat, norm_of
from gradguide.guidance.ofa import OfaOptions
from gradguide.guidance.priors import FixedPrior, lm_loss, load_vector, save_vector
from gradguide.guidance.sgg import DirectionPenalty, MagnitudePenalty
from gradguide.guidance.spectral import SpectralGraphs, SpectralOptions
from gradguide.methods import MethodOptions, get_method
from gradguide.models import load_model
from gradguide.scoring import candidate_scores
from gradguide.tasks import get_task
from gradguide.train import GuidanceConfig, OptimConfig, TrainConfig, train

META = torch.device("meta")


def tiny(tmp_path: Path, **kw) -> TrainConfig:
    kw = {
        "method": "lora",
        "optim": OptimConfig(steps=3, batch_size=4, lr=5e-3),
        **kw,
    }
    return tiny_config(tmp_path, **kw)


@pytest.fixture(scope="module")
def batch():
    return get_task("demo-sentiment").load("train")[:4]


# --------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"device": "gpu"}, "device"),
        ({"device": "cuda:x"}, "device"),
        ({"dtype": "fp16"}, "dtype"),
        # a finite difference in bf16 weights measures rounding, not curvature
        ({"dtype": "bf16", "guidance": GuidanceConfig(use="sgg-mag", hvp="fd")}, "dtype"),
        # the OFA sharpness' fd JVP on bf16 weights is rounding noise (measured 4.7x off)
        ({"dtype": "bf16", "method": "ofa"}, "guidance.ofa.jvp"),
        # measured: torch's CheckpointError (108 tensors saved in the forward, 31 in the replay)
        (
            {
                "method": "ofa",
                "gradient_checkpointing": True,
                "guidance": GuidanceConfig(ofa=OfaOptions(jvp="exact")),
            },
            "gradient_checkpointing",
        ),
    ],
)
def test_impossible_device_settings_are_refused_before_anything_is_written(
    tmp_path, overrides, field
):
    with pytest.raises(GradguideError) as e:
        train(tiny(tmp_path, **overrides), show_progress=False)
    assert e.value.field == field
    assert not any(tmp_path.iterdir())


def test_possible_combinations_pass_the_check(tmp_path):
    for overrides in (
        {"dtype": "bf16", "guidance": GuidanceConfig(use="sgg-mag", hvp="exact")},
        {"dtype": "bf16", "guidance": GuidanceConfig(use="spectral")},
        {"gradient_checkpointing": True, "guidance": GuidanceConfig(use="sgg", hvp="exact")},
        {"gradient_checkpointing": True, "method": "ofa"},  # fd JVP
        {"bf16": True, "method": "ofa"},  # autocast: the fd JVP's re-runs are in fp32
        {"dtype": "bf16", "method": "ofa", "guidance": GuidanceConfig(ofa=OfaOptions(jvp="exact"))},
        {"device": "cuda:3"},  # availability is the run's business, not the check's
    ):
        check_device_settings(tiny(tmp_path, **overrides))


def test_devices_resolve_or_say_why_not(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(GradguideError, match="no CUDA GPU") as e:
        resolve_device("cuda")
    assert e.value.field == "device"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0) == resolve_device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(GradguideError, match="2 CUDA device"):
        resolve_device("cuda:2")


def test_cli_device_flags_reach_the_config_and_a_bad_one_exits_2(tmp_path, capsys):
    from gradguide.cli import _train_overrides, build_parser

    a = build_parser().parse_args(
        ["train", "--device", "cuda:1", "--dtype", "bf16", "--gradient-checkpointing"]
    )
    o = _train_overrides(a)
    assert (o["device"], o["dtype"], o["gradient_checkpointing"]) == ("cuda:1", "bf16", True)
    args = ["train", "--model", "tiny-llama", "--task", "demo-sentiment", "--out", str(tmp_path)]
    assert main([*args, "--device", "tpu"]) == 2
    assert "field 'device'" in capsys.readouterr().err


def test_run_keys_ignore_where_a_run_computes_but_not_its_precision(tmp_path):
    base = tiny(tmp_path, guidance=GuidanceConfig(use="sgg"))
    same = dataclasses.replace(base, device="cuda:1", gradient_checkpointing=True)
    assert run_key(same) == run_key(base)
    assert run_key(dataclasses.replace(base, dtype="bf16")) != run_key(base)


def test_a_bf16_run_records_its_device_and_precision(tmp_path):
    r = train(
        tiny(tmp_path, dtype="bf16", guidance=GuidanceConfig(use="sgg-mag", hvp="exact")),
        show_progress=False,
    )
    rec = json.loads((r.run_dir / "record.json").read_text())
    assert rec["model"]["dtype"] == "bfloat16" and rec["config"]["dtype"] == "bf16"
    assert rec["device"]["type"] == "cpu" and rec["device"]["dtype"] == "bfloat16"
    assert rec["timings"]["peak_device_mb"] is None  # the CPU's peak is peak_rss_mb
    assert rec["skipped_steps"] == [] and all(x is not None for x in rec["curves"]["loss"])


def test_an_evaluation_records_its_device_and_both_memory_peaks(tmp_path):
    from gradguide.config import EvalConfig
    from gradguide.evaluate import evaluate

    config = EvalConfig(model="tiny-llama", task="demo-sentiment", limit=4, out=str(tmp_path))
    rec = evaluate(config, show_progress=False).record
    assert rec["device"]["type"] == "cpu" and rec["device"]["name"] == "cpu"
    assert rec["timings"]["peak_device_mb"] is None  # the CPU's peak is the resident memory's
    assert rec["timings"]["peak_rss_mb"] > 0 and rec["peak_rss_scope"] in ("run", "process")


# --------------------------------------------------------------------------------------------
# Tensors on the model's device


def test_load_model_puts_every_weight_on_the_device():
    lm = load_model("tiny-llama", seed=0, device="meta")
    assert {p.device for p in lm.model.parameters()} == {META}


class _MetaLM(torch.nn.Module):
    """A stub causal LM on the meta device that records the devices of its inputs."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(vocab, 4, device=META))
        self.seen: list[torch.device] = []

    def forward(self, input_ids, attention_mask, use_cache=False):
        self.seen += [input_ids.device, attention_mask.device]
        logits = input_ids.unsqueeze(-1).float() * self.weight.sum(-1)
        return SimpleNamespace(logits=logits)


def test_pretrain_prior_batches_go_to_the_models_device():
    lm = load_model("tiny-llama", seed=0)
    stub = _MetaLM(len(lm.tokenizer))
    fake = SimpleNamespace(model=stub, tokenizer=lm.tokenizer, name="stub", kind="causal")
    loss = lm_loss(fake, ["a first passage", "and a second, longer one"])
    assert stub.seen and set(stub.seen) == {META} and loss.device == META


def test_saved_vectors_load_onto_the_parameters_device(tmp_path):
    params = [torch.ones(2, 3), torch.ones(4)]
    save_vector(tmp_path / "v.safetensors", torch.arange(10.0), ["a", "b"], params)
    on_meta = [torch.empty(2, 3, device=META), torch.empty(4, device=META)]
    assert load_vector(tmp_path / "v.safetensors", ["a", "b"], on_meta).device == META
    back = load_vector(tmp_path / "v.safetensors", ["a", "b"], params)
    assert torch.equal(back, torch.arange(10.0))


def test_checkpoints_save_and_restore_the_cuda_random_states(monkeypatch):
    saved_cuda = [torch.tensor([1, 2, 3], dtype=torch.uint8)]
    restored: list[list[torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved_cuda)
    state = _rng_state()
    assert state["cuda"] is saved_cuda
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    _set_rng_state(state)
    assert restored == [saved_cuda]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # another machine: CPU state only
    _set_rng_state(state)
    assert len(restored) == 1


def test_resume_loads_the_guidance_state_onto_the_run_device(tmp_path, monkeypatch):
    cfg = tiny(
        tmp_path, checkpoint_every=1, keep_checkpoint=True, guidance=GuidanceConfig(prior="ema:0.5")
    )
    r = train(cfg, show_progress=False)
    seen: list[object] = []
    real = fit_mod.load_extra

    def spy(run_dir, device=None):
        seen.append(device)
        return real(run_dir, device or "cpu")

    monkeypatch.setattr(fit_mod, "load_extra", spy)
    monkeypatch.setattr(train_mod, "write_record", lambda *a: None)
    train(train_mod.load_run_config(r.run_dir), resume=r.run_dir, show_progress=False)
    assert seen == [torch.device("cpu")]  # the run's device, passed (not the default)


def test_an_interrupted_run_resumes_to_the_same_curves_bit_for_bit(tmp_path, monkeypatch):
    """Every curve, the measurements too: the first cos_prev after a resume read the tracker's
    memory straight from the file and rounded differently (3e-7) until it was copied."""
    cfg = tiny(
        tmp_path,
        checkpoint_every=2,
        method_options=MethodOptions(lora_r=4, lora_dropout=0.1),
        guidance=GuidanceConfig(use="sgg-dir,sgg-mag", hvp="exact", prior="ema:0.5"),
    )
    cfg.optim.steps = 6
    full = train(cfg, show_progress=False).record["curves"]
    real = fit_mod.save_checkpoint

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_mod, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, show_progress=False)
    monkeypatch.undo()
    (run_dir,) = [d for d in tmp_path.iterdir() if not (d / "record.json").exists()]
    resumed = train(train_mod.load_run_config(run_dir), resume=run_dir, show_progress=False)
    assert resumed.record["timings"]["resumed_at_step"] == 2
    for key, values in full.items():
        if key != "step_seconds":
            assert resumed.record["curves"][key] == values, key


def test_autocast_is_the_run_devices(monkeypatch):
    guide = Guide(
        engine=GuidedGradient(),
        info={},
        objective=None,  # type: ignore[arg-type]
        bf16=True,
        dist=distributed.DistContext(device=torch.device("cuda", 0)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU build of torch disables a CUDA autocast
        ctx = guide._autocast()
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    assert device_mod.autocast(torch.device("cpu"), True).device == "cpu"


# --------------------------------------------------------------------------------------------
# Distributed: NCCL ranks own their GPU, collectives run on it


def test_nccl_ranks_are_put_on_their_gpu_before_the_group_starts(monkeypatch):
    calls: list[tuple[str, object]] = []
    for k, v in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "x"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    dist = distributed.dist
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    ctx = distributed.init("auto")
    assert calls == [("set_device", torch.device("cuda", 1)), ("init", "nccl")]
    assert ctx.device == torch.device("cuda", 1) and ctx.active and ctx.backend == "nccl"
    calls.clear()
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    assert distributed.init("cpu").device == torch.device("cpu")
    assert calls == [("init", "gloo")]
    with pytest.raises(GradguideError, match="LOCAL_RANK"):
        distributed.init("cuda:0")


def test_a_one_process_launch_joins_a_group_and_a_plain_process_does_not(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    assert not distributed.init("cpu").active
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.init("cpu").active  # WORLD_SIZE alone is no launch


def test_sums_run_on_the_process_device(monkeypatch):
    seen: list[tuple[torch.device, torch.dtype]] = []
    monkeypatch.setattr(
        distributed.dist, "all_reduce", lambda t, op: seen.append((t.device, t.dtype))
    )
    ctx = distributed.DistContext(rank=0, world=2, device=META)
    assert ctx.sum(torch.ones(3)).device == META
    # the per-step values (losses, terms) travel as a float64 tensor on the device too
    monkeypatch.setattr(
        distributed.DistContext, "sum", lambda self, t: seen.append((t.device, t.dtype)) or t
    )
    with pytest.raises(NotImplementedError):  # a meta tensor has no values to read back
        fit_mod._summed(ctx, {"task_loss": 0.5, "term_x": 0.1})
    assert seen == [(META, torch.float32), (META, torch.float64)]


# --------------------------------------------------------------------------------------------
# Exact HVPs on SDPA attention, gradient checkpointing


def _lora(attn: str | None):
    lm = load_model("tiny-llama", seed=0, attn_implementation=attn)
    torch.manual_seed(0)
    adapted = get_method("lora").apply(lm, MethodOptions(lora_r=4))
    with torch.no_grad():
        for name, p in adapted.trainable.items():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return adapted.as_lm(lm), list(adapted.trainable.values())


def _closure(lm, batch):
    def loss():
        s = candidate_scores(lm, batch)
        return F.cross_entropy(s, torch.tensor([x.gold for x in batch]))

    return loss


def test_exact_hvp_on_sdpa_through_the_math_kernel_equals_eager_attention(batch):
    results = []
    for attn in ("eager", "sdpa"):
        lm, params = _lora(attn)
        assert lm.model.config._attn_implementation == attn
        prior = torch.linspace(-1, 1, sum(p.numel() for p in params))
        engine = GuidedGradient(
            [DirectionPenalty(0.7), MagnitudePenalty(0.3, 0.05)],
            hvp="exact",
            prior=FixedPrior(prior, "test"),
        )
        stats = engine.backward(_closure(lm, batch), params, 0)
        results.append((stats, flat([p.grad for p in params], params)))
    (eager, g_eager), (sdpa, g_sdpa) = results
    assert sdpa.penalty_applied and sdpa.guided_norm != pytest.approx(sdpa.grad_norm, rel=1e-3)
    assert sdpa.loss == pytest.approx(eager.loss, rel=1e-6)
    # the kernels round differently: compare as vectors (measured 1.8e-6 of the norm)
    assert float((g_sdpa - g_eager).norm()) <= 1e-5 * float(g_eager.norm()), float(
        (g_sdpa - g_eager).norm() / g_eager.norm()
    )


def test_exact_hvp_outside_the_math_kernel_explains_itself(batch):
    lm, params = _lora("sdpa")
    grads = torch.autograd.grad(_closure(lm, batch)(), params, create_graph=True)
    v = torch.ones(sum(p.numel() for p in params))
    with pytest.raises(GradguideError, match="double_backward_attention"):
        exact_hvp(grads, params, v)
    with double_backward_attention():
        grads = torch.autograd.grad(_closure(lm, batch)(), params, create_graph=True)
        assert torch.isfinite(exact_hvp(grads, params, v)).all()


def test_checkpointing_recomputes_each_block_in_the_backward_pass(batch):
    lm, _ = _lora(None)
    enable_checkpointing(lm.model, lm.name)
    lm.model.train()
    attention = next(m for n, m in lm.model.named_modules() if n.endswith("layers.0.self_attn"))
    calls = []
    attention.register_forward_hook(lambda *a: calls.append(1))
    loss = _closure(lm, batch)()
    assert len(calls) == 1
    loss.backward()
    assert len(calls) == 2  # recomputed


@pytest.mark.parametrize(
    ("method", "guidance"),
    [
        ("lora", GuidanceConfig(use="sgg", hvp="fd", prior="ema:0.5")),
        ("lora", GuidanceConfig(use="sgg", hvp="exact", prior="ema:0.5")),
        ("lora", GuidanceConfig(use="spectral")),
        ("ofa", GuidanceConfig()),  # the fd JVP re-runs checkpointed blocks
    ],
    ids=["sgg-fd", "sgg-exact", "spectral", "ofa-fd"],
)
def test_gradient_checkpointing_changes_no_number(tmp_path, method, guidance):
    runs = [
        train(
            tiny(tmp_path / str(ck), method=method, guidance=guidance, gradient_checkpointing=ck),
            show_progress=False,
        )
        for ck in (False, True)
    ]
    plain, checkpointed = (r.record["curves"] for r in runs)
    for key in ("loss", "grad_norm", "guided_norm"):
        assert checkpointed[key] == pytest.approx(plain[key], rel=1e-6, abs=1e-9)
    for k, p in runs[0].adapted.trainable.items():
        torch.testing.assert_close(runs[1].adapted.trainable[k], p, rtol=1e-6, atol=1e-9)
    assert runs[1].record["config"]["gradient_checkpointing"]


def test_a_model_without_checkpointing_support_is_a_clear_error():
    with pytest.raises(GradguideError) as e:
        enable_checkpointing(torch.nn.Linear(2, 2), "a linear layer")
    assert e.value.field == "gradient_checkpointing"


# --------------------------------------------------------------------------------------------
# Precision and the fd HVP's copies


def test_spectral_bases_stay_fp32_for_bf16_weights():
    lm = load_model("tiny-llama", seed=0, dtype=torch.bfloat16)
    adapted = get_method("full").apply(lm, MethodOptions())
    graphs = SpectralGraphs.build(
        adapted.model, adapted.trainable, "full", SpectralOptions(knn=3, response="lowk", k_low=8)
    )
    e = graphs.entries[0]
    assert adapted.trainable[e.target].dtype == torch.bfloat16
    assert e.graph.eigenvectors.dtype == torch.float32 and e.gain.dtype == torch.float32
    g = torch.randn(e.graph.n, 5).to(torch.bfloat16)
    once = e.graph.filter(g, e.gain)
    # computed in fp32 and rounded once: exactly the fp32 filter of the same gradient, in bf16
    assert once.dtype == torch.bfloat16
    assert torch.equal(once, e.graph.filter(g.float(), e.gain).to(torch.bfloat16))


def test_the_fd_step_norm_needs_no_concatenated_copy():
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randn(3, 4, generator=gen), torch.randn(7, generator=gen)]
    whole = torch.linalg.vector_norm(torch.cat([p.reshape(-1) for p in parts]))
    assert norm_of(parts) == pytest.approx(float(whole), rel=1e-6)
    assert norm_of([p.to(torch.bfloat16) for p in parts]) == pytest.approx(float(whole), rel=1e-2)
    assert norm_of([]) == 0.0


def test_the_fd_hvp_concatenates_only_the_shifted_gradient(monkeypatch):
    """θ is copied tensor by tensor and its norm taken without a flat copy: the one
    concatenation of a step's fd HVP is the shifted gradient's (a quadratic: H·v is exact)."""
    from gradguide.guidance import hvp as hvp_mod

    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4, generator=gen)) for _ in range(2)]
    c = [torch.rand(3, 4, generator=gen) + 0.5 for _ in params]

    def loss() -> torch.Tensor:
        return sum(0.5 * (ci * p * p).sum() for ci, p in zip(c, params, strict=True))

    before = [p.detach().clone() for p in params]
    _, g = hvp_mod.loss_gradient(loss, params)
    v = torch.randn(g.numel(), generator=gen)
    sizes: list[int] = []
    real_cat = torch.cat

    def spy(tensors, *args, **kwargs):
        sizes.append(sum(t.numel() for t in tensors))
        return real_cat(tensors, *args, **kwargs)

    monkeypatch.setattr(hvp_mod.torch, "cat", spy)
    hv = hvp_mod.fd_hvp(loss, params, g, v, rel_eps=1e-3)
    monkeypatch.undo()
    assert sizes == [g.numel()]  # the gradient at θ + εv̂, nothing of θ
    torch.testing.assert_close(
        hv, torch.cat([ci.reshape(-1) for ci in c]) * v, rtol=1e-3, atol=1e-4
    )
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))  # θ restored


def test_ofa_probes_come_from_a_generator_on_the_models_device(batch, monkeypatch):
    from gradguide.guidance import ofa

    lm = load_model("tiny-llama", seed=0)
    term = ofa.OfaSharpness(lm.model, OfaOptions(lambda_sharp=1.0), seed=3)
    made: list[tuple[object, ...]] = []
    real = torch.Generator

    def spy(*args: object) -> torch.Generator:
        made.append(args)
        return real(*args)

    term.begin_step(0)
    with torch.no_grad():
        candidate_scores(lm, batch)
        monkeypatch.setattr(torch, "Generator", spy)
        term.loss({})
        monkeypatch.undo()
    term.close()
    assert made == [(next(lm.model.parameters()).device,)]  # asked for, not the CPU default


def test_layer_diagnostics_draw_their_probes_on_the_models_device(batch, monkeypatch):
    from gradguide import layerwise

    lm = load_model("tiny-llama", seed=0)
    made: list[tuple[object, ...]] = []
    real = torch.Generator

    def spy(*args: object) -> torch.Generator:
        made.append(args)
        return real(*args)

    monkeypatch.setattr(torch, "Generator", spy)
    out = layerwise.layer_diagnostics(lm, batch, ofa=OfaOptions(probes=1), seed=3)
    monkeypatch.undo()
    assert made == [(next(lm.model.parameters()).device,)]  # asked for, not the CPU default
    assert all(x == x for x in out["sharpness"])  # numbers, not NaN


# --------------------------------------------------------------------------------------------
# Checkpoints and finished runs on another device


def test_optimizer_state_from_a_checkpoint_lands_on_the_parameters_device(tmp_path):
    """Read back onto the CPU (map_location), then moved by the optimiser to its parameters."""
    from gradguide.checkpoint import load_checkpoint

    cfg = tiny(tmp_path, checkpoint_every=1, keep_checkpoint=True)
    r = train(cfg, show_progress=False)
    shapes = {k: p.shape for k, p in r.adapted.trainable.items()}
    on_meta = {k: torch.nn.Parameter(torch.empty(s, device=META)) for k, s in shapes.items()}
    optimizer = torch.optim.AdamW(list(on_meta.values()), lr=1e-3)
    scheduler = train_mod.make_scheduler(optimizer, cfg.optim, cfg.optim.steps)
    state = load_checkpoint(r.run_dir, SimpleNamespace(trainable=on_meta), optimizer, scheduler)
    assert state["step"] == cfg.optim.steps
    moments = [t for s in optimizer.state.values() for k, t in s.items() if k != "step"]
    assert moments and {t.device for t in moments} == {META}


def test_a_finished_run_is_evaluated_and_predicts_on_the_device_asked_for(tmp_path, capsys):
    """A run trained on a GPU (its config says cuda:7) is evaluated again and predicts on this
    machine's CPU when --device says so; without it, the run's own device is a clear error."""
    r = train(tiny(tmp_path, optim=OptimConfig(steps=1, batch_size=4)), show_progress=False)
    config = json.loads((r.run_dir / "config.json").read_text())
    (r.run_dir / "config.json").write_text(json.dumps({**config, "device": "cuda:7"}))
    with pytest.raises(GradguideError) as e:
        train_mod.reevaluate(r.run_dir, show_progress=False)
    assert e.value.field == "device"
    assert train_mod.reevaluate(r.run_dir, show_progress=False, device="cpu") == r.metrics
    capsys.readouterr()
    assert main(["eval", str(r.run_dir), "--device", "cpu"]) == 0
    assert "matches the run record" in capsys.readouterr().out
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"text": "a fine film"}) + "\n")
    assert main(["predict", str(r.run_dir), "--input", str(inputs), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["prediction"]
