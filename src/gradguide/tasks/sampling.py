"""Seeded k-shot sampling of training instances and of in-context demonstrations.

The sampling unit is the instance, or the group where instances have one (a MultiRC question with
all its answer options): k counts units and a chosen group is kept whole. Sampling uses its own
``random.Random(seed)``, so it depends only on the pool, k and the seed, never on global RNG state.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from gradguide.errors import GradguideError
from gradguide.tasks.base import Instance

Unit = tuple[Instance, ...]


def _units(instances: Sequence[Instance]) -> list[Unit]:
    """Group instances into sampling units (groups in order of first appearance)."""
    order: list[str] = []
    members: dict[str, list[Instance]] = {}
    for instance in instances:
        key = f"g:{instance.group}" if instance.group is not None else f"i:{instance.id}"
        if key not in members:
            members[key] = []
            order.append(key)
        members[key].append(instance)
    return [tuple(members[key]) for key in order]


def _check_k(k: int, available: int, what: str) -> None:
    """k must be a positive integer no larger than the number of available units."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise GradguideError(f"k must be a whole number, got {k!r}")
    if k <= 0:
        raise GradguideError(f"k must be at least 1, got {k} ({available} {what} available)")
    if k > available:
        raise GradguideError(
            f"k = {k} is more than the {available} {what} available to sample from"
        )


def _allocate(k: int, available: dict[str, int], rng: random.Random) -> dict[str, int]:
    """Balanced per-label counts: k // n each, the remainder to random labels, shortfalls moved on.

    A label with too few units gives all it has; the rest go round-robin (random order each
    round) to the labels that still have units, keeping the counts as even as possible.
    """
    labels = sorted(available)
    base, remainder = divmod(k, len(labels))
    wanted = dict.fromkeys(labels, base)
    for label in rng.sample(labels, remainder):
        wanted[label] += 1
    alloc = {label: min(wanted[label], available[label]) for label in labels}
    deficit = k - sum(alloc.values())
    while deficit > 0:
        spare = [label for label in labels if alloc[label] < available[label]]
        rng.shuffle(spare)
        spare.sort(key=lambda label: alloc[label])
        for label in spare[:deficit]:
            alloc[label] += 1
        deficit = k - sum(alloc.values())
    return alloc


def sample_k_shot(
    instances: Sequence[Instance], k: int, seed: int, *, stratify: bool = True
) -> list[Instance]:
    """Draw k instances (or k groups) with a seeded, label-balanced sample, in a seeded order.

    With ``stratify`` each label gets k // n_labels units, the remainder going to randomly chosen
    labels and any shortfall of a rare label to the others. Grouped instances (MultiRC) hold
    several labels per group, so groups are drawn with a plain seeded sample. The result is the
    chosen units in a seeded shuffle, each group's instances in their original order.
    """
    units = _units(instances)
    grouped = any(instance.group is not None for instance in instances)
    what = "groups" if grouped else "examples"
    _check_k(k, len(units), what)
    rng = random.Random(seed)
    if not stratify or grouped:
        chosen = rng.sample(units, k)
    else:
        by_label: dict[str, list[Unit]] = {}
        for unit in units:
            by_label.setdefault(unit[0].label, []).append(unit)
        alloc = _allocate(k, {label: len(pool) for label, pool in by_label.items()}, rng)
        chosen = []
        for label in sorted(by_label):
            chosen.extend(rng.sample(by_label[label], alloc[label]))
    rng.shuffle(chosen)
    return [instance for unit in chosen for instance in unit]


def sample_demonstrations(
    pool: Sequence[Instance], k: int, seed: int, exclude_ids: Collection[str] = ()
) -> list[Instance]:
    """Pick k stratified in-context demonstrations from ``pool``, never one in ``exclude_ids``.

    A group with any excluded member is excluded whole (its other options would leak the answer).
    """
    excluded = set(exclude_ids)
    blocked_groups = {i.group for i in pool if i.id in excluded and i.group is not None}
    kept = [i for i in pool if i.id not in excluded and i.group not in blocked_groups]
    if len(kept) < len(pool) and k > len(_units(kept)) and k <= len(_units(pool)):
        raise GradguideError(
            f"k = {k} demonstrations requested, but only {len(_units(kept))} remain after "
            f"excluding {len(pool) - len(kept)} instance(s)"
        )
    return sample_k_shot(kept, k, seed, stratify=True)
