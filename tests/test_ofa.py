"""OFA: the estimators against exact values, gradients against finite differences, training."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from tiny_cli import tiny_train
from tiny_runs import tiny_config

from gradguide.bench.compare import recipe
from gradguide.bench.grid import expand_grid, parse_grid
from gradguide.bench.store import arm_name
from gradguide.cli import main
from gradguide.errors import GradguideError
from gradguide.guidance import needs_eager_attention
from gradguide.guidance.ofa import (
    OfaOptions,
    OfaSharpness,
    OfaStepRatio,
    hutchinson,
    probe_seed,
)
from gradguide.methods import MethodOptions, get_method
from gradguide.methods.layernorm import norm_modules
from gradguide.models import LoadedModel, load_model, tiny_tokenizer
from gradguide.scoring import ScoringOptions, candidate_scores, encode_causal
from gradguide.tasks import get_task
from gradguide.train import GuidanceConfig, OptimConfig, TrainConfig, load_run_config, train


@pytest.fixture(scope="module")
def batch():
    return get_task("demo-sentiment").load("train")[:5]


def deep_llama(layers: int = 4, dtype: torch.dtype = torch.float64) -> LoadedModel:
    """A tiny Llama with ``layers`` blocks, eager attention, gains moved off 1."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = tiny_tokenizer("causal")
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype)
    with torch.no_grad():  # larger weights and uneven gains: steps and curvature far from 0
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif p.dim() == 2:
                p.normal_(0, 0.2)
    model.eval()
    return LoadedModel(model, tok, "causal", f"deep-llama-{layers}")


def tiny(tmp_path: Path, **kw) -> TrainConfig:
    kw = {
        "method": "ofa",
        "eval_limit": 8,
        "optim": OptimConfig(steps=3, batch_size=4, lr=5e-2),
        "guidance": GuidanceConfig(measure_alignment=False),
        **kw,
    }
    return tiny_config(tmp_path, **kw)


# --------------------------------------------------------------------------------------------
# Hutchinson's estimator on an explicit Hessian


