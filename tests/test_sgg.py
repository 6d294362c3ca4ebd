"""SGG: the engine's gradient equals autograd's gradient of L + R(∇L), for every term and mode."""

from __future__ import annotations

import dataclasses
import json
import os
import statistics

import pytest
import torch
import torch.nn.functional as F
from tiny_cli import tiny_train

from gradguide.errors import GradguideError
from gradguide.guidance import build_penalties, parse_guidance
from gradguide.guidance.base import PenaltyContext
from gradguide.guidance.engine import GuidedGradient
from gradguide.guidance.hvp import exact_hvp, fd_hvp, flat
from gradguide.guidance.priors import (
    MEAN_GRADIENT_FILE,
    EmaPrior,
    FixedPrior,
    build_prior,
    load_vector,
)
from gradguide.guidance.sgg import AlignmentPenalty, DirectionPenalty, MagnitudePenalty
from gradguide.methods import MethodOptions, get_method
from gradguide.models import load_model
from gradguide.scoring import candidate_scores
from gradguide.tasks import get_task
from gradguide.train import GuidanceConfig, OptimConfig, TrainConfig, train

LAM = {"dir": 0.7, "mag": 0.3, "align": 0.5}
TAU = 0.05


@pytest.fixture(scope="module")
def batches():
    xs = get_task("demo-sentiment").load("train")
    return xs[:4], xs[4:8]


def setup_model(method: str, dtype: torch.dtype = torch.float32):
    lm = load_model("tiny-llama", seed=0, attn_implementation="eager", dtype=dtype)
    torch.manual_seed(0)
    if method == "full":
        params = [p for p in lm.model.parameters() if p.requires_grad]
        return lm, params
    adapted = get_method("lora").apply(lm, MethodOptions(lora_r=4))
    with torch.no_grad():  # move B off zero so that every LoRA parameter has a gradient
        for name, p in adapted.trainable.items():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return adapted.as_lm(lm), list(adapted.trainable.values())


def loss_closure(lm, batch):
    def loss():
        s = candidate_scores(lm, batch)
        return F.cross_entropy(s, torch.tensor([x.gold for x in batch]))

    return loss


def reference_gradient(loss_fn, source_fn, params, terms, prior, two_sided=False):
    """Autograd's gradient of L_total, built explicitly by double backward."""
    loss = loss_fn()
    g = flat(torch.autograd.grad(loss, params, create_graph=True), params)
    gs = flat(torch.autograd.grad(source_fn(), params, create_graph=two_sided), params)
    if not two_sided:
        gs = gs.detach()
    total = loss
    if "dir" in terms:
        d = prior / prior.norm()
        total = total + LAM["dir"] * (g / g.norm() - d).pow(2).sum()
    if "mag" in terms:
        total = total + LAM["mag"] * (g.norm() - TAU) ** 2
    if "align" in terms:
        total = total + LAM["align"] * (1 - torch.dot(g, gs) / (g.norm() * gs.norm()))
    return flat(torch.autograd.grad(total, params), params)


def penalties(terms):
    out = []
    if "dir" in terms:
        out.append(DirectionPenalty(LAM["dir"]))
    if "mag" in terms:
        out.append(MagnitudePenalty(LAM["mag"], TAU))
    if "align" in terms:
        out.append(AlignmentPenalty(LAM["align"]))
    return out


TERMS = [("dir",), ("mag",), ("align",), ("dir", "mag", "align")]


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("terms", TERMS, ids=["+".join(t) for t in TERMS])
def test_engine_matches_autograd(batches, method, terms):
    lm, params = setup_model(method)
    target, source = batches
    loss_fn, source_fn = loss_closure(lm, target), loss_closure(lm, source)
    gen = torch.Generator().manual_seed(1)
    prior_vec = torch.randn(sum(p.numel() for p in params), generator=gen)
    expected = reference_gradient(loss_fn, source_fn, params, terms, prior_vec)
    g_plain = flat(torch.autograd.grad(loss_fn(), params), params)
    # the penalty must really change the gradient, or the test proves nothing
    assert (expected - g_plain).norm() > 1e-4 * expected.norm()
    for mode, tol in (("exact", 1e-5), ("fd", 1e-2)):
        prior = FixedPrior(prior_vec / prior_vec.norm(), "test")
        engine = GuidedGradient(penalties(terms), hvp=mode, prior=prior)
        stats = engine.backward(loss_fn, params, 0, source_fn)
        got = flat([p.grad for p in params], params)
        err = float((got - expected).norm() / expected.norm())
        assert err < tol, f"{mode}: relative error {err:.2e}"
        assert stats.penalty_applied and set(stats.penalties) == set(terms)


