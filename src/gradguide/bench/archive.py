"""Portable, text-only copies of a bench directory's results, small enough to keep in git.

A bench directory holds a SQLite store and, per run, weights and checkpoints (hundreds of MB for
full fine-tuning). Measurements that take hours must outlive the machine they ran on, so
``export_results`` writes what the report needs and nothing else: ``rows.jsonl`` (one stored row
a line), ``grids.json`` (the grid specs) and each run's ``record.json``, ``config.json`` and
``log.jsonl``, in the same layout as a bench directory. Exporting again merges: rows already in
the archive stay, new ones are added. ``import_results`` loads such an archive into a bench
directory's store (by default the archive's own, so ``gradguide report ARCHIVE`` works on it), and a
grid continued with ``--out`` there skips every archived run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from gradguide.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from gradguide.bench.store import RunRow, Store, union_spec
from gradguide.errors import GradguideError
from gradguide.record import RECORD_NAME

ROWS_NAME = "rows.jsonl"
GRIDS_NAME = "grids.json"
#: the files of a run directory worth keeping: its record, its configuration and its step log
KEPT_FILES = (RECORD_NAME, "config.json", "log.jsonl")


@dataclasses.dataclass(frozen=True)
class Transfer:
    """What an export or import did: rows added, rows already there, files copied."""

    added: int
    present: int
    files: int


def read_rows(archive: str | Path) -> list[RunRow]:
    """The rows of an archive's ``rows.jsonl`` (GradguideError naming the line when malformed)."""
    path = Path(archive) / ROWS_NAME
    if not path.is_file():
        return []
    fields = {f.name for f in dataclasses.fields(RunRow)}
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError("a line must be a JSON object")
            missing = sorted(fields - set(data))
            if missing:
                raise GradguideError("missing", file=path, line=n, field=missing[0])
            rows.append(RunRow(**{k: data[k] for k in fields}))
        except (ValueError, TypeError) as e:
            raise GradguideError(f"not a stored run: {e}", file=path, line=n) from None
    return rows


def read_grids(archive: str | Path) -> dict[str, Any]:
    """The grid specs of an archive's ``grids.json`` by name (empty when there is none)."""
    path = Path(archive) / GRIDS_NAME
    if not path.is_file():
        return {}
    try:
        grids = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise GradguideError(f"not JSON: {e}", file=path) from None
    if not isinstance(grids, dict):
        raise GradguideError("must map grid names to grid specs", file=path)
    return grids


def _copy_run_files(src_root: Path, dst_root: Path, run_dir: str) -> int:
    """Copy the kept files of one run directory; a file already at the destination is left."""
    src, dst = src_root / run_dir, dst_root / run_dir
    if not (src / RECORD_NAME).is_file():
        raise GradguideError("stored run has no record.json", file=src)
    copied = 0
    for name in KEPT_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            write_bytes_atomic(dst / name, (src / name).read_bytes())
            copied += 1
    return copied


def export_results(bench_dir: str | Path, dest: str | Path) -> Transfer:
    """Add the finished runs of ``bench_dir`` (rows, grids, kept files) to the archive ``dest``."""
    src, out = Path(bench_dir), Path(dest)
    if src.resolve() == out.resolve():
        raise GradguideError("export into the bench directory itself", file=out)
    with Store(src, create=False) as store:
        rows, grids = store.runs(), store.grids()
    have = {r.key: r for r in read_rows(out)}
    files = 0
    added = [r for r in rows if r.key not in have]
    for r in added:
        files += _copy_run_files(src, out, r.run_dir)
    merged = list(have.values()) + added
    merged.sort(key=lambda r: (r.finished_at, r.key))
    out.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(dataclasses.asdict(r), sort_keys=True) for r in merged]
    write_text_atomic(out / ROWS_NAME, "".join(line + "\n" for line in lines))
    known = read_grids(out)
    for name, spec in grids.items():
        known[name] = union_spec(known.get(name), spec)
    write_json_atomic(out / GRIDS_NAME, known)
    return Transfer(added=len(added), present=len(rows) - len(added), files=files)


def import_results(archive: str | Path, bench_dir: str | Path | None = None) -> Transfer:
    """Store an archive's rows (and copy its files) in ``bench_dir``, the archive itself by default.

    Rows whose key the store already holds are left as they are: importing twice adds nothing.
    """
    src = Path(archive)
    out = Path(bench_dir) if bench_dir is not None else src
    rows = read_rows(src)
    if not rows and not (src / ROWS_NAME).is_file():
        raise GradguideError(f"no {ROWS_NAME} here: not a results archive", file=src)
    grids = read_grids(src)
    files = added = 0
    with Store(out) as store:
        done = store.finished_keys()
        for name, spec in grids.items():
            store.save_grid(name, spec)  # widens a spec of that name the store already has
        for r in rows:
            if r.key in done:
                continue
            if out.resolve() != src.resolve():
                files += _copy_run_files(src, out, r.run_dir)
            added += store.add_run(r)
    return Transfer(added=added, present=len(rows) - added, files=files)


def ensure_store(bench_dir: str | Path) -> None:
    """Bring an archive's ``bench.sqlite`` up to its ``rows.jsonl`` (built on a fresh checkout,
    and given the rows a later export or ``git pull`` added); a plain bench directory is left."""
    root = Path(bench_dir)
    if (root / ROWS_NAME).is_file():
        import_results(root)
