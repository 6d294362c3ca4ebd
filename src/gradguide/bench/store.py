"""The results store: one SQLite database per bench directory, one row per finished run.

A row is written, in one transaction, only after the run's ``record.json`` exists, and the run key
is the primary key: a killed grid never leaves a half-written row, and re-running it can neither
lose nor duplicate one. WAL mode lets a report read while a grid writes. Run directories are
stored relative to the bench directory so that a bench directory can be moved as a whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gradguide.errors import GradguideError
from gradguide.record import RECORD_NAME

DB_NAME = "bench.sqlite"
SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    grid TEXT NOT NULL,
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    method TEXT NOT NULL,
    shots INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    settings TEXT NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL,
    dynamics TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    wall_s REAL,
    finished_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    grid TEXT NOT NULL,
    label TEXT NOT NULL,
    error TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS grids (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""


@dataclasses.dataclass(frozen=True)
class RunRow:
    """One finished run as stored: what it was, what it measured, where its record lies."""

    key: str
    grid: str
    model: str
    task: str
    method: str
    shots: int
    seed: int
    settings: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, float]
    dynamics: dict[str, float | None]
    run_dir: str
    wall_s: float | None
    finished_at: str


@dataclasses.dataclass(frozen=True)
class Failure:
    """A run that raised instead of finishing (it is retried the next time the grid runs)."""

    key: str
    grid: str
    label: str
    error: str
    at: str


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def arm_name(config: dict[str, Any]) -> str:
    """What a run compares as: its method, or its guidance (``sgg``) on LoRA, else ``sgg+full``.

    A method run with its own default guidance (``ofa``, which switches on guidance ``ofa``) is
    the method; other guidance on LayerNorm tuning reads ``ofa-step+layernorm``.
    """
    method = str(config.get("method", ""))
    use = str((config.get("guidance") or {}).get("use") or "").strip()
    if not use or use == _default_guidance(method):
        return method
    return use if method == "lora" else f"{use}+{method}"


def _default_guidance(method: str) -> str | None:
    from gradguide.methods import get_method  # here: the methods import torch and peft

    try:
        return get_method(method).default_guidance or None
    except GradguideError:
        return None


def row_from_record(
    key: str,
    grid: str,
    settings: dict[str, Any],
    run_dir: str,
    record: dict[str, Any],
) -> RunRow:
    """The store row of a finished run, taken from its record (``run_dir`` relative)."""
    config = record["config"]
    return RunRow(
        key=key,
        grid=grid,
        model=str(config["model"]),
        task=str(config["task"]),
        method=arm_name(config),
        shots=int(config["shots"]),
        seed=int(record.get("seed", config["seed"])),
        settings=dict(settings),
        config=config,
        metrics=dict(record.get("metrics") or {}),
        dynamics=dict(record.get("dynamics") or {}),
        run_dir=run_dir,
        wall_s=(record.get("timings") or {}).get("total_s"),
        finished_at=now_iso(),
    )


#: The axes of a stored grid spec: two grids of one name ran the union of theirs.
SPEC_AXES = ("models", "tasks", "methods", "shots", "seeds", "sweep")
NAMED_BASES = ("method_base", "model_base")  # settings per method / per model name


def union_spec(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Two stored specs of one grid name as one (``new`` alone when nothing was stored): the
    union of their axes and sweep blocks (old order first), of their per-method and per-model
    settings (the newer one's for a name both give), the other fields the newer one's.
    Replacing the old spec instead would make the report describe every run of that name by the
    last, reduced invocation (one run with ``--set methods=[lora]`` would drop sgg's own
    settings, and the runs the grid asks for would no longer be the ones it ran)."""
    if old is None:
        return new
    out = dict(new)
    for axis in SPEC_AXES:
        a, b = old.get(axis), new.get(axis)
        if isinstance(a, list) and isinstance(b, list):
            out[axis] = a + [x for x in b if x not in a]
    for block in NAMED_BASES:
        a, b = old.get(block), new.get(block)
        if isinstance(a, dict) and isinstance(b, dict):
            out[block] = {**a, **b}
    return out


