"""k-shot sampling: seeded and deterministic, label-balanced, groups kept whole, clear errors."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gradguide.errors import GradguideError
from gradguide.tasks import get_task, resolve_data_root, sample_demonstrations, sample_k_shot
from gradguide.tasks.base import Instance


def pool(counts: dict[str, int]) -> list[Instance]:
    """Ungrouped instances with the given number per label."""
    out = []
    for label, n in counts.items():
        for i in range(n):
            out.append(Instance(f"train:{label}{i}", f"p {label}{i}", (" a", " b"), 0, label))
    return out


def grouped(sizes: list[int]) -> list[Instance]:
    """MultiRC-like instances: group g has sizes[g] answer options with mixed labels."""
    out = []
    for g, size in enumerate(sizes):
        for a in range(size):
            label = str(a % 2)
            out.append(Instance(f"val:{g}/{a}", f"p{g}", (" no", " yes"), a % 2, label, f"{g}"))
    return out


def ids(instances: list[Instance]) -> list[str]:
    """The ids, in order."""
    return [i.id for i in instances]


def test_same_seed_same_sample_different_seeds_differ() -> None:
    data = pool({"a": 40, "b": 40, "c": 40})
    first = sample_k_shot(data, 12, seed=1)
    assert ids(first) == ids(sample_k_shot(data, 12, seed=1))
    assert ids(first) != ids(sample_k_shot(data, 12, seed=2))
    assert set(ids(first)) != set(ids(sample_k_shot(data, 12, seed=3)))
    assert len(set(ids(first))) == 12


def test_independent_of_global_random_state() -> None:
    data = pool({"a": 30, "b": 30})
    random.seed(123)
    before = ids(sample_k_shot(data, 8, seed=5))
    random.seed(999)
    random.random()
    assert ids(sample_k_shot(data, 8, seed=5)) == before


def test_stratified_counts_are_balanced() -> None:
    data = pool({"a": 50, "b": 30, "c": 20})
    assert Counter(i.label for i in sample_k_shot(data, 12, seed=0)) == {"a": 4, "b": 4, "c": 4}
    for seed in range(5):
        counts = Counter(i.label for i in sample_k_shot(data, 10, seed=seed))
        assert sorted(counts.values()) == [3, 3, 4]


def test_rare_label_shortfall_goes_to_the_other_labels() -> None:
    data = pool({"a": 50, "b": 50, "c": 2})
    counts = Counter(i.label for i in sample_k_shot(data, 12, seed=0))
    assert counts == {"a": 5, "b": 5, "c": 2}
    counts = Counter(i.label for i in sample_k_shot(data, 13, seed=4))
    assert counts["c"] == 2 and sorted([counts["a"], counts["b"]]) == [5, 6]
    for seed in range(10):  # the shortfall evens out the others: 14 = 2 + 6 + 6, never 2 + 7 + 5
        assert Counter(i.label for i in sample_k_shot(data, 14, seed=seed)) == {
            "a": 6,
            "b": 6,
            "c": 2,
        }


def test_everything_when_k_equals_the_pool() -> None:
    data = pool({"a": 3, "b": 1})
    assert sorted(ids(sample_k_shot(data, 4, seed=0))) == sorted(ids(data))


def test_returned_order_is_shuffled_not_by_label() -> None:
    data = pool({"a": 20, "b": 20})
    labels = [i.label for i in sample_k_shot(data, 16, seed=0)]
    assert labels != sorted(labels)
    assert Counter(labels) == {"a": 8, "b": 8}


def test_unstratified_is_a_plain_seeded_sample() -> None:
    data = pool({"a": 90, "b": 10})
    sample = sample_k_shot(data, 20, seed=0, stratify=False)
    expected = random.Random(0).sample(data, 20)
    assert set(ids(sample)) == set(ids(expected))
    assert Counter(i.label for i in sample)["a"] > 10


def test_groups_are_the_unit_and_stay_whole() -> None:
    data = grouped([3, 5, 2, 4, 6, 1, 3])
    sample = sample_k_shot(data, 3, seed=7)
    groups = [i.group for i in sample]
    assert len(set(groups)) == 3
    for group in set(groups):
        members = [i.id for i in data if i.group == group]
        chosen = [i.id for i in sample if i.group == group]
        assert chosen == members  # whole group, original order
        first = groups.index(group)
        assert groups[first : first + len(members)] == [group] * len(members)  # contiguous
    assert ids(sample) == ids(sample_k_shot(data, 3, seed=7))
    with pytest.raises(GradguideError, match="k = 8 is more than the 7 groups"):
        sample_k_shot(data, 8, seed=0)


@pytest.mark.parametrize(
    ("k", "message"),
    [(0, "at least 1, got 0"), (-2, "at least 1"), (11, "k = 11 is more than the 10 examples")],
)
def test_bad_k(k: int, message: str) -> None:
    with pytest.raises(GradguideError, match=message):
        sample_k_shot(pool({"a": 5, "b": 5}), k, seed=0)


def test_k_must_be_a_whole_number() -> None:
    with pytest.raises(GradguideError, match="whole number"):
        sample_k_shot(pool({"a": 5}), 2.5, seed=0)  # type: ignore[arg-type]


def test_demonstrations_exclude_ids_and_their_groups() -> None:
    data = pool({"a": 4, "b": 4})
    excluded = {"train:a0", "train:b1"}
    demos = sample_demonstrations(data, 6, seed=3, exclude_ids=excluded)
    assert not excluded & set(ids(demos))
    assert Counter(i.label for i in demos) == {"a": 3, "b": 3}
    assert ids(demos) == ids(sample_demonstrations(data, 6, seed=3, exclude_ids=excluded))
    with pytest.raises(GradguideError, match="only 6 remain after excluding 2"):
        sample_demonstrations(data, 7, seed=3, exclude_ids=excluded)
    groups = grouped([2, 2, 2])
    demos = sample_demonstrations(groups, 2, seed=0, exclude_ids={"val:1/0"})
    assert {i.group for i in demos} == {"0", "2"}


@pytest.mark.skipif(resolve_data_root() is None, reason="no data root (GRADGUIDE_DATA)")
def test_real_multirc_and_cb_samples() -> None:
    multirc = get_task("multirc").load("train32")
    sample = sample_k_shot(multirc, 4, seed=0)
    by_group = Counter(i.group for i in multirc)
    assert len({i.group for i in sample}) == 4
    assert len(sample) == sum(by_group[g] for g in {i.group for i in sample})
    cb = get_task("cb").load("train32")  # entailment 19, contradiction 10, neutral 3
    counts = Counter(i.label for i in sample_k_shot(cb, 16, seed=0))
    assert counts["neutral"] == 3 and sorted([counts["entailment"], counts["contradiction"]]) == [
        6,
        7,
    ]
