"""The seed papers' claims, each checked by code against the stored runs: the registry.

One module per paper holds its claims, their rules (``RULES``) and an ``evaluate`` function:
gradguide.report.claims_sgg (SGG, arXiv 2506.00726), claims_ofa (OFA, arXiv 2505.19107) and
claims_spectral (spectral parameter coordination, arXiv 2504.19583). Each claim comes out
**reproduced**, **not reproduced** or **not testable here** with the numbers behind it
(gradguide.report.verdict); the report prints them paper by paper, in ``PAPERS`` order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from gradguide.report import claims_ofa, claims_sgg, claims_spectral
from gradguide.report.claims_sgg import PAPER_TABLE1
from gradguide.report.data import BenchData
from gradguide.report.verdict import NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, ClaimResult


@dataclasses.dataclass(frozen=True)
class Paper:
    """One seed paper: how the report names it, its verdict rules, and its claims' checks."""

    name: str
    arxiv: str
    rules: tuple[str, ...]
    evaluate: Callable[[BenchData], list[ClaimResult]]

    @property
    def title(self) -> str:
        return f"{self.name} (arXiv {self.arxiv})"


PAPERS = (
    Paper("SGG: Structured Gradient Guidance", "2506.00726", claims_sgg.RULES, claims_sgg.evaluate),
    Paper(
        "OFA: optimisation-inspired few-shot adaptation",
        "2505.19107",
        claims_ofa.RULES,
        claims_ofa.evaluate,
    ),
    Paper(
        "Spectral parameter coordination",
        "2504.19583",
        claims_spectral.RULES,
        claims_spectral.evaluate,
    ),
)
#: Every paper's verdict rules, in PAPERS order.
RULES = tuple(rule for paper in PAPERS for rule in paper.rules)


def evaluate_claims(data: BenchData) -> list[ClaimResult]:
    """Every claim of every seed paper, checked against the stored runs (in PAPERS order)."""
    return [result for paper in PAPERS for result in paper.evaluate(data)]


__all__ = [
    "NOT_REPRODUCED",
    "NOT_TESTABLE",
    "PAPERS",
    "PAPER_TABLE1",
    "REPRODUCED",
    "RULES",
    "ClaimResult",
    "Paper",
    "evaluate_claims",
]