class Store:
    """The SQLite results database of one bench directory (created on first use)."""

    def __init__(self, bench_dir: str | Path, *, create: bool = True) -> None:
        self.bench_dir = Path(bench_dir)
        self.path = self.bench_dir / DB_NAME
        if not create and not self.path.is_file():
            raise GradguideError(
                f"no results database ({DB_NAME}) here: run `gradguide bench` into this "
                "directory first",
                file=self.bench_dir,
            )
        try:
            self.bench_dir.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            with self._transaction() as c:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        c.execute(statement)
                c.execute(
                    "INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', ?)",
                    (SCHEMA_VERSION,),
                )
        except sqlite3.Error as e:
            raise GradguideError(f"cannot open the results database: {e}", file=self.path) from None

    def close(self) -> None:
        """Close the connection (the database stays consistent whenever this is skipped)."""
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def finished_keys(self) -> set[str]:
        """Keys of every stored (finished) run."""
        return {k for (k,) in self.conn.execute("SELECT key FROM runs")}

    def add_run(self, row: RunRow) -> bool:
        """Store a finished run once (False if its key is already stored); needs its record."""
        record = self.bench_dir / row.run_dir / RECORD_NAME
        if not record.is_file():
            raise GradguideError("run has no record.json; it is not finished", file=record.parent)
        with self._transaction() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO runs (key, grid, model, task, method, shots, seed, "
                "settings, config, metrics, dynamics, run_dir, wall_s, finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.key,
                    row.grid,
                    row.model,
                    row.task,
                    row.method,
                    row.shots,
                    row.seed,
                    json.dumps(row.settings, sort_keys=True),
                    json.dumps(row.config, sort_keys=True),
                    json.dumps(row.metrics, sort_keys=True),
                    json.dumps(row.dynamics, sort_keys=True),
                    row.run_dir,
                    row.wall_s,
                    row.finished_at,
                ),
            )
            return cur.rowcount == 1

    def add_failure(self, key: str, grid: str, label: str, error: str) -> None:
        """Log a failed attempt (kept as history; a later success makes it moot)."""
        with self._transaction() as c:
            c.execute(
                "INSERT INTO failures (key, grid, label, error, at) VALUES (?, ?, ?, ?, ?)",
                (key, grid, label, error, now_iso()),
            )

    def save_grid(self, name: str, spec: dict[str, Any]) -> None:
        """Remember the grid spec that wrote into this directory; a second grid of the same name
        (a reduced rerun: other tasks, shots or seeds) widens the stored one (``union_spec``)."""
        with self._transaction() as c:
            row = c.execute("SELECT spec FROM grids WHERE name = ?", (name,)).fetchone()
            spec = union_spec(json.loads(row[0]) if row else None, spec)
            c.execute(
                "INSERT INTO grids (name, spec, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, "
                "updated_at = excluded.updated_at",
                (name, json.dumps(spec, sort_keys=True), now_iso()),
            )

    def grids(self) -> dict[str, dict[str, Any]]:
        """Every grid spec stored here, by name."""
        return {
            name: json.loads(spec)
            for name, spec in self.conn.execute("SELECT name, spec FROM grids ORDER BY name")
        }

    def runs(self) -> list[RunRow]:
        """Every stored run, in the order they finished."""
        rows = self.conn.execute(
            "SELECT key, grid, model, task, method, shots, seed, settings, config, metrics, "
            "dynamics, run_dir, wall_s, finished_at FROM runs ORDER BY finished_at, rowid"
        )
        return [
            RunRow(
                key=r[0],
                grid=r[1],
                model=r[2],
                task=r[3],
                method=r[4],
                shots=int(r[5]),
                seed=int(r[6]),
                settings=json.loads(r[7]),
                config=json.loads(r[8]),
                metrics=json.loads(r[9]),
                dynamics=json.loads(r[10]),
                run_dir=r[11],
                wall_s=r[12],
                finished_at=r[13],
            )
            for r in rows
        ]

    def failures(self, *, unresolved: bool = True) -> list[Failure]:
        """Failed attempts; by default only those of runs that have not finished since."""
        query = "SELECT key, grid, label, error, at FROM failures"
        if unresolved:
            query += " WHERE key NOT IN (SELECT key FROM runs)"
        return [Failure(*r) for r in self.conn.execute(query + " ORDER BY id")]

    def count(self) -> int:
        """Number of finished runs stored."""
        return int(self.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
