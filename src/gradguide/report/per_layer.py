"""The per-layer diagnostics (the OFA paper's Figures 1-3): probe accuracy and loss, sharpness
and step ratio per layer, from the runs that recorded gradguide.layerwise diagnostics.
"""

from __future__ import annotations

import math

from gradguide.bench.stats import mean_ci
from gradguide.report import figures
from gradguide.report.analysis import conditions, half_width, upper_first
from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import Heading, Paragraph

#: per-layer quantities of gradguide.layerwise: record key, axis label, what the index means
LAYER_QUANTITIES = (
    ("probe_accuracy", "probe accuracy (%)", "layer (0 = embeddings, last = model output)"),
    ("probe_loss", "probe loss", "layer (0 = embeddings, last = model output)"),
    ("sharpness", "sharpness tr(P H P^T) per token", "block t"),
    ("step_ratio", "step ratio s(t+1)/s(t)", "block t"),
)


def per_layer_section(doc: Doc, data: BenchData) -> None:
    """The OFA paper's per-layer figures, from the runs that recorded layer diagnostics."""
    started = False
    for cond in conditions(data.runs):
        with_layers = [r for r in cond.runs if r.layers]
        tasks = list(dict.fromkeys(r.task for r in with_layers))
        if not tasks:
            continue
        if not started:
            doc.add(Heading("Per-layer diagnostics"))
            doc.add(Paragraph(_LAYERWISE_TEXT))
            started = True
        doc.add(Heading(cond.title, 3))
        for key, label, xlabel in LAYER_QUANTITIES:
            scale = 100.0 if key == "probe_accuracy" else 1.0
            for task in tasks:
                series = {}
                for v in cond.variants():
                    rows = [
                        r.layers[key]
                        for r in cond.runs_of(v)
                        if r.task == task and isinstance(r.layers.get(key), list) and r.layers[key]
                    ]
                    if rows and all(len(x) == len(rows[0]) for x in rows):
                        series[v] = _layer_points(rows, scale)
                if not series:
                    continue
                own = [r for r in with_layers if r.task == task]
                seeds = sorted({r.seed for r in own})
                n = own[0].layers.get("n_examples")
                doc.figure(
                    f"layers-{key}-{task}-{cond.title}",
                    figures.line_figure(
                        series, title=f"{label}, {task} ({cond.title})", xlabel=xlabel, ylabel=label
                    ),
                    f"{upper_first(label)} per layer on {task}, {cond.title}: mean over seeds "
                    f"{', '.join(map(str, seeds))} ± 95% interval, {n} evaluation examples.",
                )


_LAYERWISE_TEXT = (
    "Per-layer diagnostics as in the OFA paper's Figures 1-3 (gradguide.layerwise). Probe: the "
    "hidden state after each block read out through the final normalisation and the output "
    "head (logit lens, gradguide's choice), the task's candidates scored as the model's own "
    "output is; accuracy and cross entropy over the candidates. Sharpness: Hutchinson's "
    "estimate of tr(P_t H_t P_t^T) per token with P_t the gain of block t's input "
    "normalisation, read through the residual update u_t (its Jacobian ~ -P_t H_t); it is "
    "signed. Step ratio: s_(t+1)/(s_t + eps), s_t the norm of block t's residual update per "
    "token. Both averaged over the non-padding tokens of the scored sequences (in-context "
    "demonstrations included)."
)


def _layer_points(rows: list[list[float]], scale: float) -> list[figures.Point]:
    """(layer, mean over runs, 95% half width) for equally long per-layer lists."""
    points: list[figures.Point] = []
    for i in range(len(rows[0])):
        values = [x[i] for x in rows if x[i] is not None and math.isfinite(x[i])]
        if values:
            iv = mean_ci(values)
            points.append((float(i), scale * iv.mean, half_width(iv, scale)))
    return points
