"""Runs that answer one label for nearly every example, and the report's section on them.

Such a run's accuracy reads like its evaluation set's class balance: on a set whose majority is
another label it lands below the majority class, on a skewed one it looks like learning. Read from
each record's ``predictions`` (gradguide.metrics.label_counts); records that predate it are not
checked, and the section says how many were.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from gradguide.report.data import BenchData, RunData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Paragraph, Table

#: a run is a one-label predictor when this share of its answers is one label ...
ONE_LABEL_SHARE = 0.95


@dataclasses.dataclass(frozen=True)
class OneLabel:
    """A run that answered one candidate index for most of its evaluation set."""

    run: RunData
    label: int
    share: float  # of its predictions
    gold_share: float  # of the evaluation set's gold labels


def one_label(run: RunData, share: float = ONE_LABEL_SHARE) -> OneLabel | None:
    """The run's one label, when it gave it for ``share`` of the set and the set is not itself
    that label at that share (None: it spread its answers, or its record has no counts)."""
    counts = run.label_counts
    if counts is None:
        return None
    predicted, gold = counts["predicted"], counts["gold"]
    n = sum(predicted)
    top = max(range(len(predicted)), key=predicted.__getitem__)
    top_share, gold_share = predicted[top] / n, gold[top] / max(1, sum(gold))
    if top_share < share or gold_share >= share:
        return None
    return OneLabel(run, top, top_share, gold_share)


def one_label_section(doc: Doc, data: BenchData) -> None:
    """Which runs answered one label for nearly every example, per method and task first."""
    checked = [r for r in data.runs if r.label_counts is not None]
    if not checked:
        return
    found = [o for r in checked if (o := one_label(r)) is not None]
    doc.add(Heading("One-label predictors"))
    text = (
        f"A run answers one label for at least {100 * ONE_LABEL_SHARE:.0f}% of its evaluation set "
        f"(a set that is not itself {100 * ONE_LABEL_SHARE:.0f}% that label): its accuracy is the "
        "share of that label in the set, not learning. "
        f"{len(checked)} of {len(data.runs)} runs record their answers per label; "
    )
    if not found:
        doc.add(Paragraph(text + "none of them is a one-label predictor."))
        return
    arms = Counter((o.run.variant, o.run.model, o.run.task) for o in found)
    totals = Counter((r.variant, r.model, r.task) for r in checked)
    doc.add(
        Paragraph(
            text
            + f"**{len(found)} are**: "
            + "; ".join(
                f"{v} on {m}, {t} ({n} of {totals[v, m, t]} runs)" for (v, m, t), n in arms.items()
            )
            + "."
        )
    )
    doc.add(
        Table(
            ("model", "arm", "task", "shots", "seed", "run", "label", "of answers", "of gold"),
            tuple(
                (
                    o.run.model,
                    o.run.variant,
                    o.run.task,
                    str(o.run.shots),
                    str(o.run.seed),
                    o.run.key,
                    str(o.label),
                    f"{100 * o.share:.1f}%",
                    f"{100 * o.gold_share:.1f}%",
                )
                for o in sorted(found, key=lambda o: (o.run.model, o.run.variant, o.run.task))
            ),
            caption="Every one-label predictor (label: the candidate index it answered; of gold: "
            "that label's share of the evaluation set).",
        )
    )
