"""Metric values on hand-computed cases."""

from __future__ import annotations

import pytest

from gradguide.errors import GradguideError
from gradguide.metrics import (
    accuracy,
    compute_metrics,
    exact_match,
    f1_not_first,
    f1a,
    label_counts,
    macro_f1,
    majority_accuracy,
)
from gradguide.tasks.base import Instance


def inst(gold: int, group: str | None = None, n: int = 2) -> Instance:
    cands = tuple(f" c{i}" for i in range(n))
    return Instance(
        id=f"x{gold}{group}", prompt="p", candidates=cands, gold=gold, label=str(gold), group=group
    )


def test_accuracy():
    xs = [inst(0), inst(1), inst(1), inst(0)]
    assert accuracy(xs, [0, 1, 0, 1]) == 0.5


def test_macro_f1_three_classes():
    # gold: 0 0 1 1 2 ; pred: 0 1 1 1 0
    xs = [inst(0, n=3), inst(0, n=3), inst(1, n=3), inst(1, n=3), inst(2, n=3)]
    preds = [0, 1, 1, 1, 0]
    # class 0: tp1 fp1 fn1 -> 0.5 ; class 1: tp2 fp1 fn0 -> 0.8 ; class 2: tp0 -> 0
    assert macro_f1(xs, preds) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_emocontext_f1_ignores_the_first_class():
    # gold: 0 0 1 2 3 3 ; pred: 0 1 1 3 3 0  (class 0 = others)
    xs = [inst(g, n=4) for g in (0, 0, 1, 2, 3, 3)]
    preds = [0, 1, 1, 3, 3, 0]
    # over classes 1-3: tp 2 (1->1, 3->3); fp 2 (the 0 called 1, the 2 called 3);
    # fn 2 (the 2 called 3, the last 3 called 0)
    tp, fp, fn = 2, 2, 2
    assert f1_not_first(xs, preds) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert f1_not_first([inst(0, n=4)] * 3, [0, 0, 0]) == 0.0  # nothing but 'others'


def test_f1a_and_em_multirc():
    xs = [inst(1, "q1"), inst(0, "q1"), inst(1, "q2"), inst(1, "q2"), inst(0, "q3")]
    preds = [1, 0, 1, 0, 1]
    # positives: tp=2 (x0,x2), fp=1 (x4), fn=1 (x3) -> F1 = 4/6
    assert f1a(xs, preds) == pytest.approx(4 / 6)
    # q1 all right, q2 wrong, q3 wrong
    assert exact_match(xs, preds) == pytest.approx(1 / 3)


def test_compute_metrics_errors():
    with pytest.raises(GradguideError):
        compute_metrics(["accuracy"], [], [])
    with pytest.raises(GradguideError, match="unknown metric"):
        compute_metrics(["bleu"], [inst(0)], [0])
    assert compute_metrics(["accuracy", "macro_f1"], [inst(0), inst(1)], [0, 1]) == {
        "accuracy": 1.0,
        "macro_f1": 1.0,
    }


def test_convergence_measures_on_hand_computed_curves():
    from gradguide.metrics import dynamics_summary, normalised_loss_auc, steps_to_threshold

    # initial loss = mean of the first 4 = 1.0; trailing 4-step means: 1.0, 0.85, 0.675, 0.5
    losses = [1.0, 1.0, 1.0, 1.0, 0.4, 0.3, 0.3, 1.0]
    assert steps_to_threshold(losses) == 7  # first reached at index 6: (1+0.4+0.3+0.3)/4 ≤ 0.5
    assert steps_to_threshold(losses, fraction=0.4) is None
    assert normalised_loss_auc(losses) == pytest.approx(6.0 / 8)
    # a skipped step (None) is left out of both, and steps still count from the real index
    gapped = [1.0, 1.0, None, 1.0, 1.0, 0.4, 0.3, 0.3]
    assert steps_to_threshold(gapped) == 8
    assert normalised_loss_auc(gapped) == pytest.approx(5.0 / 7)
    assert steps_to_threshold([1.0, 0.1]) is None and normalised_loss_auc([]) is None
    dyn = dynamics_summary({"loss": losses, "term_x": [1.0, None, 3.0]})
    assert dyn["steps_to_loss_threshold"] == 7.0 and dyn["loss_auc"] == pytest.approx(0.75)
    assert dyn["mean_term_x"] == 2.0 and dyn["gradient_stability"] is None


def test_gradient_stability_on_hand_computed_norms():
    from gradguide.metrics import gradient_stability

    # 1, 3: mean 2, population sd 1, CV 1/2 -> 1 / (1 + 1/2)
    assert gradient_stability([1.0, 3.0]) == pytest.approx(2 / 3, rel=1e-12)
    # 2, 4, 6, 8 (a skipped step left out): mean 5, population variance (9+1+1+9)/4 = 5
    assert gradient_stability([2.0, None, 4.0, 6.0, 8.0]) == pytest.approx(
        1 / (1 + 5**0.5 / 5), rel=1e-12
    )
    assert gradient_stability([0.5, 0.5, 0.5]) == 1.0  # constant norms: perfectly stable
    assert gradient_stability([1.0]) is None and gradient_stability([0.0, 0.0]) is None


def test_directional_alignment_and_stability_of_hand_made_gradients():
    """Through the engine: loss c_t·θ has gradient c_t, so cos(g_t, d) and ‖g_t‖ are known."""
    import torch

    from gradguide.guidance.engine import GuidedGradient
    from gradguide.guidance.priors import FixedPrior
    from gradguide.metrics import dynamics_summary

    theta = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    engine = GuidedGradient(prior=FixedPrior(torch.tensor([2.0, 0.0], dtype=torch.float64), "x"))
    curves: dict[str, list[float | None]] = {"grad_norm": [], "cos_prior": []}
    for step, c in enumerate([(3.0, 0.0), (1.0, 1.0), (0.0, 2.0)]):
        stats = engine.backward(
            lambda c=c: torch.dot(torch.tensor(c).double(), theta), [theta], step
        )
        curves["grad_norm"].append(stats.grad_norm)
        curves["cos_prior"].append(stats.cos_prior)
    # cosines with d = (1, 0): 1, 1/√2, 0; norms 3, √2, 2
    dyn = dynamics_summary(curves)
    assert dyn["directional_alignment"] == pytest.approx((1 + 0.5**0.5) / 3, rel=1e-12)
    mean = (3 + 2**0.5 + 2) / 3
    sd = (((3 - mean) ** 2 + (2**0.5 - mean) ** 2 + (2 - mean) ** 2) / 3) ** 0.5
    assert dyn["gradient_stability"] == pytest.approx(1 / (1 + sd / mean), rel=1e-12)


def test_majority_accuracy_is_the_most_common_gold_labels_share():
    # gold 2 2 2 0 1: always answering 2 scores 3/5, whichever label comes first
    assert majority_accuracy([inst(g, n=3) for g in (2, 2, 2, 0, 1)]) == pytest.approx(0.6)
    assert majority_accuracy([]) is None


def test_label_counts_count_answers_and_gold_per_candidate_index():
    # gold 2 2 0 1 (three candidates), answered 2 2 2 0: label 1 never answered, label 2 thrice
    xs = [inst(g, n=3) for g in (2, 2, 0, 1)]
    assert label_counts(xs, [2, 2, 2, 0]) == {"predicted": [1, 0, 3], "gold": [1, 1, 2]}
    assert label_counts([], []) == {"predicted": [], "gold": []}
