"""``gradguide report DIR``: write report.md and report.html for a bench directory.

``add_report_parser`` plugs the subcommand into the main ``gradguide`` parser;
``python -m gradguide.report.cli`` runs it on its own.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from gradguide.errors import GradguideError


def add_report_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to an argparse subparsers object (sets ``func``)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "report", help="write report.md and a self-contained report.html for a bench directory"
    )
    _add_arguments(p)
    p.set_defaults(func=cmd_report)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="a bench directory (holding bench.sqlite and runs/)")
    p.add_argument("--out", help="write the report here instead of into DIR")
    p.add_argument(
        "--grid",
        action="append",
        metavar="NAME",
        help="only the runs this stored grid asks for, including those another grid ran for it "
        "(repeatable; default: every run in DIR)",
    )
    p.add_argument(
        "--sanity-ratio",
        type=float,
        default=10.0,
        metavar="X",
        help="a guided run fails its sanity check when its median ‖guided g‖/‖g‖ is above X or "
        "below 1/X (default 10)",
    )
    p.add_argument(
        "--sanity-penalty",
        type=float,
        default=1.0,
        metavar="P",
        help="... or when the penalties' part of its median update outweighs the task gradient "
        "P times, ‖guided g − g‖/‖g‖ > P (default 1)",
    )
    p.add_argument(
        "--sanity-clip-scale",
        type=float,
        default=0.1,
        metavar="C",
        help="... or when clipping scales its median step by less than C (default 0.1)",
    )


def cmd_report(a: argparse.Namespace) -> int:
    """Build the report from the store and the run records; print where it went."""
    from gradguide.report.build import summary_lines, write_report
    from gradguide.report.sanity import Limits

    limits = Limits(a.sanity_ratio, a.sanity_penalty, a.sanity_clip_scale)
    files = write_report(a.dir, a.out, grids=a.grid, limits=limits)
    for line in summary_lines(files):
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gradguide.report.cli``: the report subcommand on its own."""
    parser = argparse.ArgumentParser(prog="gradguide report", description=cmd_report.__doc__)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_report(args)
    except GradguideError as e:
        print(f"gradguide: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
