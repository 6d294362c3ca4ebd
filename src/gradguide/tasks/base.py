"""The shape every task produces: instances of (prompt, completion) candidates and a gold index.

DESIGN.md, "Tasks produce candidates": prediction is the best-scoring candidate, training is cross
entropy over the candidates' scores. Classification uses verbalizer words, COPA its two choices,
MultiRC one yes/no instance per answer option grouped by question.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Instance:
    """One decision to score.

    ``id`` is stable across runs (split plus the file's own index, e.g. ``"val:17"``) and is what
    run records store as the data sample. ``group`` ties MultiRC answer options to their question
    (exact match is computed per group); it is also the unit of k-shot sampling when present.
    ``text`` is the example's own input, its template fields without the template (one per line):
    what a method that embeds the example rather than prompting a model reads (SetFit).
    """

    id: str
    prompt: str
    candidates: tuple[str, ...]
    gold: int
    label: str
    group: str | None = None
    text: str | None = None

    @property
    def demonstration(self) -> str:
        """The instance as an in-context demonstration: its prompt plus the gold completion."""
        return self.prompt + self.candidates[self.gold]


@runtime_checkable
class Task(Protocol):
    """A labelled task that turns its files into instances.

    ``labels`` are the label names in gold-index order for classification-like tasks (the
    verbalizer maps each to its completion word); ``metrics`` names the official metrics
    (see gradguide.metrics). ``template`` and ``verbalizer`` are the defaults, overridable.
    """

    name: str
    suite: str
    description: str
    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    train_split: str
    eval_split: str
    template: str
    verbalizer: Mapping[str, str]

    def files(self, data_root: Path | None) -> dict[str, Path]:
        """Path of every split this task knows, under ``data_root``."""
        ...

    def load(self, split: str, data_root: Path | None = None) -> list[Instance]:
        """Read one split and build its instances; bad input raises GradguideError."""
        ...


@dataclass(frozen=True)
class Prompting:
    """A template (``str.format`` placeholders named after the record's fields) and a verbalizer."""

    template: str
    verbalizer: Mapping[str, str] = field(default_factory=dict)
