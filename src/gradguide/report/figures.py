"""The report's plots, drawn with matplotlib's Agg backend and returned as PNG bytes."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

#: (x, y, half-width of the interval or None)
Point = tuple[float, float, float | None]
DPI = 100


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def line_figure(
    series: Mapping[str, Sequence[Point]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xscale: str = "linear",
    yscale: str = "linear",
    xticks: Sequence[float] | None = None,
    reference: tuple[float, str] | None = None,
) -> bytes:
    """One line per series, with error bars where a point has an interval."""
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for label, points in series.items():
        pts = sorted(points)
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        errs = [p[2] if p[2] is not None and math.isfinite(p[2]) else 0.0 for p in pts]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label)
    if reference is not None:
        ax.axhline(reference[0], color="grey", linestyle="--", linewidth=1, label=reference[1])
    if xscale == "log2":
        ax.set_xscale("log", base=2)
    elif xscale != "linear":
        ax.set_xscale(xscale)
    if yscale != "linear":
        ax.set_yscale(yscale)
    if xticks:
        ax.set_xticks(list(xticks))
        ax.set_xticklabels([f"{t:g}" for t in xticks])
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def curve_figure(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    yscale: str = "linear",
) -> bytes:
    """Plain curves (training loss, gradient norm) without markers."""
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for label, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), label=label)
    if yscale != "linear":
        ax.set_yscale(yscale)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def band_figure(
    series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    yscale: str = "linear",
    lines: Sequence[float] = (),
) -> bytes:
    """A middle curve per series (x, middle, low, high) over a shaded low–high band; dashed
    horizontal lines at ``lines``."""
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for label, (xs, mid, low, high) in series.items():
        (line,) = ax.plot(list(xs), list(mid), label=label)
        ax.fill_between(list(xs), list(low), list(high), color=line.get_color(), alpha=0.2)
    for y in lines:
        ax.axhline(y, color="grey", linestyle="--", linewidth=1)
    if yscale != "linear":
        ax.set_yscale(yscale)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def bar_figure(
    categories: Sequence[str],
    series: Mapping[str, Sequence[tuple[float, float | None] | None]],
    *,
    title: str,
    ylabel: str,
    hline: float | None = None,
) -> bytes:
    """Grouped bars: one group per category, one bar per series, interval as error bar."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(categories) + 3), 4.4))
    n = max(1, len(series))
    width = 0.8 / n
    for i, (label, values) in enumerate(series.items()):
        xs, ys, errs = [], [], []
        for j, v in enumerate(values):
            if v is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(v[0])
            errs.append(v[1] if v[1] is not None and math.isfinite(v[1]) else 0.0)
        ax.bar(xs, ys, width=width, yerr=errs, capsize=3, label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(list(categories), rotation=20, ha="right")
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


#: one panel of ``panel_bars``: its title, its categories, and per series a bar per category
Panel = tuple[str, Sequence[str], Mapping[str, Sequence[tuple[float, float | None] | None]]]


def panel_bars(panels: Sequence[Panel], *, ylabel: str, hline: float | None = 0.0) -> bytes:
    """Grouped bars in panels stacked vertically (one per condition), each with its own legend; a
    series keeps its colour in every panel (its label up to a parenthesised note names it)."""
    widest = max(len(cats) * max(1, len(series)) for _, cats, series in panels)
    names = list(dict.fromkeys(label.split(" (")[0] for _, _, series in panels for label in series))
    palette: list[Any] = list(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    if len(names) > len(palette):
        palette = [plt.get_cmap("tab20")(i) for i in range(20)]
    colour = {name: palette[i % len(palette)] for i, name in enumerate(names)}
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(max(7.0, 0.28 * widest + 3.5), 3.6 * len(panels)),
        squeeze=False,
    )
    for ax, (title, categories, series) in zip(axes[:, 0], panels, strict=True):
        n = max(1, len(series))
        width = 0.8 / n
        for i, (label, values) in enumerate(series.items()):
            xs, ys, errs = [], [], []
            for j, v in enumerate(values):
                if v is None:
                    continue
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(v[0])
                errs.append(v[1] if v[1] is not None and math.isfinite(v[1]) else 0.0)
            ax.bar(
                xs,
                ys,
                width=width,
                yerr=errs,
                capsize=2,
                label=label,
                color=colour[label.split(" (")[0]],
            )
        if hline is not None:
            ax.axhline(hline, color="black", linewidth=0.8)
        ax.set_xticks(range(len(categories)))
        ax.set_xticklabels(list(categories))
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)