def _quadratic(d: int, seed: int, diagonal: bool = False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    diag = torch.diag(3 + torch.randn(d, generator=g, dtype=torch.float64))
    h = diag if diagonal else diag + (a + a.T) / 2
    gain = 0.5 + torch.rand(d, generator=g, dtype=torch.float64)
    exact = float(torch.trace(torch.diag(gain) @ h @ torch.diag(gain)))

    def step(z: torch.Tensor) -> torch.Tensor:  # u(z) = −P ∇L(z) for L(z) = ½ zᵀHz, P = diag(γ)
        return -(z @ h) * gain

    return step, gain, exact


@pytest.mark.parametrize("jvp", ["fd", "exact"])
def test_hutchinson_is_unbiased_and_converges_to_the_exact_trace(jvp):
    step, gain, exact = _quadratic(6, seed=3)
    n = 20000  # one independent Rademacher probe per token
    z = torch.randn(1, n, 6, dtype=torch.float64)
    mask = torch.ones(1, n)
    est = hutchinson(step, z, gain, mask, torch.Generator().manual_seed(0), 1, jvp)[0]
    se = float(est.std()) / math.sqrt(n)
    assert abs(float(est.mean()) - exact) < 4 * se  # unbiased
    assert se < 0.05 * abs(exact)  # and its error shrinks like 1/√n: close to the trace
    for m in (50, 400):  # averaging probes shrinks the error too
        probes = torch.Generator().manual_seed(m)
        many = hutchinson(step, z[:, :50], gain, mask[:, :50], probes, m, jvp)
        assert float((many - exact).abs().max()) < 8 * float(est.std()) / math.sqrt(m)
    # padding gets no probe and no estimate
    mask[0, :10] = 0
    est = hutchinson(step, z[:, :20], gain, mask[:, :20], torch.Generator().manual_seed(1), 1, jvp)
    assert torch.all(est[0, :10] == 0) and torch.all(est[0, 10:] != 0)


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    """Rademacher probes square to one: a diagonal P H Pᵀ gives its trace with any probe."""
    step, gain, exact = _quadratic(5, seed=1, diagonal=True)
    z = torch.randn(2, 7, 5, dtype=torch.float64)
    est = hutchinson(step, z, gain, torch.ones(2, 7), torch.Generator().manual_seed(4), 1)
    torch.testing.assert_close(est, torch.full((2, 7), exact, dtype=torch.float64))


class LinearBlock(torch.nn.Module):
    """A block whose residual update is exactly u(z) = −A z; its norm's gain is P = diag(γ)."""

    def __init__(self, a: torch.Tensor, gain: torch.Tensor) -> None:
        super().__init__()
        self.input_layernorm = torch.nn.LayerNorm(a.shape[0], dtype=a.dtype)
        with torch.no_grad():
            self.input_layernorm.weight.copy_(gain)
        self.register_buffer("a", a)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states - hidden_states @ self.a.T


class LinearStack(torch.nn.Module):
    def __init__(self, blocks: list[LinearBlock]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            z = block(z)
        return z


def known_curvature(d: int = 4, seed: int = 0):
    """Three linear blocks with M_t = A_t P_t (the estimator's −J_u P = A P, trace known):
    M_0 = P H P with H positive semi-definite (the paper's u = −P ∇L of L = ½zᵀHz), M_1
    non-symmetric with a positive semi-definite symmetric part, M_2 non-symmetric and expanding
    (its symmetric part negative definite)."""
    g = torch.Generator().manual_seed(seed)

    def rand() -> torch.Tensor:
        return torch.randn(d, d, generator=g, dtype=torch.float64)

    def psd() -> torch.Tensor:
        b = rand()
        return b @ b.T / d + 0.1 * torch.eye(d, dtype=torch.float64)

    def skew() -> torch.Tensor:
        k = rand()
        return k - k.T

    gains = [0.5 + torch.rand(d, generator=g, dtype=torch.float64) for _ in range(3)]
    p = [torch.diag(x) for x in gains]
    ms = [p[0] @ psd() @ p[0], psd() + skew(), -psd() + skew()]
    a = [m @ torch.linalg.inv(q) for m, q in zip(ms, p, strict=True)]
    model = LinearStack([LinearBlock(x, y) for x, y in zip(a, gains, strict=True)])
    return model, ms, a


@pytest.mark.parametrize("jvp", ["fd", "exact"])
def test_sharpness_penalty_is_the_trace_clipped_at_zero_per_block(jvp):
    """On blocks of known curvature the signed S_t converge to tr(A_t P_t) and the penalty is
    Σ_t max(S_t, 0): a block that expands adds nothing and gets no gradient (a signed sum would
    reward it without bound)."""
    model, ms, a = known_curvature()
    exact = [float(torch.trace(m)) for m in ms]
    assert exact[0] > 0 and exact[1] > 0 and exact[2] < 0
    n, probes = 256, 64
    samples = n * probes
    z = torch.randn(1, n, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    term = OfaSharpness(model, OfaOptions(lambda_sharp=1.0, probes=probes, jvp=jvp), seed=0)
    term.begin_step(0)
    model(z)
    s = term.loss({})
    signed = term.signed[0]
    # Rademacher: νᵀMν = tr M + Σ_{i<j} (M_ij + M_ji) ν_i ν_j, uncorrelated terms of variance 1
    se = [math.sqrt(float(torch.triu(m + m.T, 1).pow(2).sum()) / samples) for m in ms]
    for got, want, err in zip(signed, exact, se, strict=True):
        assert abs(got - want) < 5 * err and err < 0.05 * abs(want)
    assert term.summary()["signed_layer_means"] == signed
    assert float(s.detach()) == pytest.approx(signed[0] + signed[1], rel=1e-12)
    # ∂S/∂γ_t: E[ν_j (A_tᵀν)_j] = (A_t)_jj for the blocks that count, exactly 0 for block 2
    gains = [block.input_layernorm.weight for block in model.layers]
    grads = torch.autograd.grad(s, gains)
    assert torch.equal(grads[2], torch.zeros_like(grads[2]))
    for t in (0, 1):
        off = a[t] - torch.diag(torch.diag(a[t]))
        bound = 5 * (off.pow(2).sum(0) / samples).sqrt()
        assert torch.all((grads[t] - torch.diag(a[t])).abs() < bound), t
    term.close()
    # where the curvature is positive semi-definite every single probe is already >= 0: the clip
    # changes nothing there, and S_t stays unbiased
    one = OfaSharpness(model, OfaOptions(lambda_sharp=1.0, probes=1, jvp=jvp), seed=1)
    for step in range(20):
        one.begin_step(step)
        with torch.no_grad():
            model(z[:, :2])
            one.loss({})
        assert one.signed[step][0] > 0 and one.signed[step][1] > 0
    one.close()


# --------------------------------------------------------------------------------------------
# The step ratio on a real model's hidden states


def manual_hidden(model: torch.nn.Module, ids: list[int]) -> list[torch.Tensor]:
    """Z_0 … Z_L of one unpadded row, computed block by block outside the model's forward."""
    inner = model.model
    x = torch.tensor([ids])
    pos = torch.arange(len(ids))[None]
    z = inner.embed_tokens(x)
    pe = inner.rotary_emb(z, position_ids=pos)
    n = len(ids)
    causal = torch.full((n, n), float("-inf"), dtype=z.dtype).triu(1)[None, None]
    out = [z]
    for layer in inner.layers:
        z = layer(z, attention_mask=causal, position_embeddings=pe, position_ids=pos)
        out.append(z)
    return out


def test_step_ratio_equals_a_hand_computation(batch):
    # float32: in float64, transformers' eager attention turns left padding into NaN
    lm = deep_llama(4, torch.float32)
    eps = 1e-6
    enc = encode_causal(lm.tokenizer, batch, "", ScoringOptions())
    assert len({len(r) for r in enc.rows}) > 1  # the batch is padded
    num, tokens = 0.0, 0
    with torch.no_grad():
        for ids in enc.rows:
            hs = manual_hidden(lm.model, ids)
            ref = lm.model(input_ids=torch.tensor([ids])).logits
            torch.testing.assert_close(lm.model.lm_head(lm.model.model.norm(hs[-1])), ref)
            s = [(b - a)[0].norm(dim=-1) for a, b in itertools.pairwise(hs)]
            num += sum(float((s[t + 1] / (s[t] + eps)).sum()) for t in range(3))
            tokens += len(ids)
    hand = num / (3 * tokens)
    term = OfaStepRatio(lm.model, OfaOptions(lambda_step=1.0, eps=eps), seed=0)
    term.begin_step(0)
    with torch.no_grad():
        candidate_scores(lm, batch)
        j = float(term.loss({}))
    assert term.pairs == [0, 1, 2]
    assert j == pytest.approx(hand, rel=1e-5)
    assert 0.1 < hand < 10  # a real ratio, not a degenerate one
    # the squared variant and a subset of pairs
    sq = OfaStepRatio(lm.model, OfaOptions(lambda_step=1.0, squared=True, layers="1"), seed=0)
    with torch.no_grad():
        candidate_scores(lm, batch)
        j_sq = float(sq.loss({}))
        row = [manual_hidden(lm.model, ids) for ids in enc.rows]
    s2 = [[(b - a)[0].norm(dim=-1) ** 2 for a, b in itertools.pairwise(h)] for h in row]
    hand_sq = sum(float((s[2] / (s[1] + eps)).sum()) for s in s2) / tokens
    assert j_sq == pytest.approx(hand_sq, rel=1e-5)
    term.close()
    sq.close()


# --------------------------------------------------------------------------------------------
# Sharpness: fd against exact, gradients against finite differences


def float64_llama(monkeypatch) -> None:
    """Llama's RMSNorm and eager softmax without their float32 casts, so that a float64 model
    is float64 throughout and finite differences with h = 1e-6 resolve its derivatives."""
    from transformers.models.llama import modeling_llama

    def rms_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        key = modeling_llama.repeat_kv(key, module.num_key_value_groups)
        value = modeling_llama.repeat_kv(value, module.num_key_value_groups)
        weights = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            weights = weights + attention_mask
        weights = torch.softmax(weights, dim=-1)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm)
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", attention)


def _value(term, lm, batch) -> torch.Tensor:
    candidate_scores(lm, batch)
    return term.loss({})


def test_fd_and_exact_jvp_agree(batch):
    lm = deep_llama(3, torch.float32)  # a padded batch (see above), so float32
    norms = [p for n, m in norm_modules(lm.model).items() for p in m.parameters() if "layers" in n]
    values, grads = {}, {}
    for jvp in ("fd", "exact"):
        term = OfaSharpness(lm.model, OfaOptions(lambda_sharp=1.0, jvp=jvp, probes=2), seed=5)
        term.begin_step(3)
        v = _value(term, lm, batch)
        values[jvp] = float(v.detach())
        grads[jvp] = torch.autograd.grad(v, norms)
        term.close()
    assert values["fd"] == pytest.approx(values["exact"], rel=1e-3)
    assert abs(values["exact"]) > 1e-2
    for a, b in zip(grads["fd"], grads["exact"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3 * float(b.abs().max()))


def test_fd_sharpness_under_bf16_autocast_matches_float32(batch):
    """The fd re-runs leave bf16 autocast (its resolution is far coarser than the step): only the
    hidden states' own bf16 rounding remains (none at block 0, whose input is the embeddings)."""
    lm = deep_llama(3, torch.float32)
    term = OfaSharpness(lm.model, OfaOptions(lambda_sharp=1.0, probes=8, jvp="fd"), seed=1)
    signed = {}
    for bf16 in (False, True):
        term.begin_step(0)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            _value(term, lm, batch)
        signed[bf16] = torch.tensor(term.signed.pop(0))
        term.values.clear()
    term.close()
    assert float(signed[False].abs().min()) > 0.1  # each block's value is far from 0
    torch.testing.assert_close(signed[True], signed[False], rtol=0.05, atol=1e-3)
    # a model stored in bf16 cannot resolve the step at all: refused, naming the options
    low = deep_llama(2, torch.bfloat16)
    term = OfaSharpness(low.model, OfaOptions(lambda_sharp=1.0, jvp="fd"), seed=1)
    term.begin_step(0)
    with torch.no_grad(), pytest.raises(GradguideError, match="jvp=exact") as e:
        _value(term, low, batch)
    assert e.value.field == "guidance.ofa.jvp" and "float32" in str(e.value)
    term.close()


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("step", OfaOptions(lambda_step=1.0)),
        ("step", OfaOptions(lambda_step=1.0, squared=True)),
        ("sharp", OfaOptions(lambda_sharp=1.0, jvp="fd")),
        ("sharp", OfaOptions(lambda_sharp=1.0, jvp="exact", layers="0,2")),
    ],
)
def test_gradients_wrt_norm_parameters_match_finite_differences(batch, kind, options, monkeypatch):
    float64_llama(monkeypatch)
    lm = deep_llama(3)  # float64, one unpadded row per forward
    batch = batch[:1]
    # every block's two norms (the final norm does not enter J or S)
    params = [p for n, p in lm.model.named_parameters() if "norm" in n and "layers" in n]
    cls = OfaStepRatio if kind == "step" else OfaSharpness
    term = cls(lm.model, options, seed=2)
    term.begin_step(0)  # the same probes at every evaluation
    grads = torch.autograd.grad(_value(term, lm, batch), params)
    assert len(grads) == 6 and all(float(g.abs().sum()) > 0 for g in grads)
    direction = [torch.randn_like(p) for p in params]
    h = 1e-6

    def shifted(sign: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(sign * h * d)
            v = float(_value(term, lm, batch))
            for p, d in zip(params, direction, strict=True):
                p.sub_(sign * h * d)
        return v

    fd = (shifted(1.0) - shifted(-1.0)) / (2 * h)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction, strict=True))
    assert analytic == pytest.approx(fd, rel=1e-6)
    term.close()


