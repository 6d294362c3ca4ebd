"""Micro-batches: a batch too large for one pass is scored in parts whose gradients add up.

Banking77's 77 intents × 8 queries made one 28k-token pass that the kernel's OOM killer ended
(44 GB of activations on smollm2-135m), with no record and no message. The parts must give the
whole batch's gradient, guided or not, in eval mode and under dropout, and a run must split only
what exceeds its token budget.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_sgg import LAM, TAU, loss_closure, penalties, reference_gradient, setup_model
from test_trustworthy import bert_in_train_mode
from tiny_runs import tiny_config

from gradguide.errors import GradguideError
from gradguide.guidance.engine import GuidedGradient
from gradguide.guidance.hvp import flat
from gradguide.guidance.priors import FixedPrior
from gradguide.guidance.sgg import DirectionPenalty, MagnitudePenalty
from gradguide.models import load_model
from gradguide.objective import RankObjective, micro_batches
from gradguide.scoring import ScoringOptions, candidate_scores, pass_size
from gradguide.tasks import get_task
from gradguide.train import GuidanceConfig, OptimConfig, train, validate

assert LAM and TAU  # the reference's weights, shared with test_sgg


@pytest.fixture(scope="module")
def batches():
    xs = get_task("demo-sentiment").load("train")
    return xs[:4], xs[4:8]


def weighted(lm, parts, n):
    """One closure per part, each its share of the batch's mean loss."""

    def closure(part):
        def loss():
            s = candidate_scores(lm, part)
            gold = torch.tensor([x.gold for x in part])
            return F.cross_entropy(s, gold) * (len(part) / n)

        return loss

    return [closure(p) for p in parts]


def test_groups_stay_within_the_budget_and_keep_the_order():
    sizes = [(2, 10), (2, 10), (2, 30), (9, 100), (1, 5)]
    # 4 rows x 10 fit in 100; a third makes 6 x 30; the 900-token instance goes alone
    assert micro_batches(sizes, 100) == [[0, 1], [2], [3], [4]]
    assert micro_batches(sizes, 0) == [[0, 1, 2, 3, 4]]
    assert micro_batches(sizes, 10_000) == [[0, 1, 2, 3, 4]]
    assert micro_batches(sizes, 1) == [[0], [1], [2], [3], [4]]


def test_pass_size_counts_a_decoders_candidate_rows():
    lm = load_model("tiny-llama", seed=0)
    x = get_task("demo-sentiment").load("train")[0]
    rows, longest = pass_size(lm, x, ScoringOptions(fast_path=False))
    assert rows == len(x.candidates)
    prompt = len(lm.tokenizer(x.prompt)["input_ids"])
    assert longest > prompt
    assert pass_size(lm, x, ScoringOptions())[0] == 1  # one-token labels: one row, fast path


@pytest.mark.parametrize("mode", ["plain", "exact", "fd"])
def test_micro_batched_gradient_equals_the_whole_batchs(batches, mode):
    """Eval mode: the parts' guided gradient is autograd's gradient of L + R(∇L) on the batch."""
    lm, params = setup_model("lora")
    target, source = batches
    terms = () if mode == "plain" else ("dir", "mag", "align")
    prior_vec = torch.randn(
        sum(p.numel() for p in params), generator=torch.Generator().manual_seed(1)
    )
    whole, whole_source = loss_closure(lm, target), loss_closure(lm, source)
    if terms:
        expected = reference_gradient(whole, whole_source, params, terms, prior_vec)
    else:
        expected = flat(torch.autograd.grad(whole(), params), params)
    parts = weighted(lm, [target[:1], target[1:]], len(target))  # unequal parts: weights matter
    source_parts = weighted(lm, [source[:2], source[2:]], len(source))
    engine = GuidedGradient(
        penalties(terms),
        hvp="exact" if mode == "plain" else mode,
        prior=FixedPrior(prior_vec / prior_vec.norm(), "test"),
    )
    stats = engine.backward(parts, params, 0, source_parts)
    got = flat([p.grad for p in params], params)
    err = float((got - expected).norm() / expected.norm())
    assert err < (1e-2 if mode == "fd" else 1e-5), f"{mode}: relative error {err:.2e}"
    assert stats.loss == pytest.approx(float(whole()), rel=1e-5)
    assert stats.penalty_applied == bool(terms)


