"""Task metrics (accuracy, macro-F1, MultiRC F1a and exact match, EmoContext's F1), defined once."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import torch

from gradguide.errors import GradguideError
from gradguide.tasks.base import Instance


def accuracy(instances: Sequence[Instance], predictions: Sequence[int]) -> float:
    """Fraction of instances whose best-scoring candidate is the gold one."""
    return sum(p == x.gold for x, p in zip(instances, predictions, strict=True)) / len(instances)


def _f1(tp: int, fp: int, fn: int) -> float:
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def majority_accuracy(instances: Sequence[Instance]) -> float | None:
    """The accuracy of always answering the set's most common gold index (None: empty set): the
    floor every trained classifier's accuracy is read against."""
    if not instances:
        return None
    return max(Counter(x.gold for x in instances).values()) / len(instances)


def label_counts(instances: Sequence[Instance], predictions: Sequence[int]) -> dict[str, list[int]]:
    """How often each candidate index was predicted, and was gold: a run that answers one label
    for nearly every example shows here, where its accuracy alone reads like the class balance."""
    width = max((len(x.candidates) for x in instances), default=0)
    predicted, gold = [0] * width, [0] * width
    for x, p in zip(instances, predictions, strict=True):
        predicted[p] += 1
        gold[x.gold] += 1
    return {"predicted": predicted, "gold": gold}