def test_probes_are_a_function_of_seed_and_step(batch):
    lm = deep_llama(2, torch.float32)
    term = OfaSharpness(lm.model, OfaOptions(lambda_sharp=1.0), seed=7)
    values = []
    for step in (4, 4, 5):
        term.begin_step(step)
        with torch.no_grad():
            values.append(float(_value(term, lm, batch)))
    assert values[0] == values[1] != values[2]
    assert probe_seed(7, 4) == probe_seed(7, 4) != probe_seed(8, 4)
    term.close()


def test_terms_find_the_blocks_of_a_peft_model(batch):
    lm = load_model("tiny-llama", seed=0)
    plain = OfaStepRatio(lm.model, OfaOptions(lambda_step=1.0), seed=0)
    with torch.no_grad():
        before = float(_value(plain, lm, batch))
    plain.close()
    adapted = get_method("lora").apply(lm, MethodOptions(lora_r=2))  # B = 0: same function
    wrapped = OfaStepRatio(adapted.model, OfaOptions(lambda_step=1.0), seed=0)
    with torch.no_grad():
        after = float(_value(wrapped, adapted.as_lm(lm), batch))
    assert after == pytest.approx(before, rel=1e-6)
    wrapped.close()
    with torch.no_grad():  # after close nothing is recorded any more
        candidate_scores(adapted.as_lm(lm), batch)
    assert wrapped.capture.passes == []


