"""Sanity checks of every guided run, read from its own record, and the report's section on them.

Each guided run is checked from its own record's curves by gradguide.health (the very checks a
run makes of itself when it ends): ‖guided g‖/‖g‖ far from 1 or not finite, the penalties' or the
loss terms' part outweighing the task gradient, clipping or a gradient filter leaving little of
the update. See that module for the measures and ``Limits`` for the thresholds.

A condition whose arms measured directional alignment against different priors is listed: their
cosines are different quantities. A directional-alignment claim whose own runs span more than one
prior fails for that measure; claims decided from a failed run get no verdict
(gradguide.report.verdict.withhold).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection

import numpy as np

from gradguide.health import (
    CLIPPING,
    FILTER,
    NONFINITE,
    PENALTY,
    RATIO,
    TERMS,
    GradientCheck,
    Limits,
    check_gradients,
)
from gradguide.report import figures
from gradguide.report.analysis import ALIGNMENT, CURVE_POINTS, conditions
from gradguide.report.data import BenchData, RunData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Paragraph, Table
from gradguide.report.verdict import RunFailure

PRIORS = "alignment measured against different priors"

__all__ = [
    "CLIPPING",
    "FILTER",
    "NONFINITE",
    "PENALTY",
    "PRIORS",
    "RATIO",
    "TERMS",
    "Limits",
    "PriorClash",
    "RunCheck",
    "Sanity",
    "check",
    "check_run",
    "sanity_section",
]


@dataclasses.dataclass(frozen=True)
class RunCheck(GradientCheck):
    """A guided run's gradient checks (gradguide.health), with the run they were read from."""

    run: RunData = dataclasses.field(kw_only=True)


@dataclasses.dataclass(frozen=True)
class PriorClash:
    """A condition whose arms measured directional alignment against different priors."""

    condition: str
    #: variant → the priors its runs measured against
    priors: dict[str, tuple[str, ...]]
    #: the runs of those variants
    runs: tuple[RunData, ...]


@dataclasses.dataclass(frozen=True)
class Sanity:
    """Every guided run checked, and the prior clashes."""

    limits: Limits
    runs: list[RunCheck]
    clashes: list[PriorClash]

    def failures(
        self, measure: str = "", among: Collection[str] | None = None
    ) -> dict[str, RunFailure]:
        """Run key → how it failed, for claims on ``measure`` (a prior clash fails only the
        directional-alignment measure). ``among``: the keys of the runs one claim compares; a
        clash then fails only those runs, and only when they themselves measured against more
        than one prior (an ablation arm's other prior does not touch a claim it is not in)."""
        out = {
            c.run.key: RunFailure(c.run.variant, c.run.task, c.run.seed, c.failed)
            for c in self.runs
            if c.failed
        }
        if measure == ALIGNMENT:
            for clash in self.clashes:
                runs = clash.runs
                if among is not None:
                    runs = tuple(r for r in runs if r.key in among)
                    if len({r.prior for r in runs}) < 2:
                        continue
                for run in runs:
                    old = out.get(run.key)
                    if old is not None:
                        out[run.key] = dataclasses.replace(old, checks=(*old.checks, PRIORS))
                    else:
                        out[run.key] = RunFailure(run.variant, run.task, run.seed, (PRIORS,))
        return out


def _clip_limit(run: RunData) -> float | None:
    clip = run.setting("optim.grad_clip")
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
        return None
    return float(clip)


def check_run(run: RunData, limits: Limits) -> RunCheck | None:
    """The checks of one guided run (None: not guided, or no guided_norm curve to check)."""
    if not run.guidance_use:
        return None
    checked = check_gradients(
        run.curves,
        clip_limit=_clip_limit(run),
        nonfinite=run.nonfinite,
        skipped_steps=run.skipped_steps,
        limits=limits,
    )
    if checked is None:
        return None
    return RunCheck(run=run, **vars(checked))


def _clashes(data: BenchData) -> list[PriorClash]:
    out = []
    for cond in conditions(data.runs):
        priors = {
            v: tuple(sorted(cond.priors(v)))
            for v in cond.variants()
            if cond.cells(v, ALIGNMENT) and cond.priors(v)
        }
        if len({p for ps in priors.values() for p in ps}) > 1:
            runs = tuple(r for r in cond.runs if r.variant in priors)
            out.append(PriorClash(cond.title, priors, runs))
    return out


def check(data: BenchData, limits: Limits | None = None) -> Sanity:
    """Every guided run of ``data`` checked against ``limits``, and the prior clashes."""
    limits = limits or Limits()
    runs = [c for r in data.runs if (c := check_run(r, limits)) is not None]
    return Sanity(limits, runs, _clashes(data))


# --------------------------------------------------------------------------------------------
# The section


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def _row(c: RunCheck) -> tuple[str, ...]:
    r = c.run
    bound = "" if c.share_recorded else "≥ "
    share = "n/a" if c.share is None else f"{bound}{c.share:.2f}"
    penalty = "n/a" if c.penalty is None else f"{bound}{c.penalty:.2f}"
    clip = "no clipping" if c.clip is None else f"{c.clip:.3g} ({c.clipped}/{c.steps} steps)"
    return (
        f"{r.model}, {r.shots} shots",
        r.variant,
        r.task,
        str(r.seed),
        r.key,
        f"{_num(c.ratio)}× (max {_num(c.ratio_max)}×)",
        share,
        penalty,
        _num(c.terms, 2),
        _num(c.keep, 2),
        clip,
        str(c.nonfinite),
        "; ".join(c.failed) or "ok",
    )


