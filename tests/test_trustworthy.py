"""Defects that make a guided run train on noise or on evaluation data, each caught by a test.

* dropout: a finite-difference HVP must see the same dropout masks at θ and θ + εv;
* bf16: a finite difference below bf16's resolution is refused, not run;
* the pretrain prior's default corpus shares no text with any evaluation split.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from gradguide.errors import GradguideError
from gradguide.guidance.engine import GuidedGradient
from gradguide.guidance.hvp import exact_hvp, fd_hvp, flat
from gradguide.guidance.priors import CORPUS_FILE, FixedPrior, reference_corpus
from gradguide.guidance.rng import Replayed
from gradguide.guidance.sgg import DirectionPenalty, MagnitudePenalty
from gradguide.models import load_model
from gradguide.scoring import candidate_scores
from gradguide.tasks import get_task, list_tasks
from gradguide.tasks.dataroot import resolve_data_root
from gradguide.train import GuidanceConfig, OptimConfig, TrainConfig, train


@pytest.fixture(scope="module")
def batch():
    return get_task("demo-sentiment").load("train")[:4]


def bert_in_train_mode(batch):
    """tiny-bert (hidden and attention dropout 0.1) in train mode, eager attention, and the
    parameters the scoring uses (the pooler is not)."""
    lm = load_model("tiny-bert", seed=0, attn_implementation="eager")
    lm.model.train()
    assert lm.model.config.hidden_dropout_prob > 0
    params = [p for p in lm.model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(closure(lm, batch)(), params, allow_unused=True)
    return lm, [p for p, g in zip(params, grads, strict=True) if g is not None]


def closure(lm, batch):
    def loss():
        s = candidate_scores(lm, batch)
        return F.cross_entropy(s, torch.tensor([x.gold for x in batch]))

    return loss


def test_dropout_really_changes_the_loss_between_calls(batch):
    # the premise of the two tests below: without replay, two calls see different masks
    lm, _ = bert_in_train_mode(batch)
    loss = closure(lm, batch)
    assert float(loss().detach()) != float(loss().detach())
    replay = Replayed(loss)
    first = float(replay().detach())
    assert all(float(replay().detach()) == first for _ in range(2))


def test_fd_hvp_matches_exact_hvp_under_the_same_dropout_masks(batch):
    lm, params = bert_in_train_mode(batch)
    v = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(11)
    grads = torch.autograd.grad(closure(lm, batch)(), params, create_graph=True)
    exact = exact_hvp(grads, params, v)  # one forward: one set of masks
    torch.manual_seed(11)
    loss = Replayed(closure(lm, batch))
    g = flat(torch.autograd.grad(loss(), params), params)
    approx = fd_hvp(loss, params, g, v)
    assert float((approx - exact).norm() / exact.norm()) < 2e-2


def test_guided_gradient_matches_double_backward_under_dropout(batch):
    """The engine's fd gradient of L + R(∇L) in train mode equals autograd's under fixed masks."""
    lm, params = bert_in_train_mode(batch)
    n = sum(p.numel() for p in params)
    d = torch.randn(n, generator=torch.Generator().manual_seed(5))
    d = d / d.norm()
    lam_dir, lam_mag, tau = 0.5, 0.5, 0.1
    torch.manual_seed(7)
    loss = closure(lm, batch)()
    g = flat(torch.autograd.grad(loss, params, create_graph=True), params)
    total = loss + lam_dir * (g / g.norm() - d).pow(2).sum() + lam_mag * (g.norm() - tau) ** 2
    expected = flat(torch.autograd.grad(total, params), params)
    g_plain = g.detach()
    assert (expected - g_plain).norm() > 0.1 * g_plain.norm()  # the penalties matter here
    for mode, tol in (("exact", 1e-4), ("fd", 5e-2)):  # without replay fd: 14.6
        engine = GuidedGradient(
            [DirectionPenalty(lam_dir), MagnitudePenalty(lam_mag, tau)],
            hvp=mode,
            prior=FixedPrior(d, "test"),
        )
        torch.manual_seed(7)
        stats = engine.backward(closure(lm, batch), params, 0)
        got = flat([p.grad for p in params], params)
        err = float((got - expected).norm() / expected.norm())
        assert err < tol, f"{mode}: relative error {err:.2e}"
        assert stats.penalty_norm == pytest.approx(float((got - g_plain).norm()), rel=1e-3)


def test_a_guided_run_on_a_dropout_model_records_a_sane_ratio(tmp_path):
    """The guard the report reads: ‖guided g‖/‖g‖ stays near 1 on a dropout model (it was ~300)."""
    config = TrainConfig(
        model="tiny-bert",
        task="demo-sentiment",
        shots=8,
        method="lora",
        out=str(tmp_path),
        optim=OptimConfig(steps=6, batch_size=4, lr=5e-3),
        guidance=GuidanceConfig(use="sgg", prior="ema:0.9"),
    )
    record = train(config, show_progress=False).record
    ratio = record["dynamics"]["guided_ratio_median"]
    assert ratio is not None and 0.5 < ratio < 3.0, ratio
    shares = [s for s in record["curves"]["penalty_share"] if s is not None]
    assert len(shares) == 6 and all(0 <= s < 1 for s in shares)
    assert all(c is not None and 0 < c <= 1 for c in record["curves"]["clip_scale"])


def test_fd_hvp_under_autocast_is_refused(batch):
    lm = load_model("tiny-llama", seed=0)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    engine = GuidedGradient([MagnitudePenalty(0.5, 0.1)], hvp="fd")
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        pytest.raises(GradguideError, match="autocast"),
    ):
        engine.backward(closure(lm, batch), params, 0)
    stats = engine.backward(closure(lm, batch), params, 0)  # fp32: runs
    assert stats.penalty_applied and stats.finite


def test_training_refuses_bf16_with_fd_but_not_with_exact(tmp_path):
    def config(hvp: str, use: str = "sgg") -> TrainConfig:
        return TrainConfig(
            model="tiny-llama",
            task="demo-sentiment",
            shots=4,
            bf16=True,
            out=str(tmp_path / hvp / use),
            optim=OptimConfig(steps=1, batch_size=4),
            guidance=GuidanceConfig(use=use, hvp=hvp, prior="ema:0.9"),
        )

    with pytest.raises(GradguideError, match="bf16") as e:
        train(config("fd"), show_progress=False)
    assert e.value.field == "guidance.hvp"
    assert train(config("exact"), show_progress=False).record["skipped_steps"] == []
    # without a gradient penalty there is no finite difference, so bf16 is fine
    assert train(config("fd", use=""), show_progress=False).record["steps"] == 1


def test_two_sided_with_a_saved_source_gradient_is_refused(batch):
    lm = load_model("tiny-llama", seed=0)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    engine = GuidedGradient([MagnitudePenalty(0.5, 0.1)], two_sided=True)
    with pytest.raises(GradguideError, match="two_sided"):
        engine.backward(closure(lm, batch), params, 0, source_gradient=torch.ones(n))


def _eval_texts(data_root):
    """Every evaluation instance's prompt text, over every task with data under ``data_root``."""
    texts: list[str] = []
    for task in list_tasks():
        try:
            texts.extend(x.prompt for x in task.load(task.eval_split, data_root))
        except GradguideError:
            continue  # no data for this task here
    return texts