def test_exact_sharpness_asks_for_eager_attention():
    exact = GuidanceConfig(ofa=OfaOptions(jvp="exact"))
    assert needs_eager_attention(["ofa-sharp"], exact) and needs_eager_attention(["ofa"], exact)
    assert not needs_eager_attention(["ofa"], GuidanceConfig())
    assert not needs_eager_attention(["ofa-step"], exact)


# --------------------------------------------------------------------------------------------
# Training


def test_ofa_training_changes_only_normalisation_parameters(tmp_path):
    r = train(tiny(tmp_path, layer_diagnostics=6), show_progress=False)
    initial = dict(load_model("tiny-llama", seed=1).model.named_parameters())
    changed = []
    for name, p in r.adapted.model.named_parameters():
        same = torch.equal(p.detach(), initial[name].detach())
        if "norm" in name:
            changed.append(not same)
        else:
            assert same, name
    assert changed and all(changed)
    rec = json.loads((r.run_dir / "record.json").read_text())
    assert rec["guidance"]["loss_terms"] == ["ofa-step", "ofa-sharp"]
    assert rec["trainable_parameters"] == sum(p.numel() for p in r.adapted.trainable.values())
    for key in ("term_ofa-step", "term_ofa-sharp"):
        assert len(rec["curves"][key]) == 3 and all(v is not None for v in rec["curves"][key])
    summaries = rec["guidance"]["term_summaries"]
    assert summaries["ofa-sharp"]["jvp"] == "fd" and summaries["ofa-sharp"]["layers"] == [0, 1]
    assert summaries["ofa-step"]["pairs"] == [0]
    # each summary's unweighted mean is its curve's (λ · value per step) over λ: both come from
    # the step's first closure call, not from the fd HVP's or a later one
    for key, lam in (("ofa-step", OfaOptions.lambda_step), ("ofa-sharp", OfaOptions.lambda_sharp)):
        curve = rec["curves"][f"term_{key}"]
        assert summaries[key]["mean_value"] == pytest.approx(sum(curve) / (3 * lam), rel=1e-6)
    diag = rec["layer_diagnostics"]
    assert diag["n_examples"] == 6 and diag["blocks"] == 2
    assert len(diag["probe_accuracy"]) == 3 and len(diag["probe_loss"]) == 3
    assert len(diag["sharpness"]) == 2 and len(diag["step_ratio"]) == 1
    assert all(math.isfinite(v) for v in diag["sharpness"] + diag["probe_loss"])
    # the saved adapter is LayerNorm tuning's format under the method's own name
    meta = json.loads((r.run_dir / "adapter" / "adapter_meta.json").read_text())
    assert meta["method"] == "ofa" and all("norm" in n for n in meta["tensors"])


