"""The report being built: its blocks in order, and figures named uniquely.

Every section module (gradguide.report.results, ablation, sanity, summary, spectral_diag, ...)
appends to one ``Doc``; it lives here so that the sections need not import the module that
assembles them (gradguide.report.build).
"""

from __future__ import annotations

import re
from collections import Counter

from gradguide.report.render import Block, Figure


class Doc:
    """Blocks in order, with unique figure names."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.names: Counter[str] = Counter()

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def figure(self, stem: str, png: bytes, caption: str) -> None:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", stem).strip("-").lower() or "figure"
        self.names[slug] += 1
        name = slug if self.names[slug] == 1 else f"{slug}-{self.names[slug]}"
        self.blocks.append(Figure(name, png, caption))