def test_two_sided_alignment_matches_autograd(batches):
    lm, params = setup_model("lora")
    loss_fn, source_fn = loss_closure(lm, batches[0]), loss_closure(lm, batches[1])
    prior = torch.ones(sum(p.numel() for p in params))
    expected = reference_gradient(loss_fn, source_fn, params, ("align",), prior, two_sided=True)
    one_sided = reference_gradient(loss_fn, source_fn, params, ("align",), prior)
    assert (expected - one_sided).norm() > 1e-6
    engine = GuidedGradient(penalties(("align",)), hvp="exact", two_sided=True)
    engine.backward(loss_fn, params, 0, source_fn)
    got = flat([p.grad for p in params], params)
    assert float((got - expected).norm() / expected.norm()) < 1e-5


def test_hvp_modes_agree_with_each_other(batches):
    lm, params = setup_model("lora")
    loss_fn = loss_closure(lm, batches[0])
    v = torch.randn(sum(p.numel() for p in params))
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    exact = exact_hvp(grads, params, v)
    g = flat([x.detach() for x in grads], params)
    before = [p.detach().clone() for p in params]
    approx = fd_hvp(loss_fn, params, g, v)
    assert all(torch.equal(a, b) for a, b in zip(before, params, strict=True))  # θ restored exactly
    assert float((approx - exact).norm() / exact.norm()) < 5e-3


def test_lazy_applies_every_kth_step_with_weight_k(batches):
    lm, params = setup_model("lora")
    loss_fn = loss_closure(lm, batches[0])
    exact = GuidedGradient(penalties(("mag",)), hvp="exact")
    exact.backward(loss_fn, params, 0)
    one = flat([p.grad for p in params], params)
    g = flat(torch.autograd.grad(loss_fn(), params), params)
    lazy = GuidedGradient(penalties(("mag",)), hvp="exact", lazy=3)
    applied = []
    for step in range(6):
        stats = lazy.backward(loss_fn, params, step)
        applied.append(stats.penalty_applied)
        got = flat([p.grad for p in params], params)
        if step % 3 == 0:
            torch.testing.assert_close(got, g + 3 * (one - g), rtol=1e-4, atol=1e-6)
        else:
            torch.testing.assert_close(got, g, rtol=0, atol=0)
    assert applied == [True, False, False, True, False, False]


def test_direction_penalty_ignores_prior_scale():
    g = torch.randn(50, dtype=torch.float64)
    d = torch.randn(50, dtype=torch.float64)
    p = DirectionPenalty(1.0)
    a = p.value(g, PenaltyContext(prior=d))
    b = p.value(g, PenaltyContext(prior=123.0 * d))
    assert float(a) == pytest.approx(float(b), rel=1e-12)


def test_degenerate_gradients_are_guarded():
    zero = torch.zeros(10, dtype=torch.float64, requires_grad=True)
    d = torch.ones(10)
    for pen in (DirectionPenalty(1.0), AlignmentPenalty(1.0)):
        val = pen.value(zero, PenaltyContext(prior=d, source=d))
        assert float(val) == 0.0 and not val.requires_grad
    mag = MagnitudePenalty(2.0, 0.5)
    assert float(mag.value(zero, PenaltyContext())) == pytest.approx(2.0 * 0.25)
    assert MagnitudePenalty(1.0, 0.0).value(torch.ones(4), PenaltyContext()) == pytest.approx(4.0)
    adaptive = MagnitudePenalty(1.0, None)
    adaptive.value(torch.full((4,), 2.0), PenaltyContext())
    assert adaptive.tau == pytest.approx(4.0)


def test_nan_loss_is_reported_not_applied(batches):
    lm, params = setup_model("lora")
    for p in params:
        p.grad = torch.full_like(p, 7.0)
    engine = GuidedGradient(penalties(("mag",)), hvp="fd")

    def bad():
        return loss_closure(lm, batches[0])() * float("nan")

    stats = engine.backward(bad, params, 0)
    assert not stats.finite
    assert all(torch.all(p.grad == 7.0) for p in params)  # nothing written


def tiny_cfg(tmp_path, **guidance):
    return TrainConfig(
        model="tiny-llama",
        task="demo-sentiment",
        shots=8,
        method="lora",
        out=str(tmp_path),
        optim=OptimConfig(steps=4, batch_size=4, lr=5e-3),
        guidance=GuidanceConfig(**guidance),
    )