def test_zero_weights_give_layernorm_tuning_bit_for_bit(tmp_path):
    off = GuidanceConfig(measure_alignment=False, ofa=OfaOptions(lambda_step=0, lambda_sharp=0))
    a = train(tiny(tmp_path / "ofa", guidance=off), show_progress=False)
    b = train(tiny(tmp_path / "ln", method="layernorm"), show_progress=False)
    for key in ("loss", "grad_norm"):
        assert a.record["curves"][key] == b.record["curves"][key]
    # the zero-weight terms were still evaluated at every step, so the match shows that
    # evaluating them (hooks, block re-runs) leaves training alone
    summaries = a.record["guidance"]["term_summaries"]
    assert [summaries[k]["steps_measured"] for k in ("ofa-step", "ofa-sharp")] == [3, 3]
    assert all(v is not None and v != 0 for v in summaries["ofa-sharp"]["signed_layer_means"])
    assert a.metrics == b.metrics
    for (n, p), (m, q) in zip(
        a.adapted.trainable.items(), b.adapted.trainable.items(), strict=True
    ):
        assert n == m and torch.equal(p, q)
    # with the weights on, the same run differs
    c = train(tiny(tmp_path / "on"), show_progress=False)
    assert c.record["curves"]["grad_norm"][0] != b.record["curves"]["grad_norm"][0]


