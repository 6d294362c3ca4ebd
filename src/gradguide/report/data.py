"""What a report reads: the rows of the results store and the record of every run (and, for
records that predate data.eval_majority, the task data of the ids they scored)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gradguide.bench.archive import ensure_store
from gradguide.bench.grid import grid_keys, stored_grid_keys
from gradguide.bench.spec import spec_from_stored
from gradguide.bench.store import Failure, RunRow, Store
from gradguide.bench.tune import is_cv_row
from gradguide.errors import GradguideError
from gradguide.health import finite_curves
from gradguide.metrics import normalised_loss_auc, steps_to_threshold
from gradguide.record import RECORD_NAME
from gradguide.report.majority import majority_of
from gradguide.train_config import NO_RESULT_FIELDS

Cells = dict[tuple[str, int], float]


@dataclasses.dataclass(frozen=True)
class RunData:
    """One finished run as the report sees it (store row plus facts from its record)."""

    key: str
    grid: str
    model: str
    task: str
    suite: str
    method: str
    shots: int
    seed: int
    settings: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, float]
    dynamics: dict[str, float | None]
    curves: dict[str, list[float | None]]
    train_ids: tuple[str, ...]
    eval_digest: str | None
    eval_size: int | None
    wall_s: float | None
    environment: dict[str, Any]
    has_record: bool
    #: the record's per-layer diagnostics (gradguide.layerwise), empty when the run had none
    layers: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: trainable parameters and the record's timings (seconds, peak_rss_mb), when recorded
    trainable: int | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    #: what each guidance term reported at the end of the run (record ``guidance.term_summaries``)
    term_summaries: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the prior its directional alignment was measured against (record ``guidance.prior``)
    prior: str | None = None
    #: why no alignment was measured, when the record says (record ``guidance.prior_note``)
    prior_note: str | None = None
    #: the guidance that shaped its gradient (record ``guidance.use``; empty: plain training)
    guidance_use: tuple[str, ...] = ()
    #: per curve, how many values the record held that were not finite numbers (read as None)
    nonfinite: dict[str, int] = dataclasses.field(default_factory=dict)
    #: training steps skipped for a non-finite loss or gradient (record ``skipped_steps``)
    skipped_steps: int = 0
    #: the accuracy of always answering the evaluation set's most common label (record
    #: ``data.eval_majority``; None in records that predate it)
    eval_majority: float | None = None
    #: how often each candidate index was predicted and was gold (record ``predictions``; None in
    #: records that predate it)
    label_counts: dict[str, tuple[int, ...]] | None = None

    @property
    def settings_label(self) -> str:
        """The swept settings, e.g. ``guidance.tau=0.3`` (empty when none were swept)."""
        return ", ".join(f"{k}={v}" for k, v in sorted(self.settings.items()))

    @property
    def variant(self) -> str:
        """The method plus any swept settings, e.g. ``sgg [guidance.tau=0.3]``."""
        return f"{self.method} [{self.settings_label}]" if self.settings else self.method

    def setting(self, path: str) -> Any:
        """A dotted configuration setting (``guidance.tau``) of this run, None if absent."""
        node: Any = self.config
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    def value(self, name: str) -> float | None:
        """A metric (from the metrics, else the dynamics block) if present and finite."""
        v = self.metrics.get(name, self.dynamics.get(name))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        return float(v)

    def loss_auc(self) -> float | None:
        """The normalised loss AUC: recorded in the dynamics, else computed from the loss curve."""
        recorded = self.value("loss_auc")
        if recorded is not None:
            return recorded
        return normalised_loss_auc(self.curves.get("loss") or [])

    def steps_to_loss_threshold(self) -> float | None:
        """Steps until the loss reached the convergence threshold (None: never, or no curve)."""
        recorded = self.value("steps_to_loss_threshold")
        if recorded is not None:
            return recorded
        steps = steps_to_threshold(self.curves.get("loss") or [])
        return float(steps) if steps is not None else None


@dataclasses.dataclass
class BenchData:
    """Everything stored in one bench directory."""

    bench_dir: Path
    runs: list[RunData]
    grids: dict[str, dict[str, Any]]
    failures: list[Failure]
    missing_records: list[str]
    #: runs left out because a later run filled the same cell with other settings
    superseded: list[Superseded] = dataclasses.field(default_factory=list)
    #: the grids the report was restricted to, each with the run keys it asks for
    grid_keys: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    #: failed runs left out because no stored grid asks for them any more (a preset changed)
    stale_failures: int = 0
    #: cross-validation runs on the k shots (gradguide.bench.tune): kept out of every result
    tuning: list[RunRow] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Superseded:
    """A run the report leaves out: a later run of the same cell, configured differently."""

    dropped: str
    kept: str
    cell: str
    #: dotted setting → (dropped run's value, kept run's value)
    differences: dict[str, tuple[Any, Any]]


def prior_label(guidance: Mapping[str, Any]) -> str | None:
    """The prior a run measured alignment against, named with its corpus where it has one.

    Two pretrain priors built from different corpora are different directions: records made
    before the corpus was recorded (gradguide's first default, BoolQ's validation passages) are
    labelled so, and a condition mixing them is flagged by the sanity checks.
    """
    name = guidance.get("prior")
    if name != "pretrain":
        return name
    corpus = (guidance.get("prior_made_from") or {}).get("corpus") or {}
    source = corpus.get("file")
    if not source:
        return "pretrain (BoolQ val passages, before the corpus was recorded)"
    return f"pretrain ({source})"


def _digest(ids: Iterable[str]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:16]


def _from_row(bench_dir: Path, row: RunRow) -> RunData:
    path = bench_dir / row.run_dir / RECORD_NAME
    record: dict[str, Any] = {}
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {}
    data = record.get("data") or {}
    guidance = record.get("guidance") or {}
    curves, nonfinite = finite_curves(record.get("curves") or {})
    dynamics = dict(row.dynamics or {})
    if not dynamics and isinstance(record.get("dynamics"), Mapping):
        dynamics = dict(record["dynamics"])
    return RunData(
        key=row.key,
        grid=row.grid,
        model=row.model,
        task=(record.get("task") or {}).get("name", row.task),
        suite=(record.get("task") or {}).get("suite", "unknown"),
        method=row.method,
        shots=row.shots,
        seed=row.seed,
        settings=dict(row.settings),
        config=dict(row.config),
        metrics=dict(row.metrics),
        dynamics=dynamics,
        curves=curves,
        train_ids=tuple(data.get("train_ids") or ()),
        eval_digest=_digest(data["eval_ids"]) if "eval_ids" in data else None,
        eval_size=data.get("eval_size"),
        wall_s=row.wall_s,
        environment=dict(record.get("environment") or {}),
        has_record=bool(record),
        layers=dict(record.get("layer_diagnostics") or {}),
        trainable=record.get("trainable_parameters"),
        timings=_timings(record),
        term_summaries=dict(guidance.get("term_summaries") or {}),
        prior=prior_label(guidance),
        prior_note=guidance.get("prior_note"),
        guidance_use=_guidance_use(guidance, row.config),
        nonfinite=nonfinite,
        skipped_steps=len(record.get("skipped_steps") or ()),
        eval_majority=_eval_majority(record),
        label_counts=_label_counts(record),
    )


def _label_counts(record: Mapping[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """The record's predicted and gold counts per candidate index, when it holds both."""
    counts = record.get("predictions")
    if not isinstance(counts, Mapping):
        return None
    try:
        out = {k: tuple(int(n) for n in counts[k]) for k in ("predicted", "gold")}
    except (KeyError, TypeError, ValueError):
        return None
    return out if sum(out["predicted"]) else None