@pytest.mark.parametrize("hvp", ["exact", "fd"])
def test_guided_training_tends_to_plain_training_linearly_as_lambda_goes_to_zero(batches, hvp):
    """θ_λ − θ_plain after a few SGD steps is first order in λ with nothing left at λ = 0: a
    guided path that differed from plain training by a λ-free amount (another batch, g scaled
    by lazy, a parameter order mixed up, gradients accumulated) or weighted the penalties other
    than by λ would fail. (λ = 0 itself proves nothing: the engine drops zero-weight terms.)
    Plain SGD in float64: Adam's first step is sign(g), which a tiny change flips wherever the
    gradient is tiny or zero (LoRA's A at B = 0), so Adam runs are not continuous in λ."""
    target, source = batches
    prior = torch.randn(sum(p.numel() for p in setup_model("lora")[1]), dtype=torch.float64)

    def trained(lam: float) -> torch.Tensor:
        lm, params = setup_model("lora", torch.float64)
        terms = [DirectionPenalty(lam), MagnitudePenalty(lam, TAU), AlignmentPenalty(lam)]
        engine = GuidedGradient(
            terms if lam else [], hvp=hvp, prior=FixedPrior(prior / prior.norm(), "test")
        )
        for step in range(3):  # one row per batch: a padded float64 batch scores NaN
            loss_fn, source_fn = loss_closure(lm, [target[step]]), loss_closure(lm, source[:1])
            engine.backward(loss_fn, params, step, source_fn)
            with torch.no_grad():
                for p in params:
                    p.sub_(0.5 * p.grad)
        return flat([p.detach() for p in params], params)

    plain, one, two = trained(0.0), trained(1e-5), trained(2e-5)
    d1, d2 = one - plain, two - plain
    assert float(d1.norm()) > 1e-6 * float(plain.norm())  # the penalties acted
    assert float((d2 - 2 * d1).norm()) < 0.02 * float(d1.norm())


def test_sgg_run_records_penalties_dynamics_and_prior(tmp_path):
    r = train(tiny_cfg(tmp_path, use="sgg", source_task="demo-sentiment"), show_progress=False)
    rec = json.loads((r.run_dir / "record.json").read_text())
    assert (
        rec["guidance"]["terms"] == ["dir", "mag", "align"]
        and rec["guidance"]["prior"] == "pretrain"
    )
    assert all(v is not None for v in rec["curves"]["penalty_dir"])
    assert all(v is not None for v in rec["curves"]["cos_source"])
    # the run-level measures are those of its own curves, recomputed here independently
    dyn, curves = rec["dynamics"], rec["curves"]
    norms = curves["grad_norm"]
    assert len(norms) == 4 and statistics.pstdev(norms) > 0
    cv = statistics.pstdev(norms) / statistics.fmean(norms)
    assert dyn["gradient_stability"] == pytest.approx(1 / (1 + cv), rel=1e-12)
    cosines = curves["cos_prior"]
    assert all(c is not None for c in cosines)
    assert dyn["directional_alignment"] == pytest.approx(statistics.fmean(cosines), rel=1e-12)
    names = list(r.adapted.trainable)
    params = list(r.adapted.trainable.values())
    prior = load_vector(r.run_dir / "prior.safetensors", names, params)
    assert float(prior.norm()) == pytest.approx(1.0, rel=1e-5)
    # the saved mean gradient is the prior of a later run (task:RUN_DIR): a one-step run's own
    # mean gradient is its g_0, so its recorded cos(g_0, d_prior) is the dot of the two files
    cfg = tiny_cfg(tmp_path, use="sgg-dir", prior=f"task:{r.run_dir}")
    one_step = OptimConfig(steps=1, batch_size=4, lr=5e-3)
    again = train(dataclasses.replace(cfg, optim=one_step), show_progress=False)
    assert again.record["guidance"]["prior"] == f"task:{r.run_dir}"
    first = load_vector(r.run_dir / MEAN_GRADIENT_FILE, names, params)
    g0 = load_vector(again.run_dir / MEAN_GRADIENT_FILE, names, params)
    cos = float(torch.dot(g0, first) / (g0.norm() * first.norm()))
    assert abs(cos) > 0.05  # a direction the check can tell from a random one
    assert again.record["curves"]["cos_prior"] == [pytest.approx(cos, rel=1e-4)]
    assert again.record["curves"]["penalty_dir"] == [pytest.approx(0.1 * (2 - 2 * cos), rel=1e-4)]


def test_guidance_errors(tmp_path):
    with pytest.raises(GradguideError, match="unknown guidance"):
        parse_guidance("sgg,magic")
    with pytest.raises(GradguideError, match="source"):
        build_penalties(["sgg-align"], GuidanceConfig(), has_source=False)
    assert [p.name for p in build_penalties(["sgg"], GuidanceConfig(), has_source=False)] == [
        "dir",
        "mag",
    ]
    with pytest.raises(GradguideError) as e:
        train(tiny_cfg(tmp_path, use="sgg", hvp="magic"), show_progress=False)
    assert e.value.field == "guidance.hvp"
    lm, params = setup_model("lora")
    with pytest.raises(GradguideError, match="unknown prior"):
        build_prior("sideways", lm, dict(enumerate(params)), None)