def test_resume_repeats_the_uninterrupted_run(tmp_path, monkeypatch):
    cfg = tiny(tmp_path / "full", checkpoint_every=2, optim=OptimConfig(steps=4, batch_size=4))
    full = train(cfg, show_progress=False)
    real = OfaSharpness.begin_step

    def interrupted(self, step):
        if step == 3:
            raise KeyboardInterrupt
        real(self, step)

    monkeypatch.setattr(OfaSharpness, "begin_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(dataclasses.replace(cfg, out=str(tmp_path / "cut")), show_progress=False)
    monkeypatch.undo()
    (run_dir,) = list((tmp_path / "cut").iterdir())
    assert not (run_dir / "record.json").exists()
    resumed = train(load_run_config(run_dir), resume=run_dir, show_progress=False)
    for key in ("loss", "grad_norm", "term_ofa-step", "term_ofa-sharp"):
        assert resumed.record["curves"][key] == full.record["curves"][key], key
    assert resumed.metrics == full.metrics
    for n, p in full.adapted.trainable.items():
        assert torch.equal(p, resumed.adapted.trainable[n])


def test_icl_run_records_layer_diagnostics_whose_last_layer_is_the_model(tmp_path):
    r = train(
        tiny(tmp_path, method="icl", icl_shots=2, eval_limit=10, layer_diagnostics=10),
        show_progress=False,
    )
    diag = r.record["layer_diagnostics"]
    assert diag["demonstrations"] == 2 and diag["n_examples"] == 10
    # the logit lens at the last layer is the model's own scoring of the same examples
    assert diag["probe_accuracy"][-1] == pytest.approx(r.metrics["accuracy"])
    assert r.record["trainable_parameters"] == 0 and r.record["steps"] == 0


def test_cli_layernorm_with_ofa_guidance_and_comparison_recipes(tmp_path):
    code = main(
        tiny_train(
            "--method",
            "layernorm",
            "--guidance",
            "ofa-step,ofa-sharp",
            "--out",
            str(tmp_path),
            "--set",
            "guidance.ofa.probes=2",
            "--set",
            "guidance.measure_alignment=false",
            steps=2,
        )
    )
    assert code == 0
    (run_dir,) = list(tmp_path.iterdir())
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["method"] == "layernorm" and rec["guidance"]["loss_terms"] == [
        "ofa-step",
        "ofa-sharp",
    ]
    assert rec["guidance"]["term_summaries"]["ofa-sharp"]["probes"] == 2
    assert arm_name(rec["config"]) == "ofa-step,ofa-sharp+layernorm"
    # compare/bench: ofa is the method (its own default guidance), ofa-* train layernorm
    base = TrainConfig()
    assert (recipe(base, "ofa").method, recipe(base, "ofa").guidance.use) == ("ofa", "")
    assert (recipe(base, "ofa-sharp").method, recipe(base, "ofa-sharp").guidance.use) == (
        "layernorm",
        "ofa-sharp",
    )
    assert recipe(base, "sgg").method == "lora"
    spec = parse_grid(
        {
            "name": "t",
            "models": ["tiny-llama"],
            "tasks": ["demo-sentiment"],
            "methods": ["icl", "layernorm", "ofa", "ofa-step", "ofa-sharp"],
            "shots": [8],
            "seeds": [1],
            "base": {"layer_diagnostics": 4},
        }
    )
    runs = {r.arm: r.config for r in expand_grid(spec)}
    assert set(runs) == {"icl", "layernorm", "ofa", "ofa-step+layernorm", "ofa-sharp+layernorm"}
    assert runs["ofa-step+layernorm"].method == "layernorm"
    assert arm_name({"method": "ofa", "guidance": {"use": "ofa"}}) == "ofa"  # a finished ofa run


@pytest.mark.parametrize(
    ("ofa", "field"),
    [
        ({"lambda_step": -1.0}, "guidance.ofa.lambda_step"),
        ({"lambda_sharp": -0.1}, "guidance.ofa.lambda_sharp"),
        ({"probes": 0}, "guidance.ofa.probes"),
        ({"layers": "0,x"}, "guidance.ofa.layers"),
        ({"layers": "1,1"}, "guidance.ofa.layers"),
        ({"jvp": "magic"}, "guidance.ofa.jvp"),
        ({"fd_eps": 0.0}, "guidance.ofa.fd_eps"),
        ({"eps": -1.0}, "guidance.ofa.eps"),
    ],
)
def test_bad_options_name_the_field(tmp_path, ofa, field):
    cfg = tiny(tmp_path, guidance=GuidanceConfig(ofa=OfaOptions(**ofa)))
    with pytest.raises(GradguideError) as e:
        train(cfg, show_progress=False)
    assert e.value.field == field
    assert not any(tmp_path.iterdir())  # rejected before anything is written


def test_impossible_layers_and_diagnostics_name_the_field(tmp_path):
    cfg = tiny(tmp_path, guidance=GuidanceConfig(ofa=OfaOptions(layers="2")))
    with pytest.raises(GradguideError, match="has 2") as e:
        train(cfg, show_progress=False)  # tiny-llama has blocks 0 and 1
    assert e.value.field == "guidance.ofa.layers"
    with pytest.raises(GradguideError) as e:  # the last block has no successor for the ratio
        train(tiny(tmp_path, guidance=GuidanceConfig(ofa=OfaOptions(layers="1"))))
    assert e.value.field == "guidance.ofa.layers"
    with pytest.raises(GradguideError) as e:
        train(tiny(tmp_path, layer_diagnostics=-1), show_progress=False)
    assert e.value.field == "layer_diagnostics"
    with pytest.raises(GradguideError) as e:
        train(tiny(tmp_path, model="tiny-bert", method="icl", layer_diagnostics=4))
    assert e.value.field == "layer_diagnostics"


def test_bench_and_report_plot_the_layer_diagnostics(tmp_path):
    from gradguide.bench.runner import run_grid
    from gradguide.report import write_report

    spec = parse_grid(
        {
            "name": "ofa-tiny",
            "models": ["tiny-llama"],
            "tasks": ["demo-sentiment"],
            "methods": ["icl", "layernorm", "ofa"],
            "shots": [8],
            "seeds": [1, 2],
            "base": {
                "eval_limit": 6,
                "layer_diagnostics": 6,
                "icl_shots": 2,
                "optim": {"steps": 2, "batch_size": 4},
                "guidance": {"measure_alignment": False},
            },
        },
        source="g.yaml",
    )
    assert run_grid(spec, tmp_path, workers=0, show_progress=False).ok
    files = write_report(tmp_path)
    text = files.markdown.read_text()
    assert "## Per-layer diagnostics" in text
    names = {p.stem for p in files.figures if p.stem.startswith("layers-")}
    for key in ("probe-accuracy", "probe-loss", "sharpness", "step-ratio"):
        assert any(n.startswith(f"layers-{key}-demo-sentiment") for n in names), key


def test_ofa_records_its_terms_share_of_the_gradient(tmp_path, monkeypatch):
    """OFA's terms are a loss, so ‖guided g‖/‖g‖ is 1 by construction and the sanity check saw
    nothing: the record must hold ∇CE alone (task_grad_norm) and ‖∇terms‖/‖∇CE‖ (terms_to_task)
    on the measured steps, without changing a number of the run."""
    from gradguide.guidance import term_share

    ln = train(
        tiny(
            tmp_path / "ln", method="layernorm", optim=OptimConfig(steps=5, batch_size=4, lr=5e-2)
        ),
        show_progress=False,
    )

    def ofa(folder: str, scale: float):
        options = OfaOptions(lambda_step=0.1 * scale, lambda_sharp=0.01 * scale)
        guidance = GuidanceConfig(measure_alignment=False, ofa=options)
        optim = OptimConfig(steps=5, batch_size=4, lr=5e-2)
        return train(tiny(tmp_path / folder, guidance=guidance, optim=optim), show_progress=False)

    one, ten = ofa("one", 1.0), ofa("ten", 10.0)
    curves = one.record["curves"]
    measured = [s for s, v in enumerate(curves["task_grad_norm"]) if v is not None]
    assert measured == [0, 4]
    assert curves["terms_to_task"][1] is None
    # at step 0 both runs sit at the same parameters on the same batch: ∇CE is LayerNorm tuning's
    assert curves["task_grad_norm"][0] == pytest.approx(
        ln.record["curves"]["grad_norm"][0], rel=1e-5
    )
    assert curves["grad_norm"][0] != pytest.approx(curves["task_grad_norm"][0], rel=1e-3)
    # ∇terms is linear in the weights at fixed parameters
    r1, r10 = curves["terms_to_task"][0], ten.record["curves"]["terms_to_task"][0]
    assert r1 > 0 and r10 == pytest.approx(10 * r1, rel=1e-3)
    # measuring changes no number: a run that never measures takes the very same steps
    monkeypatch.setattr(term_share, "measured", lambda step: False)
    quiet = ofa("quiet", 1.0)
    assert all(v is None for v in quiet.record["curves"]["task_grad_norm"])
    assert quiet.record["curves"]["loss"] == curves["loss"]
    for p, q in zip(one.adapted.trainable.values(), quiet.adapted.trainable.values(), strict=True):
        assert torch.equal(p, q)
