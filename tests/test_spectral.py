"""Spectral parameter coordination: graphs, filter, regulariser, and runs on a tiny model."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from peft.tuners.lora import LoraLayer
from tiny_cli import tiny_train

from gradguide import fit as fit_mod
from gradguide import train as train_mod
from gradguide.errors import GradguideError
from gradguide.guidance import BuildContext, build_loss_terms, build_transforms, parse_guidance
from gradguide.guidance.graphs import (
    build_graph,
    graph_from_adjacency,
    knn_adjacency,
    laplacian_matrix,
)
from gradguide.guidance.spectral import BASES_FILE, SpectralGraphs, SpectralOptions, response
from gradguide.methods import MethodOptions, get_method
from gradguide.models import load_model
from gradguide.train import GuidanceConfig, OptimConfig, TrainConfig, train, validate

F64 = torch.float64


def ring(n: int) -> torch.Tensor:
    """Adjacency of the cycle C_n (unit weights)."""
    w = torch.zeros(n, n, dtype=F64)
    for i in range(n):
        w[i, (i + 1) % n] = w[(i + 1) % n, i] = 1.0
    return w


def random_graph(n: int, seed: int, laplacian: str = "combinatorial"):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, 7, generator=gen, dtype=F64)
    return build_graph(rows, knn=4, laplacian=laplacian, dtype=F64)


# ------------------------------------------------------------------------------------------
# The filter


@pytest.mark.parametrize("laplacian", ["combinatorial", "normalised"])
def test_filter_with_unit_response_is_the_identity(laplacian):
    g = random_graph(20, 0, laplacian)
    x = torch.randn(20, 5, dtype=F64)
    torch.testing.assert_close(g.filter(x, torch.ones(20, dtype=F64)), x, rtol=0, atol=1e-12)
    opts = SpectralOptions(response="inverse", alpha=0.0)
    torch.testing.assert_close(g.filter(x, response(g.eigenvalues, opts)), x, rtol=0, atol=1e-12)


def test_low_pass_removes_exactly_the_high_frequencies_of_a_known_signal():
    # On the cycle C_n (combinatorial L) the eigenvalues are 2 − 2cos(2πk/n): 0 for the constant,
    # 2 − 2cos(2π/n) for the pair cos/sin(2πi/n), and the maximum 4 for (−1)^i.
    n = 16
    g = graph_from_adjacency(ring(n), "combinatorial", dtype=F64)
    i = torch.arange(n, dtype=F64)
    low = 3.0 + torch.cos(2 * math.pi * i / n) - 0.5 * torch.sin(2 * math.pi * i / n)
    high = 0.7 * (-1.0) ** i
    x = torch.stack([low + high, low, high], dim=1)
    keep3 = response(g.eigenvalues, SpectralOptions(response="lowk", k_low=3))
    out = g.filter(x, keep3)
    torch.testing.assert_close(out[:, 0], low, rtol=0, atol=1e-10)
    torch.testing.assert_close(out[:, 1], low, rtol=0, atol=1e-10)
    torch.testing.assert_close(out[:, 2], torch.zeros(n, dtype=F64), rtol=0, atol=1e-10)
    # the inverse response scales the λ = 4 component by 1/(1 + 4α) and keeps the constant
    alpha = 0.5
    inv = g.filter(x[:, 2:3], response(g.eigenvalues, SpectralOptions(alpha=alpha)))
    torch.testing.assert_close(inv[:, 0], high / (1 + 4 * alpha), rtol=0, atol=1e-10)
    const = torch.ones(n, 1, dtype=F64)
    torch.testing.assert_close(g.filter(const, response(g.eigenvalues, SpectralOptions())), const)
    assert float(g.eigenvalues[-1]) == pytest.approx(4.0, abs=1e-12)


# ------------------------------------------------------------------------------------------
# The regulariser


@pytest.mark.parametrize("laplacian", ["combinatorial", "normalised"])
def test_quadratic_form_equals_the_edge_sum(laplacian):
    """tr(XᵀLX) = ½ Σ_ij w_ij ‖x_i − x_j‖² over ordered pairs (rows x_i / √d_i if normalised)."""
    g = random_graph(15, 1, laplacian)
    x = torch.randn(15, 6, dtype=F64)
    w = g.adjacency()
    lap = g.laplacian_dense()
    dense = torch.trace(x.T @ lap @ x)
    d = w.sum(1)
    y = x / d.sqrt()[:, None] if laplacian == "normalised" else x
    pairs = 0.5 * sum(
        float(w[i, j]) * float(((y[i] - y[j]) ** 2).sum()) for i in range(15) for j in range(15)
    )
    assert float(dense) == pytest.approx(pairs, rel=1e-12)
    assert float(g.dirichlet(x)) == pytest.approx(pairs, rel=1e-12)
    assert pairs > 0


def test_lora_cheap_form_equals_the_materialised_form():
    g = random_graph(12, 2, "normalised")
    gen = torch.Generator().manual_seed(3)
    b = torch.randn(12, 4, generator=gen, dtype=F64)
    a = torch.randn(4, 9, generator=gen, dtype=F64)
    s = 2.0
    lap = g.laplacian_dense()
    delta = s * b @ a
    materialised = torch.trace(delta.T @ lap @ delta)
    product_form = s**2 * ((b.T @ lap @ b) * (a @ a.T)).sum()
    cheap = s**2 * g.dirichlet_lowrank(b, a)
    assert float(cheap) == pytest.approx(float(materialised), rel=1e-12)
    assert float(product_form) == pytest.approx(float(materialised), rel=1e-12)
    # the high-frequency bookkeeping agrees too
    e_cheap = s**2 * g.frequency_energy_lowrank(b, a)
    torch.testing.assert_close(e_cheap, g.frequency_energy(delta))


def test_regulariser_gradients_match_analytic_and_finite_differences():
    g = random_graph(10, 4, "normalised")
    lap = g.laplacian_dense()
    x = torch.randn(10, 3, dtype=F64, requires_grad=True)
    (gx,) = torch.autograd.grad(g.dirichlet(x), x)
    torch.testing.assert_close(gx, 2 * lap @ x.detach())
    b = torch.randn(10, 2, dtype=F64, requires_grad=True)
    a = torch.randn(2, 5, dtype=F64, requires_grad=True)
    gb, ga = torch.autograd.grad(g.dirichlet_lowrank(b, a), (b, a))
    m = a.detach() @ a.detach().T
    torch.testing.assert_close(gb, 2 * lap @ b.detach() @ m)
    torch.testing.assert_close(ga, 2 * b.detach().T @ lap @ b.detach() @ a.detach())
    assert torch.autograd.gradcheck(g.dirichlet, (x,))
    assert torch.autograd.gradcheck(g.dirichlet_lowrank, (b, a))
    assert torch.autograd.gradgradcheck(g.dirichlet_lowrank, (b, a))  # SGG's HVP goes through it


# ------------------------------------------------------------------------------------------
# The graphs


def two_clusters() -> torch.Tensor:
    """Rows in two groups on disjoint coordinates (cosine 0 across: no edge), a fifth dim free."""
    gen = torch.Generator().manual_seed(5)
    a = torch.zeros(6, 5, dtype=F64)
    b = torch.zeros(5, 5, dtype=F64)
    a[:, 0] = 1.0 + 0.05 * torch.randn(6, generator=gen, dtype=F64)
    a[:, 2] = 0.05 * torch.randn(6, generator=gen, dtype=F64)
    b[:, 1] = 1.0 + 0.05 * torch.randn(5, generator=gen, dtype=F64)
    b[:, 3] = 0.05 * torch.randn(5, generator=gen, dtype=F64)
    return torch.cat([a, b])


@pytest.mark.parametrize("similarity", ["cosine", "gaussian"])
@pytest.mark.parametrize("laplacian", ["combinatorial", "normalised"])
@pytest.mark.parametrize("symmetrise", ["max", "mean"])
def test_graphs_are_symmetric_non_negative_with_a_zero_per_component(
    similarity, laplacian, symmetrise
):
    rows = two_clusters()
    w = knn_adjacency(rows, 3, similarity, symmetrise)
    assert torch.equal(w, w.T) and bool((w >= 0).all()) and bool((w.diagonal() == 0).all())
    assert float(w[:6, 6:].abs().sum()) == 0.0 and float(w[:6, :6].sum()) > 0
    g = build_graph(
        rows, knn=3, similarity=similarity, symmetrise=symmetrise, laplacian=laplacian, dtype=F64
    )
    zeros = int((g.eigenvalues.abs() < 1e-10).sum())
    assert zeros == 2
    assert bool((g.eigenvalues > -1e-10).all())
    if laplacian == "normalised":
        assert float(g.eigenvalues[-1]) <= 2.0 + 1e-10
    lap = g.laplacian_dense()
    torch.testing.assert_close(lap, laplacian_matrix(w, laplacian), rtol=0, atol=1e-15)
    # U Λ Uᵀ reproduces L
    u, lam = g.eigenvectors, g.eigenvalues
    torch.testing.assert_close(u @ torch.diag(lam) @ u.T, lap, rtol=0, atol=1e-10)


def test_an_isolated_node_is_its_own_component_in_both_laplacians():
    rows = torch.cat([two_clusters(), torch.tensor([[0, 0, 0, 0, 1.0]], dtype=F64)])
    for laplacian in ("combinatorial", "normalised"):
        g = build_graph(rows, knn=3, similarity="cosine", laplacian=laplacian, dtype=F64)
        assert int((g.eigenvalues.abs() < 1e-10).sum()) == 3, laplacian


# ------------------------------------------------------------------------------------------
# Runs on the tiny model


def tiny_cfg(tmp_path, method="lora", steps=4, **guidance) -> TrainConfig:
    spectral = guidance.pop("spectral", SpectralOptions(knn=3))
    return TrainConfig(
        model="tiny-llama",
        task="demo-sentiment",
        shots=8,
        method=method,
        out=str(tmp_path),
        optim=OptimConfig(steps=steps, batch_size=4, lr=5e-3),
        guidance=GuidanceConfig(spectral=spectral, **guidance),
    )


def test_lora_spectral_run_records_the_term_and_the_summary(tmp_path):
    plain = train(tiny_cfg(tmp_path / "plain"), show_progress=False)
    r = train(tiny_cfg(tmp_path / "spec", use="spectral"), show_progress=False)
    rec = json.loads((r.run_dir / "record.json").read_text())
    g = rec["guidance"]
    assert g["loss_terms"] == ["spectral-reg"] and g["transforms"] == ["spectral-filter"]
    reg = rec["curves"]["term_spectral-reg"]
    assert len(reg) == 4 and reg[0] == 0.0 and all(v > 0 for v in reg[1:])  # B starts at zero
    assert rec["dynamics"]["mean_term_spectral-reg"] == pytest.approx(sum(reg) / 4)
    assert rec["dynamics"]["loss_auc"] is not None
    s = g["term_summaries"]["spectral-reg"]
    assert s["graphs"] == 4 and s["skipped"] == [] and s["bases"] == "built"
    assert [m["nodes"] for m in s["matrices"]] == [32, 16, 32, 16]  # q_proj, v_proj rows
    assert len(s["spectra"]) == 3 and all(
        v[0] == pytest.approx(0, abs=1e-5) for v in s["spectra"].values()
    )
    f = g["term_summaries"]["spectral-filter"]
    assert f["response"] == "inverse" and 0 < f["mean_gain"] < 1
    assert (r.run_dir / BASES_FILE).is_file()
    assert plain.record["curves"]["loss"][1:] != rec["curves"]["loss"][1:]
    # the end state both summaries report, by hand from the trained adapter: ΔW = s·B·A of each
    # LoRA module, the dense Laplacian of a graph rebuilt from its frozen base rows
    energy = square = high = 0.0
    for module in r.adapted.model.modules():
        if not isinstance(module, LoraLayer):
            continue
        b, a = module.lora_B["default"].weight, module.lora_A["default"].weight
        delta = module.scaling["default"] * (b @ a).detach().double()
        graph = build_graph(module.get_base_layer().weight.detach(), knn=3)
        energy += float(torch.trace(delta.T @ graph.laplacian_dense().double() @ delta))
        square += float(delta.pow(2).sum())
        high += float((graph.eigenvectors.double().T @ delta)[graph.n // 2 :].pow(2).sum())
    assert square > 0 and 0 < high < square
    assert s["energy"] == pytest.approx(energy, rel=1e-4)
    assert s["reg_final"] == pytest.approx(0.1 * energy, rel=1e-4)
    for summary in (s, f):
        assert summary["delta_norm"] == pytest.approx(square**0.5, rel=1e-5)
        assert summary["high_share"] == pytest.approx(high / square, rel=1e-4)


def test_zero_weight_regulariser_reproduces_plain_lora_bit_for_bit(tmp_path):
    plain = train(tiny_cfg(tmp_path / "plain"), show_progress=False)
    zero = train(
        tiny_cfg(tmp_path / "zero", use="spectral-reg", spectral=SpectralOptions(lambda_spec=0.0)),
        show_progress=False,
    )
    assert plain.record["curves"]["loss"] == zero.record["curves"]["loss"]
    for name, p in plain.adapted.trainable.items():
        assert torch.equal(p, zero.adapted.trainable[name])
    strong = train(
        tiny_cfg(tmp_path / "strong", use="spectral-reg", spectral=SpectralOptions(lambda_spec=50)),
        show_progress=False,
    )
    a = strong.record["guidance"]["term_summaries"]["spectral-reg"]["energy"]
    b = train(
        tiny_cfg(tmp_path / "weak", use="spectral-reg", spectral=SpectralOptions(lambda_spec=1e-6)),
        show_progress=False,
    ).record["guidance"]["term_summaries"]["spectral-reg"]["energy"]
    assert a < b  # the regulariser lowers the Dirichlet energy of the update


def test_filter_transform_rewrites_gradients_of_b(tmp_path):
    lm = load_model("tiny-llama", seed=0)
    torch.manual_seed(0)
    adapted = get_method("lora").apply(lm, MethodOptions(lora_r=4))
    cfg = GuidanceConfig(spectral=SpectralOptions(knn=3, response="lowk", k_low=2))
    ctx = BuildContext(lm=lm, adapted=adapted, config=cfg, seed=0, run_dir=tmp_path)
    (flt,) = build_transforms(parse_guidance("spectral-filter"), ctx)
    graphs = flt.graphs
    grads = {}
    for name, p in adapted.trainable.items():
        p.grad = torch.randn_like(p)
        grads[name] = p.grad.clone()
    flt.apply(adapted.trainable)
    targets = {e.target: e for e in graphs.entries}
    assert len(targets) == 4 and all("lora_B" in t for t in targets)
    for name, p in adapted.trainable.items():
        if name in targets:
            u = targets[name].graph.eigenvectors[:, :2]
            torch.testing.assert_close(p.grad, u @ (u.T @ grads[name]), rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(p.grad, grads[name])  # A is left alone
    # the loss term built in the same context shares the graphs (built once)
    (reg,) = build_loss_terms(parse_guidance("spectral-reg"), ctx)
    assert reg.graphs is graphs


def test_full_fine_tuning_graphs_linear_weights_and_skips_large_ones(tmp_path):
    spectral = SpectralOptions(knn=3, max_nodes=64)
    r = train(
        tiny_cfg(tmp_path, method="full", use="spectral", spectral=spectral, steps=3),
        show_progress=False,
    )
    s = r.record["guidance"]["term_summaries"]["spectral-reg"]
    # 2 layers x (q, k, v, o, gate, up, down); the tied 600-row embedding / LM head is skipped
    assert s["graphs"] == 14
    assert s["skipped"] == [
        {"name": "model.embed_tokens.weight", "rows": 600, "reason": "rows > max_nodes"}
    ]
    assert r.record["curves"]["term_spectral-reg"][0] == 0.0
    assert r.record["curves"]["term_spectral-reg"][-1] > 0
    assert s["delta_norm"] > 0


def test_sgg_and_spectral_combine(tmp_path):
    r = train(tiny_cfg(tmp_path, use="sgg,spectral", steps=3), show_progress=False)
    rec = r.record
    assert rec["guidance"]["terms"] == ["dir", "mag"]
    assert rec["guidance"]["loss_terms"] == ["spectral-reg"]
    assert all(v is not None for v in rec["curves"]["penalty_dir"])
    assert all(v is not None for v in rec["curves"]["term_spectral-reg"])


def test_resume_is_exact_and_reloads_the_bases(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path / "full", use="spectral", steps=6)
    cfg = dataclasses.replace(cfg, checkpoint_every=2)
    whole = train(cfg, show_progress=False)

    real = fit_mod.save_checkpoint
    calls = []

    def crash_after_first(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt  # the process dies right after its first checkpoint

    monkeypatch.setattr(fit_mod, "save_checkpoint", crash_after_first)
    cut = dataclasses.replace(cfg, out=str(tmp_path / "cut"))
    with pytest.raises(KeyboardInterrupt):
        train(cut, show_progress=False)
    monkeypatch.setattr(fit_mod, "save_checkpoint", real)
    (run_dir,) = list((tmp_path / "cut").iterdir())
    assert not (run_dir / "record.json").exists() and (run_dir / BASES_FILE).is_file()
    resumed = train(train_mod.load_run_config(run_dir), resume=run_dir, show_progress=False)
    a, b = whole.record, resumed.record
    assert a["curves"]["loss"] == b["curves"]["loss"]
    assert a["curves"]["term_spectral-reg"] == b["curves"]["term_spectral-reg"]
    assert a["metrics"] == b["metrics"]
    sa = a["guidance"]["term_summaries"]["spectral-reg"]
    sb = b["guidance"]["term_summaries"]["spectral-reg"]
    assert sb["bases"] == "loaded" and sa["bases"] == "built"
    assert sa["spectra"] == sb["spectra"]
    for ma, mb in zip(sa["matrices"], sb["matrices"], strict=True):  # all but the build time
        assert {**ma, "build_s": 0} == {**mb, "build_s": 0}
    for name, p in whole.adapted.trainable.items():
        assert torch.equal(p, resumed.adapted.trainable[name])


def test_cached_bases_for_other_options_are_refused(tmp_path):
    lm = load_model("tiny-llama", seed=0)
    adapted = get_method("lora").apply(lm, MethodOptions(lora_r=4))
    args = (adapted.model, adapted.trainable, "lora")
    SpectralGraphs.build(*args, SpectralOptions(knn=3), tmp_path)
    again = SpectralGraphs.build(*args, SpectralOptions(knn=3, alpha=7.0), tmp_path)
    assert again.facts["bases"] == "loaded"  # the response is not part of the graphs
    with pytest.raises(GradguideError, match="other base weights or graph options") as e:
        SpectralGraphs.build(*args, SpectralOptions(knn=4), tmp_path)
    assert e.value.file == str(tmp_path / BASES_FILE)


BAD = [
    ("lambda_spec", -1.0),
    ("lambda_spec", float("nan")),
    ("similarity", "euclid"),
    ("knn", 0),
    ("symmetrise", "min"),
    ("laplacian", "signless"),
    ("response", "highpass"),
    ("alpha", -0.5),
    ("k_low", 0),
    ("max_nodes", 1),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v}" for f, v in BAD])
def test_bad_options_name_the_field(tmp_path, field, value):
    spectral = dataclasses.replace(SpectralOptions(), **{field: value})
    with pytest.raises(GradguideError) as e:
        validate(tiny_cfg(tmp_path, use="spectral", spectral=spectral))
    assert e.value.field == f"guidance.spectral.{field}"


def test_other_methods_are_refused_clearly(tmp_path):
    with pytest.raises(GradguideError, match="apply to full, lora and setfit") as e:
        validate(tiny_cfg(tmp_path, method="prompt", use="spectral-filter"))
    assert e.value.field == "method"
    validate(tiny_cfg(tmp_path, method="prompt"))  # options alone are no reason to refuse
    lm = load_model("tiny-llama", seed=0)
    adapted = get_method("layernorm").apply(lm, MethodOptions())
    with pytest.raises(GradguideError, match="apply to full, lora and setfit"):
        SpectralGraphs.build(adapted.model, adapted.trainable, "layernorm", SpectralOptions())
    lm = load_model("tiny-llama", seed=0)
    adapted = get_method("lora").apply(lm, MethodOptions(lora_r=4))
    with pytest.raises(GradguideError) as e:
        SpectralGraphs.build(adapted.model, adapted.trainable, "lora", SpectralOptions(max_nodes=8))
    assert e.value.field == "guidance.spectral.max_nodes"


def test_cli_compare_recipe_preset_and_run_keys(tmp_path):
    from gradguide.bench.compare import recipe
    from gradguide.bench.grid import expand_grid, load_grid, run_key
    from gradguide.cli import main

    base = tiny_cfg(tmp_path)
    for name in ("spectral", "spectral-reg", "spectral-filter"):
        c = recipe(base, name)
        assert c.method == "lora" and c.guidance.use == name
    spec = load_grid("spectral")
    runs = expand_grid(spec)
    assert len(runs) == 2 * 2 * 4 * 3
    assert {r.config.guidance.use for r in runs} == {
        "",
        "spectral",
        "spectral-reg",
        "spectral-filter",
    }
    # spectral options count in a run's key only when a spectral term is used
    plain = dataclasses.replace(base, guidance=GuidanceConfig())
    other = dataclasses.replace(base, guidance=GuidanceConfig(spectral=SpectralOptions(knn=5)))
    assert run_key(plain) == run_key(other)
    used = dataclasses.replace(base, guidance=GuidanceConfig(use="spectral"))
    used5 = dataclasses.replace(
        base, guidance=GuidanceConfig(use="spectral", spectral=SpectralOptions(knn=5))
    )
    assert run_key(used) != run_key(used5)
    args = tiny_train(
        "--guidance",
        "spectral-reg,spectral-filter",
        "--set",
        "guidance.spectral.knn=3,guidance.spectral.response=exp",
        "--out",
        str(tmp_path / "cli"),
        steps=2,
    )
    assert main(args) == 0
    (run_dir,) = list((tmp_path / "cli").iterdir())
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["config"]["guidance"]["spectral"]["knn"] == 3
    assert rec["guidance"]["term_summaries"]["spectral-filter"]["response"] == "exp"


def test_the_record_says_how_much_of_the_gradient_the_filter_keeps(tmp_path):
    """‖filtered g‖/‖g‖ per step (``transform_keep``), read by the report's sanity check: a
    filter that leaves a sliver of the task gradient is guidance dominating the update."""

    def run(folder: str, k_low: int):
        options = SpectralOptions(knn=3, response="lowk", k_low=k_low)
        return train(
            tiny_cfg(tmp_path / folder, use="spectral-filter", spectral=options),
            show_progress=False,
        ).record["curves"]

    whole = run("whole", 32)  # every eigenvector of every graph (32 and 16 nodes): the identity
    assert whole["transform_keep"] == pytest.approx([1.0] * 4, rel=1e-5)
    two, eight = run("two", 2)["transform_keep"], run("eight", 8)["transform_keep"]
    assert all(0 < k < 1 for k in two + eight)
    assert sum(two) < sum(eight)  # fewer frequencies kept, less of the gradient
    plain = train(tiny_cfg(tmp_path / "plain"), show_progress=False).record["curves"]
    assert "transform_keep" not in plain