def macro_f1(instances: Sequence[Instance], predictions: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over classes gold or predicted (CB's metric)."""
    classes = sorted({x.gold for x in instances} | set(predictions))
    scores = []
    for c in classes:
        tp = sum(p == c and x.gold == c for x, p in zip(instances, predictions, strict=True))
        fp = sum(p == c and x.gold != c for x, p in zip(instances, predictions, strict=True))
        fn = sum(p != c and x.gold == c for x, p in zip(instances, predictions, strict=True))
        scores.append(_f1(tp, fp, fn))
    return sum(scores) / len(scores)


def f1a(instances: Sequence[Instance], predictions: Sequence[int]) -> float:
    """MultiRC's F1a: binary F1 over all answer options, candidate 1 ("yes") positive."""
    pairs = list(zip(instances, predictions, strict=True))
    tp = sum(p == 1 and x.gold == 1 for x, p in pairs)
    fp = sum(p == 1 and x.gold != 1 for x, p in pairs)
    fn = sum(p != 1 and x.gold == 1 for x, p in pairs)
    return _f1(tp, fp, fn)


def exact_match(instances: Sequence[Instance], predictions: Sequence[int]) -> float:
    """MultiRC's EM: fraction of questions (groups) whose answer options are all right."""
    groups: dict[str, bool] = defaultdict(lambda: True)
    for x, p in zip(instances, predictions, strict=True):
        key = x.group if x.group is not None else x.id
        groups[key] = groups[key] and p == x.gold
    return sum(groups.values()) / len(groups)


def f1_not_first(instances: Sequence[Instance], predictions: Sequence[int]) -> float:
    """Micro-F1 over every class but the first (EmoContext's: happy, sad, angry; not others)."""
    pairs = list(zip(instances, predictions, strict=True))
    tp = sum(p == x.gold and p != 0 for x, p in pairs)
    fp = sum(p != x.gold and p != 0 for x, p in pairs)
    fn = sum(p != x.gold and x.gold != 0 for x, p in pairs)
    return _f1(tp, fp, fn)


METRICS: dict[str, Callable[[Sequence[Instance], Sequence[int]], float]] = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "f1a": f1a,
    "em": exact_match,
    "f1_not_first": f1_not_first,
}


def compute_metrics(
    names: Sequence[str], instances: Sequence[Instance], predictions: Sequence[int]
) -> dict[str, float]:
    """Every named metric of a task on one set of predictions."""
    if not instances:
        raise GradguideError("cannot compute metrics on an empty evaluation set")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise GradguideError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    return {n: METRICS[n](instances, predictions) for n in names}


# --------------------------------------------------------------------------------------------
# Gradient dynamics: one definition for every method (SGG and the baselines alike)


def gradient_stability(norms: Sequence[float | None]) -> float | None:
    """1 / (1 + CV(‖g_t‖)), CV = population std / mean over the run's finite gradient norms."""
    xs = [x for x in norms if x is not None]
    if len(xs) < 2:
        return None
    mean = sum(xs) / len(xs)
    if mean == 0:
        return None
    sd = (sum((x - mean) ** 2 for x in xs) / len(xs)) ** 0.5
    return 1.0 / (1.0 + sd / mean)


def mean_defined(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are defined (None when there are none)."""
    xs = [x for x in values if x is not None]
    return sum(xs) / len(xs) if xs else None


#: Convergence: the loss is smoothed by a trailing mean over this many steps (one epoch of 32
#: shots at batch 8), and "converged" means that mean fell to this fraction of the initial loss.
CONVERGENCE_WINDOW = 4
CONVERGENCE_FRACTION = 0.5


def _initial_loss(xs: Sequence[float], window: int) -> float | None:
    """Mean of the first ``window`` finite losses (the reference both measures divide by)."""
    if len(xs) < window:
        return None
    ref = sum(xs[:window]) / window
    return ref if ref > 0 else None


def steps_to_threshold(
    losses: Sequence[float | None],
    fraction: float = CONVERGENCE_FRACTION,
    window: int = CONVERGENCE_WINDOW,
) -> int | None:
    """Steps taken until the trailing ``window``-step mean loss is ≤ ``fraction`` × initial loss.

    The initial loss is the mean of the first ``window`` finite losses; skipped steps (None) are
    left out. None when the run never got there (or has fewer than ``window`` losses).
    """
    known = [(i, x) for i, x in enumerate(losses) if x is not None]
    xs = [x for _, x in known]
    ref = _initial_loss(xs, window)
    if ref is None:
        return None
    for t in range(window - 1, len(xs)):
        if sum(xs[t - window + 1 : t + 1]) / window <= fraction * ref:
            return known[t][0] + 1
    return None


def normalised_loss_auc(
    losses: Sequence[float | None], window: int = CONVERGENCE_WINDOW
) -> float | None:
    """Area under the loss curve over the steps, divided by steps × initial loss (1 = flat)."""
    xs = [x for x in losses if x is not None]
    ref = _initial_loss(xs, window)
    if ref is None:
        return None
    return sum(xs) / (len(xs) * ref)


def median_defined(values: Sequence[float | None]) -> float | None:
    """The median of the defined, finite values (None when there are none)."""
    xs = sorted(v for v in values if v is not None and math.isfinite(v))
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def median_ratio(
    numerator: Sequence[float | None], denominator: Sequence[float | None]
) -> float | None:
    """Median over steps of numerator/denominator (steps where both are defined, denominator > 0).

    For ‖guided g‖/‖g‖ this is the sanity measure of a guided run: about 1 when the penalties
    steer the gradient, far above 1 when the HVP measures noise.
    """
    pairs = zip(numerator, denominator, strict=False)
    return median_defined([a / b for a, b in pairs if a is not None and b is not None and b > 0])


def dynamics_summary(curves: dict[str, list[float | None]]) -> dict[str, float | None]:
    """Run-level measures from per-step curves: stability, cosines, alignments, convergence.

    Convergence (every run alike): ``steps_to_loss_threshold`` (steps_to_threshold) and
    ``loss_auc`` (normalised_loss_auc); ``mean_term_NAME`` is the mean per-step value of each
    loss term recorded as ``term_NAME``.
    """
    losses = curves.get("loss", [])
    steps = steps_to_threshold(losses)
    out: dict[str, float | None] = {
        "gradient_stability": gradient_stability(curves.get("grad_norm", [])),
        "mean_consecutive_cosine": mean_defined(curves.get("cos_prev", [])),
        "directional_alignment": mean_defined(curves.get("cos_prior", [])),
        "source_alignment": mean_defined(curves.get("cos_source", [])),
        "steps_to_loss_threshold": float(steps) if steps is not None else None,
        "loss_auc": normalised_loss_auc(losses),
        "guided_ratio_median": median_ratio(
            curves.get("guided_norm", []), curves.get("grad_norm", [])
        ),
        "penalty_share_median": median_defined(curves.get("penalty_share", [])),
        "clip_scale_median": median_defined(curves.get("clip_scale", [])),
    }
    for key, values in curves.items():
        if key.startswith("term_"):
            out[f"mean_{key}"] = mean_defined(values)
    if "terms_to_task" in curves:  # runs with loss terms (gradguide.guidance.term_share)
        out["terms_to_task_median"] = median_defined(curves["terms_to_task"])
    return out


class GradientTracker:
    """Per-step gradient memory: g_{t-1} for consecutive cosines, Σ g_t for the mean direction."""

    def __init__(self) -> None:
        self.prev: torch.Tensor | None = None
        self.total: torch.Tensor | None = None

    def observe(self, g: torch.Tensor | None) -> float | None:
        """Record g_t; return cos(g_t, g_{t-1})."""
        if g is None:
            return None
        cos = _cosine(g, self.prev)
        self.prev = g.detach().clone()
        self.total = self.prev.clone() if self.total is None else self.total + self.prev
        return cos

    def mean_gradient(self) -> torch.Tensor | None:
        """The run's mean gradient direction (what ``task:RUN_DIR`` priors read)."""
        return self.total / torch.linalg.vector_norm(self.total) if self.total is not None else None

    def state(self) -> dict[str, torch.Tensor]:
        """The memories a checkpoint must hold for an exact resume."""
        if self.prev is None or self.total is None:
            return {}
        return {"prev": self.prev, "total": self.total}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``state`` returned."""
        self.prev, self.total = tensors.get("prev"), tensors.get("total")


def _cosine(a: torch.Tensor, b: torch.Tensor | None) -> float | None:
    if b is None:
        return None
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if float(na) == 0.0 or float(nb) == 0.0:
        return None
    return float(torch.dot(a, b) / (na * nb))