def test_the_default_prior_corpus_shares_no_text_with_any_evaluation_split():
    root = resolve_data_root()
    if root is None or not (root / CORPUS_FILE).is_file():
        pytest.skip("no data root with BoolQ here")
    corpus = reference_corpus(root)
    assert len(corpus.texts) >= 16 and all(i.startswith("train32:") for i in corpus.ids)
    evaluation = "\n".join(_eval_texts(root))
    assert len(evaluation) > 1_000_000  # the check really read the evaluation splits
    # a 200-character slice of each passage: prompts may truncate or reformat the passage
    shared = [i for i, t in zip(corpus.ids, corpus.texts, strict=True) if t[:200] in evaluation]
    assert shared == []


def test_the_pretrain_prior_records_its_corpus(tmp_path):
    root = resolve_data_root()
    if root is None or not (root / CORPUS_FILE).is_file():
        pytest.skip("no data root with BoolQ here")
    config = TrainConfig(
        model="tiny-llama",
        task="demo-sentiment",
        shots=4,
        out=str(tmp_path),
        optim=OptimConfig(steps=1, batch_size=4),
        guidance=GuidanceConfig(use="sgg-dir", prior="pretrain"),
    )
    record = train(config, show_progress=False).record
    made = record["guidance"]["prior_made_from"]["corpus"]
    assert made["file"] == CORPUS_FILE and made["ids"] == reference_corpus(root).ids
    run_dir = next(tmp_path.iterdir())
    saved = json.loads((run_dir / "record.json").read_text())
    assert saved["guidance"]["prior_made_from"] == record["guidance"]["prior_made_from"]
