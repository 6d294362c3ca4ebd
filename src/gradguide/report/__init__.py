"""The benchmark report: tables, paired statistics, plots and the papers' claims, from data alone.

``write_report(bench_dir)`` reads the results database and the run records of a bench directory
and writes ``report.md`` (figures beside it) and a self-contained ``report.html``.
"""

from __future__ import annotations

from gradguide.report.build import ReportFiles, build_report, write_report

__all__ = ["ReportFiles", "build_report", "write_report"]