def _text(limits: Limits) -> str:
    return (
        "Every guided run, from its own record. ‖guided g‖/‖g‖: the norm of the gradient the "
        "guidance produced over the task gradient's, per step (1 for unguided training). Penalty "
        "share: ‖guided g − g‖/‖guided g‖, recorded per step where a penalty was applied; for "
        "records without it, the lower bound |‖guided g‖ − ‖g‖|/‖guided g‖ (marked ≥). Penalty / "
        "task: ‖guided g − g‖/‖g‖, the share times the ratio per step (lower bound "
        "|‖guided g‖/‖g‖ − 1| for older records). Clip "
        "scale: min(1, clip/‖applied gradient‖) (recorded, else from optim.grad_clip and "
        "‖guided g‖), with the number of steps clipping shrank. Terms / task: for runs with loss "
        "terms (OFA, the spectral regulariser), whose g already holds the terms' gradient, "
        "‖∇terms‖/‖∇task loss‖ on the steps that measured it while the task was learnt (before "
        "the training loss's trailing mean fell to a tenth of its start; n/a: no loss terms, or "
        "an older record). Filter keeps: ‖filtered g‖/‖g‖ for runs with a gradient filter. "
        "Medians over the run's steps. "
        f"A run fails when, at its median step, ‖guided g‖/‖g‖ is above {limits.ratio:g}× or "
        f"below 1/{limits.ratio:g}, or not finite; the penalties' part outweighs the task "
        f"gradient (penalty / task above {limits.penalty:g}) or the loss terms' does (terms / "
        f"task above {limits.penalty:g}); the filter keeps less than 1/{limits.ratio:g} of the "
        "gradient; or the clip scale is below "
        f"{limits.clip_scale:g} (limits set "
        "with `gradguide report --sanity-ratio/--sanity-penalty/--sanity-clip-scale`). "
        "Non-finite: steps skipped for a non-finite loss or gradient plus non-finite norms in "
        "the record. A claim decided from a run that fails is marked **not testable: failed "
        "sanity check**, as is a directional-alignment claim whose arms measured against "
        "different priors."
    )


def sanity_section(doc: Doc, data: BenchData, sanity: Sanity) -> None:
    """The checks of every guided run: what failed first, then every run, then the per-step
    ratio per arm."""
    doc.add(Heading("Sanity checks"))
    if not sanity.runs and not sanity.clashes:
        doc.add(
            Paragraph("No guided run with a guided-gradient curve is stored: nothing to check.")
        )
        return
    doc.add(Paragraph(_text(sanity.limits)))
    failed = [c for c in sanity.runs if c.failed]
    if failed:
        arms = Counter((c.run.variant, c.run.model, c.run.shots) for c in failed)
        doc.add(
            Paragraph(
                f"**{len(failed)} of {len(sanity.runs)} guided runs fail a check**: "
                + "; ".join(f"{v} on {m}, {k} shots ({n} runs)" for (v, m, k), n in arms.items())
                + "."
            )
        )
    else:
        doc.add(Paragraph(f"All {len(sanity.runs)} guided runs pass every check."))
    for clash in sanity.clashes:
        doc.add(
            Paragraph(
                f"**{clash.condition}: directional alignment measured against different priors**"
                ": " + "; ".join(f"{v} ({', '.join(p)})" for v, p in clash.priors.items()) + "."
            )
        )
    ordered = sorted(
        sanity.runs,
        key=lambda c: (
            not c.failed,
            c.run.model,
            c.run.shots,
            c.run.variant,
            c.run.task,
            c.run.seed,
        ),
    )
    doc.add(
        Table(
            (
                "condition",
                "arm",
                "task",
                "seed",
                "run",
                "‖guided g‖/‖g‖ median",
                "penalty share",
                "penalty / task",
                "terms / task",
                "filter keeps",
                "clip scale",
                "non-finite",
                "checks",
            ),
            tuple(_row(c) for c in ordered),
            caption="Every guided run, failed ones first (run: its directory under runs/).",
        )
    )
    _ratio_figures(doc, sanity)


def _ratio_figures(doc: Doc, sanity: Sanity) -> None:
    """Per condition: ‖guided g‖/‖g‖ per step, median over each arm's runs with their range."""
    by_cond: dict[str, dict[str, list[RunCheck]]] = {}
    for c in sanity.runs:
        title = f"{c.run.model}, {c.run.shots} shots"
        by_cond.setdefault(title, {}).setdefault(c.run.variant, []).append(c)
    grid = np.linspace(0.0, 1.0, CURVE_POINTS)
    for title, arms in by_cond.items():
        series = {}
        for v, checks in arms.items():
            stacked = []
            for c in checks:
                known = [(i, x) for i, x in enumerate(c.ratios) if x is not None and x > 0]
                if len(c.ratios) < 2 or len(known) < 2:
                    continue
                xs = np.array([i / (len(c.ratios) - 1) for i, _ in known])
                ys = np.log10([x for _, x in known])
                stacked.append(np.interp(grid, xs, ys))
            if stacked:
                a = np.stack(stacked)
                series[f"{v} ({len(stacked)} runs)"] = (
                    [float(100 * x) for x in grid],
                    [float(10**y) for y in np.median(a, axis=0)],
                    [float(10**y) for y in a.min(axis=0)],
                    [float(10**y) for y in a.max(axis=0)],
                )
        if not series:
            continue
        limit = sanity.limits.ratio
        doc.figure(
            f"sanity-ratio-{title}",
            figures.band_figure(
                series,
                title=f"‖guided g‖/‖g‖ per step ({title})",
                xlabel="% of training steps",
                ylabel="‖guided g‖ / ‖g‖",
                yscale="log",
                lines=(limit, 1.0 / limit),
            ),
            f"‖guided g‖/‖g‖ per training step, {title}: median over each arm's runs, shaded from "
            f"the lowest to the highest run; dashed: the limits {limit:g}× and 1/{limit:g}.",
        )
