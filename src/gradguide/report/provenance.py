"""Where the runs came from (grids, commits, packages), at the report's end; paths relative to it.

A report travels with its results directory (a clone, a CI artefact), so it names files
relative to that directory and never by an absolute path: ``relative_paths`` rewrites any
absolute path left in the text (a grid's source file, an error message) relative to it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from gradguide.bench.spec import departures_from_preset
from gradguide.report.data import BenchData
from gradguide.report.doc import Doc
from gradguide.report.render import Block, BulletList, Figure, Heading, Paragraph, Table

#: an absolute POSIX path of two or more parts, at the start of the text or after a space,
#: quote, bracket or ``=``/``:``
_ABSOLUTE = re.compile(r"(?:(?<=^)|(?<=[\s'\"(\[=:]))/(?:[\w.+-]+/)+[\w.+-]*")


def _short_commit(commit: object) -> str:
    text = str(commit)
    return text[:12] + ("-dirty" if text.endswith("-dirty") else "")


def provenance_section(doc: Doc, data: BenchData) -> None:
    """The grids the runs came from, the commits and torch versions that ran them."""
    runs = data.runs
    doc.add(Heading("Provenance"))
    items = [
        f"results directory: {data.bench_dir.name or '.'} (paths in this report are relative to "
        "it; each run's files are under runs/)",
    ]
    for name, spec in data.grids.items():
        desc = spec.get("description") or ""
        own = [r for r in runs if r.grid == name]
        hours = sum(r.wall_s for r in own if r.wall_s is not None) / 3600
        line = (
            f"grid {name}"
            + (f": {desc}" if desc else "")
            + f" ({spec.get('source')}): {len(own)} runs stored under it, run time {hours:.2f} h"
        )
        departures = departures_from_preset(spec)
        if departures:
            line += "; reduced or changed from its preset: " + "; ".join(departures)
        if name in data.grid_keys:
            asked = data.grid_keys[name]
            found = [r for r in runs if r.key in asked]
            line += (
                f"; {len(found)} of the {len(asked)} runs it asks for are here, "
                f"{sum(r.grid != name for r in found)} of them run by another grid"
            )
        items.append(line)
    commits = sorted(
        {_short_commit(r.environment.get("git_commit")) for r in runs if r.environment}
    )
    if commits:
        items.append("gradguide commit(s): " + ", ".join(commits))
    torch_versions = sorted(
        {str((r.environment.get("packages") or {}).get("torch")) for r in runs if r.environment}
    )
    if torch_versions:
        items.append("torch: " + ", ".join(torch_versions))
    doc.add(BulletList(tuple(items)))


def relative_text(text: str, root: Path) -> str:
    """``text`` with every absolute path rewritten relative to ``root``."""
    base = os.path.abspath(root)
    return _ABSOLUTE.sub(lambda m: os.path.relpath(m.group(0), base), text)


def relative_paths(blocks: list[Block], root: Path) -> list[Block]:
    """Every block's text with absolute paths rewritten relative to ``root`` (figures as is)."""

    def rel(text: str) -> str:
        return relative_text(text, root)

    out: list[Block] = []
    for b in blocks:
        if isinstance(b, Heading | Paragraph):
            out.append(dataclasses.replace(b, text=rel(b.text)))
        elif isinstance(b, BulletList):
            out.append(BulletList(tuple(rel(i) for i in b.items)))
        elif isinstance(b, Table):
            out.append(
                dataclasses.replace(
                    b,
                    header=tuple(rel(h) for h in b.header),
                    rows=tuple(tuple(rel(c) for c in row) for row in b.rows),
                    caption=rel(b.caption),
                )
            )
        elif isinstance(b, Figure):
            out.append(dataclasses.replace(b, caption=rel(b.caption)))
    return out