def _eval_majority(record: Mapping[str, Any]) -> float | None:
    """The record's majority-class floor, else the task data's for the ids it scored."""
    data = record.get("data") or {}
    if isinstance(data.get("eval_majority"), (int, float)):
        return float(data["eval_majority"])
    task = (record.get("task") or {}).get("name")
    if not task or not data.get("eval_ids"):
        return None
    return majority_of(str(task), data.get("eval_split"), tuple(data["eval_ids"]))


def _guidance_use(guidance: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[str, ...]:
    """The guidance the run trained with: the record's list, else the configured string."""
    use = guidance.get("use")
    if isinstance(use, list):
        return tuple(str(u) for u in use)
    configured = str((config.get("guidance") or {}).get("use") or "")
    return tuple(u.strip() for u in configured.split(",") if u.strip())


def _timings(record: dict[str, Any]) -> dict[str, float]:
    """The record's finite timings. A process-wide peak (older records) includes earlier runs' and
    is left out; older records counted only a resumed run's last session in ``total_s``, which is
    raised to at least its load + training + evaluation seconds."""
    raw = record.get("timings") or {}
    out = {
        k: float(v)
        for k, v in raw.items()
        if isinstance(v, (int, float))
        and math.isfinite(v)
        and (k != "peak_rss_mb" or record.get("peak_rss_scope") == "run")
    }
    parts = ("model_load_s", "train_s", "eval_s")
    if "total_s" in out and "resumed_at_step" not in raw and all(k in out for k in parts):
        out["total_s"] = max(out["total_s"], sum(out[k] for k in parts))
    return out


def load_bench(bench_dir: str | Path, grids: Sequence[str] | None = None) -> BenchData:
    """Read a bench directory's store and run records (GradguideError when there is no store).

    A results archive (``gradguide results export``) gets its store built from its rows first.
    With ``grids``, only the runs those stored grids ask for are read: their own and the runs
    another grid had already finished for them (same key), so that grids configuring one method
    differently (SGG with and without a source task) are not mixed in one table.
    """
    root = Path(bench_dir)
    ensure_store(root)
    with Store(root, create=False) as store:
        rows = store.runs()
        stored = store.grids()
        failures = store.failures()
    keys: dict[str, set[str]] = {}
    if grids:  # the failures kept are those the named grids ask for: none is stale
        keys = {name: stored_grid_keys(name, stored, root) for name in grids}
        wanted = set().union(*keys.values())
        rows = [r for r in rows if r.key in wanted]
        failures = [f for f in failures if f.key in wanted]
        stored = {name: stored[name] for name in grids}
        stale = 0
    else:
        failures, stale = _drop_stale_failures(failures, stored)
    tuning = [r for r in rows if is_cv_row(r)]  # scored on held-out shots: not results
    rows = [r for r in rows if not is_cv_row(r)]
    runs = [_from_row(root, r) for r in rows]
    missing = [r.run_dir for r, d in zip(rows, runs, strict=True) if not d.has_record]
    runs, superseded = _latest_per_cell(runs)
    return BenchData(root, runs, stored, failures, missing, superseded, keys, stale, tuning)


def _drop_stale_failures(
    failures: list[Failure], stored: Mapping[str, Any]
) -> tuple[list[Failure], int]:
    """The failures some stored grid still asks for, and how many others were left out (all are
    kept when a stored grid cannot be expanded by this version, so nothing is hidden wrongly)."""
    if not failures or not stored:
        return failures, 0
    try:
        asked = set().union(*(grid_keys(spec_from_stored(spec)) for spec in stored.values()))
    except GradguideError:
        return failures, 0
    kept = [f for f in failures if f.key in asked]
    return kept, len({f.key for f in failures}) - len({f.key for f in kept})


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _latest_per_cell(runs: list[RunData]) -> tuple[list[RunData], list[Superseded]]:
    """One run per (model, shots, variant, task, seed): the last finished one.

    Two runs share a cell when they differ only in settings no grid swept (a preset changed, one
    grid with an evaluation limit and one without): averaging them, or picking one silently, would
    mix configurations, so the report keeps the latest and lists what the others differed in.
    """

    def cell(r: RunData) -> tuple[Any, ...]:
        return (r.model, r.shots, r.variant, r.task, r.seed)

    latest = {cell(r): r for r in runs}  # runs come in finishing order: the last one wins
    superseded = []
    for r in runs:
        winner = latest[cell(r)]
        if winner is r:
            continue
        mine, theirs = _flat(r.config), _flat(winner.config)
        diffs = {
            k: (mine.get(k), theirs.get(k))
            for k in sorted(set(mine) | set(theirs))
            if mine.get(k) != theirs.get(k) and k not in NO_RESULT_FIELDS
        }
        where = f"{r.model} {r.shots} shots {r.variant} {r.task} seed {r.seed}"
        superseded.append(Superseded(r.key, winner.key, where, diffs))
    return [r for r in runs if latest[cell(r)] is r], superseded


def cells(runs: Iterable[RunData], metric: str) -> Cells:
    """(task, seed) → value of ``metric`` for runs that have it."""
    out: Cells = {}
    for r in runs:
        v = r.value(metric)
        if v is not None:
            out[(r.task, r.seed)] = v
    return out