def test_ema_prior_excludes_the_current_gradient(batches):
    """The engine reads d_prior before the prior sees g_t: step t's cosine and direction penalty
    use the EMA of g_0 … g_{t−1} (an engine that let the prior observe g_t first would not)."""
    lm, params = setup_model("lora")
    beta = 0.5
    engine = GuidedGradient([DirectionPenalty(1.0)], hvp="exact", prior=EmaPrior(beta))
    xs = batches[0] + batches[1]
    seen: list[torch.Tensor] = []
    for step in range(3):
        stats = engine.backward(loss_closure(lm, xs[2 * step : 2 * step + 2]), params, step)
        g = stats.gradient
        assert g is not None
        if step == 0:  # no prior yet: no cosine, no direction penalty
            assert stats.cos_prior is None and stats.penalties == {"dir": 0.0}
        else:
            ema = seen[0]
            for past in seen[1:]:
                ema = beta * ema + (1 - beta) * past
            cos = float(torch.dot(g, ema) / (g.norm() * ema.norm()))
            assert stats.cos_prior == pytest.approx(cos, rel=1e-5)
            assert stats.penalties["dir"] == pytest.approx(2 - 2 * cos, rel=1e-5)
            with_current = beta * ema + (1 - beta) * g
            wrong = float(torch.dot(g, with_current) / (g.norm() * with_current.norm()))
            assert abs(wrong - cos) > 1e-3  # the two readings differ measurably
        seen.append(g.clone())


def test_exact_mode_explains_fused_attention():
    lm = load_model("tiny-llama", seed=0, attn_implementation="sdpa")
    params = [p for p in lm.model.parameters()]
    xs = get_task("demo-sentiment").load("train")[:2]
    # the engine runs an exact step on SDPA's math kernel (tests/test_device.py: equals eager) …
    stats = GuidedGradient(penalties(("mag",)), hvp="exact").backward(loss_closure(lm, xs), params)
    assert stats.penalty_applied and stats.finite
    # … and a double backward through the fused kernel outside it is explained
    grads = torch.autograd.grad(loss_closure(lm, xs)(), params, create_graph=True)
    with pytest.raises(GradguideError, match="eager"):
        exact_hvp(grads, params, flat(grads, params).detach())


def test_compare_accepts_sgg_and_ablations_on_the_same_samples(tmp_path):
    from gradguide.bench.compare import compare, recipe

    base = tiny_cfg(tmp_path)
    assert (
        recipe(base, "sgg-mag").guidance.use == "sgg-mag" and recipe(base, "sgg").method == "lora"
    )
    assert recipe(base, "lora").guidance.use == ""
    with pytest.raises(GradguideError):
        recipe(base, "sgg-magic")
    rows = compare(base, ["lora", "sgg-mag"], [1])
    assert [r.method for r in rows] == ["lora", "sgg-mag"]
    records = [
        json.loads((tmp_path / d / "record.json").read_text()) for d in sorted(os.listdir(tmp_path))
    ]
    assert records[0]["data"]["train_ids"] == records[1]["data"]["train_ids"]


def test_cli_train_with_guidance_flags(tmp_path, capsys):
    from gradguide.cli import main

    args = tiny_train(
        "--guidance",
        "sgg",
        "--lambda-dir",
        "0.2",
        "--tau",
        "0.5",
        "--hvp",
        "fd",
        "--lazy",
        "2",
        "--source-task",
        "demo-sentiment",
        "--out",
        str(tmp_path),
    )
    assert main(args) == 0
    (run_dir,) = list(tmp_path.iterdir())
    cfg = json.loads((run_dir / "record.json").read_text())["config"]["guidance"]
    assert (cfg["use"], cfg["lambda_dir"], cfg["tau"], cfg["lazy"]) == ("sgg", 0.2, 0.5, 2)
    rec = json.loads((run_dir / "record.json").read_text())
    assert [v is not None for v in rec["curves"]["penalty_mag"]] == [True, False, True]


def test_saved_prior_is_reusable_as_a_file(tmp_path):
    first = train(tiny_cfg(tmp_path / "a", use="sgg-dir"), show_progress=False)
    saved = first.run_dir / "prior.safetensors"
    again = train(tiny_cfg(tmp_path / "b", use="sgg-dir", prior=str(saved)), show_progress=False)
    assert again.record["guidance"]["prior"] == f"file:{saved}"
    # same initial parameters, same prior: the direction penalties agree step for step at start
    assert again.record["curves"]["penalty_dir"][0] == pytest.approx(
        first.record["curves"]["penalty_dir"][0], rel=1e-5
    )
