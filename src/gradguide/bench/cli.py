"""``gradguide bench PRESET|grid.yaml``: run (or list, with --dry-run) a grid into a directory.

``add_bench_parser`` plugs the subcommand into the main ``gradguide`` parser;
``python -m gradguide.bench.cli`` runs it on its own (same flags, same exit codes).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradguide.errors import GradguideError

DEFAULT_ROOT = "bench"


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to an argparse subparsers object (sets ``func``)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "bench", help="run a grid of runs (a preset or a grid.yaml) into a results database"
    )
    _add_arguments(p)
    p.set_defaults(func=cmd_bench)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    from gradguide.bench.spec import list_presets

    p.add_argument("grid", help=f"a preset ({', '.join(list_presets())}) or a grid YAML file")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs at once, each in its own process with its share of the cores (default 1; "
        "0 = in this process)",
    )
    p.add_argument("--out", help=f"bench directory (default {DEFAULT_ROOT}/<grid name>)")
    p.add_argument(
        "--backend", choices=("local", "ray"), default="local", help="local process pool or Ray"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list the runs and the time estimate, run nothing"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-run lines")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a grid field, value as YAML: tasks=[rte], seeds=[2,3], "
        "base.checkpoint_every=10 (repeatable)",
    )


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _dry_run(spec: Any, out: Path, workers: int) -> int:
    from gradguide.bench.checks import check_data, check_models
    from gradguide.bench.estimate import Calibration, estimate_grid_seconds, format_duration
    from gradguide.bench.runner import pending_runs
    from gradguide.bench.store import DB_NAME, Store

    runs, done = pending_runs(spec, out)
    data = check_data(runs, spec.source, tokenizers=True)
    stored = []
    if (out / DB_NAME).is_file():
        with Store(out) as store:
            stored = store.runs()
    calibration = Calibration.from_rows(stored, data)
    rows = []
    how_many = {"measured": 0, "scaled": 0, "formula": 0}
    for r in runs:
        s, how = calibration.seconds(r)
        how_many[how] += 1
        state = "done" if r.key in done else "to run"
        settings = " ".join(f"{k}={v}" for k, v in r.settings.items())
        c = r.config
        rows.append(
            [
                r.index + 1,
                r.key,
                c.model,
                c.task,
                r.arm,
                c.shots,
                c.seed,
                settings,
                state,
                format_duration(s) + ("" if how == "formula" else f" ({how})"),
            ]
        )
    print(
        _table(
            rows,
            ["#", "key", "model", "task", "method", "shots", "seed", "settings", "state", "est."],
        )
    )
    todo = [r for r in runs if r.key not in done]
    n_todo = len(todo)
    todo_s = estimate_grid_seconds(todo, calibration, workers)
    total = estimate_grid_seconds(runs, calibration, workers)
    print(
        f"\n{spec.name}: {len(runs)} runs, {len(runs) - n_todo} already stored in {out}, "
        f"{n_todo} to run; estimated {format_duration(todo_s)} on a 2-core CPU "
        f"(whole grid {format_duration(total)}; an estimate, see gradguide.bench.estimate: "
        f"{how_many['measured']} runs like stored ones at their measured time, "
        f"{how_many['scaled']} scaled by stored runs of their model and task, "
        f"{how_many['formula']} by the formula alone)"
    )
    for problem in check_models(runs, spec.source) + data.problems:
        print(f"warning: {problem}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    """Run (or with --dry-run list) the grid; exit 1 when some run failed."""
    from gradguide.bench.runner import run_grid, summarize
    from gradguide.bench.spec import load_grid
    from gradguide.bench.store import DB_NAME

    spec = load_grid(a.grid, a.set)
    out = Path(a.out) if a.out else Path(DEFAULT_ROOT) / spec.name
    if a.dry_run:
        return _dry_run(spec, out, a.workers)
    outcome = run_grid(spec, out, workers=a.workers, backend=a.backend, show_progress=not a.quiet)
    for line in summarize(outcome):
        print(line)
    print(f"results: {out / DB_NAME} (report: gradguide report {out})")
    return 0 if outcome.ok else 1


def add_results_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``results export|import`` (gradguide.bench.archive) to an argparse subparsers object."""
    p: argparse.ArgumentParser = sub.add_parser(
        "results", help="copy finished runs' records to or from a text archive kept in git"
    )
    verbs = p.add_subparsers(dest="verb", required=True)
    e = verbs.add_parser("export", help="add a bench directory's finished runs to an archive")
    e.add_argument("bench_dir", help="a bench directory (holding bench.sqlite)")
    e.add_argument("dest", help="the archive directory (created; merged into when it exists)")
    i = verbs.add_parser("import", help="store an archive's runs in a bench directory")
    i.add_argument("archive", help="an archive directory (holding rows.jsonl)")
    i.add_argument("bench_dir", nargs="?", help="bench directory (default: the archive itself)")
    p.set_defaults(func=cmd_results)
    return p


def cmd_results(a: argparse.Namespace) -> int:
    """Export finished runs to a results archive, or import an archive into a bench directory."""
    from gradguide.bench.archive import export_results, import_results

    if a.verb == "export":
        t = export_results(a.bench_dir, a.dest)
        where = a.dest
    else:
        t = import_results(a.archive, a.bench_dir)
        where = a.bench_dir or a.archive
    print(f"{where}: {t.added} runs added, {t.present} already there, {t.files} files copied")
    return 0


def add_tune_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``tune`` (gradguide.bench.tune) to an argparse subparsers object."""
    p: argparse.ArgumentParser = sub.add_parser(
        "tune",
        help="the settings a tuning grid's cross-validation on the k shots chooses",
        description="Read the cross-validation runs of a bench directory (a grid with "
        "base.cv_folds, sweeping cv_fold and the settings to choose from, e.g. `gradguide bench "
        "tune-lr`) and say, per model, method and shots, which setting scores best on the "
        "held-out folds of the k shots.",
    )
    p.add_argument("bench_dir", help="a bench directory or results archive")
    p.add_argument("--metric", default="accuracy", help="the held-out metric (default accuracy)")
    p.add_argument("--grid", help="only the runs of this stored grid")
    p.set_defaults(func=cmd_tune)
    return p


def cmd_tune(a: argparse.Namespace) -> int:
    """Print the choice of every tuning grid stored in a bench directory."""
    from gradguide.bench.archive import ensure_store
    from gradguide.bench.grid import stored_grid_rows
    from gradguide.bench.store import Store
    from gradguide.bench.tune import choice_lines, choose, record_check

    root = Path(a.bench_dir)
    ensure_store(root)
    with Store(root, create=False) as store:
        rows = store.runs()
        if a.grid is not None:
            rows = stored_grid_rows(rows, a.grid, store.grids(), root)
    choices = choose(rows, a.metric, record_check(root))
    if not choices:
        raise GradguideError(
            "no cross-validation runs here (a tuning grid sets base.cv_folds and sweeps "
            "cv_fold; see `gradguide bench tune-lr`)",
            file=root,
        )
    print("\n".join(choice_lines(choices)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gradguide.bench.cli``: the bench subcommand on its own."""
    parser = argparse.ArgumentParser(prog="gradguide bench", description=cmd_bench.__doc__)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_bench(args)
    except GradguideError as e:
        print(f"gradguide: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradguide: interrupted (run the same command again to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