@pytest.mark.parametrize("mode", ["exact", "fd"])
def test_micro_batched_guided_gradient_matches_double_backward_under_dropout(mode):
    """Train mode: each part keeps its own dropout masks through every evaluation of the step."""
    xs = get_task("demo-sentiment").load("train")[:4]
    lm, params = bert_in_train_mode(xs)
    d = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(5))
    d = d / d.norm()
    lam_dir, lam_mag, tau = 0.5, 0.5, 0.1
    parts = [xs[:2], xs[2:]]
    torch.manual_seed(7)  # the parts' first calls draw their masks in this order
    loss = sum(f() for f in weighted(lm, parts, len(xs)))
    g = flat(torch.autograd.grad(loss, params, create_graph=True), params)
    total = loss + lam_dir * (g / g.norm() - d).pow(2).sum() + lam_mag * (g.norm() - tau) ** 2
    expected = flat(torch.autograd.grad(total, params), params)
    assert (expected - g.detach()).norm() > 0.1 * g.norm()  # the penalties matter here
    engine = GuidedGradient(
        [DirectionPenalty(lam_dir), MagnitudePenalty(lam_mag, tau)],
        hvp=mode,
        prior=FixedPrior(d, "test"),
    )
    torch.manual_seed(7)
    engine.backward(weighted(lm, parts, len(xs)), params, 0)
    got = flat([p.grad for p in params], params)
    err = float((got - expected).norm() / expected.norm())
    assert err < (5e-2 if mode == "fd" else 1e-4), f"{mode}: relative error {err:.2e}"


def test_rank_objective_splits_only_what_exceeds_the_budget():
    lm = load_model("tiny-llama", seed=0)
    xs = get_task("demo-sentiment").load("train")[:8]
    options = ScoringOptions(fast_path=False)
    sizes = [pass_size(lm, x, options) for x in xs]
    whole = sum(r for r, _ in sizes) * max(n for _, n in sizes)
    roomy = RankObjective(lm, options, 8, 1, 0.0, micro_batch_tokens=whole)
    assert roomy.chunks(xs) == [xs]
    tight = RankObjective(lm, options, 8, 1, 0.0, micro_batch_tokens=whole // 3)
    chunks = tight.chunks(xs)
    assert len(chunks) >= 3 and [x for c in chunks for x in c] == xs
    facts = tight.finish(xs)
    assert facts["batches_split"] == 1
    assert whole // 8 <= facts["largest_pass_tokens"] <= whole // 3


@pytest.mark.parametrize("guidance", ["", "sgg", "spectral"])
def test_a_run_in_micro_batches_trains_the_same_model(tmp_path, guidance):
    """Through train(): the same curves and weights with every instance in its own pass."""

    def run(folder, budget):
        config = tiny_config(
            tmp_path / folder,
            method="lora",
            micro_batch_tokens=budget,
            optim=OptimConfig(steps=3, batch_size=4),
            guidance=GuidanceConfig(use=guidance, hvp="exact"),
            scoring=ScoringOptions(fast_path=False),
            eval_limit=8,
        )
        result = train(config, show_progress=False)
        record = json.loads((result.run_dir / "record.json").read_text())
        return result, record

    split, split_record = run("split", 1)
    whole, whole_record = run("whole", 0)
    assert split_record["objective"]["batches_split"] == 3  # every step's batch was split
    assert "batches_split" not in whole_record["objective"]
    curves = split_record["curves"], whole_record["curves"]
    assert curves[0]["loss"] == pytest.approx(curves[1]["loss"], rel=1e-5)
    assert curves[0]["guided_norm"] == pytest.approx(curves[1]["guided_norm"], rel=1e-4)
    assert split.adapted is not None and whole.adapted is not None
    for name, p in split.adapted.trainable.items():
        torch.testing.assert_close(p, whole.adapted.trainable[name], rtol=1e-4, atol=1e-6)
    assert split.metrics == whole.metrics


def test_a_negative_budget_is_refused(tmp_path):
    with pytest.raises(GradguideError) as err:
        validate(tiny_config(tmp_path, micro_batch_tokens=-1))
    assert err.value.field == "micro_batch_tokens"
