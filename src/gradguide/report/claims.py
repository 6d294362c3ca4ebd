"""The seed papers' claims, each checked by code against the stored runs: the registry.

One module per paper holds its claims, their rules (``RULES``) and an ``evaluate`` function:
gradguide.report.claims_sgg (SGG, arXiv 2506.00726), claims_ofa (OFA, arXiv 2505.19107) and
claims_spectral (spectral parameter coordination, arXiv 2504.19583). Each claim comes out
**reproduced**, **not reproduced** or **not testable here** with the numbers behind it
(gradguide.report.verdict), or **not testable: failed sanity check** when a run it was decided
from fails one (gradguide.report.sanity); the report prints them paper by paper, in ``PAPERS``
order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from gradguide.report import claims_ofa, claims_sgg, claims_spectral
from gradguide.report.claims_sgg import PAPER_TABLE1
from gradguide.report.data import BenchData
from gradguide.report.sanity import Limits, Sanity, check
from gradguide.report.verdict import (
    FAILED_SANITY,
    NOT_REPRODUCED,
    NOT_TESTABLE,
    REPRODUCED,
    ClaimResult,
    withhold,
)


@dataclasses.dataclass(frozen=True)
class Paper:
    """One seed paper: how the report names it, its verdict rules, and its claims' checks."""

    name: str
    arxiv: str
    rules: tuple[str, ...]
    evaluate: Callable[[BenchData], list[ClaimResult]]
    #: how the report's opening table names it
    short: str

    @property
    def title(self) -> str:
        return f"{self.name} (arXiv {self.arxiv})"

    def checked(self, data: BenchData, sanity: Sanity) -> list[ClaimResult]:
        """Its claims' results, with no verdict for those decided from a run that failed a
        sanity check."""
        return [withhold(r, sanity.failures(r.measure, set(r.runs))) for r in self.evaluate(data)]


PAPERS = (
    Paper(
        "SGG: Structured Gradient Guidance",
        "2506.00726",
        claims_sgg.RULES,
        claims_sgg.evaluate,
        "SGG",
    ),
    Paper(
        "OFA: optimisation-inspired few-shot adaptation",
        "2505.19107",
        claims_ofa.RULES,
        claims_ofa.evaluate,
        "OFA",
    ),
    Paper(
        "Spectral parameter coordination",
        "2504.19583",
        claims_spectral.RULES,
        claims_spectral.evaluate,
        "Spectral",
    ),
)
#: Every paper's verdict rules, in PAPERS order.
RULES = tuple(rule for paper in PAPERS for rule in paper.rules)


def evaluate_claims(data: BenchData, limits: Limits | None = None) -> list[ClaimResult]:
    """Every claim of every seed paper, checked against the stored runs (in PAPERS order), with
    no verdict where a run fails a sanity check within ``limits``."""
    sanity = check(data, limits)
    return [result for paper in PAPERS for result in paper.checked(data, sanity)]


__all__ = [
    "FAILED_SANITY",
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
