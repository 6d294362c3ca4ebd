"""Run a grid: skip what the store has, run the rest on a local process pool (or Ray), store rows.

Each run is an ordinary training run (``gradguide.train.train``) writing its record under
``OUT/runs/<key>/``. Workers only train; the parent process alone writes the database, one row per
finished run, after checking that the run's record exists. Killing the whole thing at any moment
loses at most the runs in progress: the same command skips every stored run, stores a run whose
record was written just before the kill, continues a killed run from its last checkpoint (when the
grid sets ``checkpoint_every``) and starts the others again in a fresh run directory (a directory
without ``record.json`` or a usable checkpoint is abandoned and left for inspection).
A worker process that dies under a running grid (killed, out of memory) costs only the runs it
was running: they go back to the queue once, in a fresh pool, and the grid goes on.

Several grids may write into one bench directory at once (runs they share have one key), and
several processes may run the same grid into it to share out its runs: a worker holds an exclusive
lock on ``runs/<key>/.lock`` while it trains, so a run is never trained twice at the same time, and
a run another process finished meanwhile is reused instead of trained again. In-process grids
(``workers=0``) pass over a run that is locked and come back to it at the end.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import fcntl
import json
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gradguide.bench.checks import check_data, check_models
from gradguide.bench.grid import expand_grid
from gradguide.bench.keys import run_key
from gradguide.bench.spec import GridRun, GridSpec
from gradguide.bench.store import DB_NAME, Store, row_from_record
from gradguide.config import from_dict, to_dict
from gradguide.errors import GradguideError
from gradguide.health import GradientWarning
from gradguide.record import RECORD_NAME
from gradguide.train_config import TrainConfig

BACKENDS = ("local", "ray")
RUNS_DIR = "runs"
LOCK_NAME = ".lock"
Result = dict[str, Any]
RETRIES = 1  # times a run killed with its worker goes back to the queue before it counts as failed
WORKER_DIED = "its worker process died (killed, or out of memory) each time it ran"


@dataclasses.dataclass
class GridOutcome:
    """What one ``run_grid`` call did."""

    total: int
    already: int
    recovered: int
    ran: int
    failed: list[tuple[str, str]]
    abandoned: int
    wall_s: float

    @property
    def ok(self) -> bool:
        """True when every run of the grid is now stored."""
        return not self.failed


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """Each worker's share of the cores (at least one thread)."""
    return max(1, available_cores() // max(1, workers))


def run_dirs(out_dir: Path, key: str) -> tuple[list[Path], list[Path]]:
    """A key's run directories: (finished ones, with record.json; abandoned ones, without)."""
    folder = out_dir / RUNS_DIR / key
    if not folder.is_dir():
        return [], []
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [p for p in dirs if (p / RECORD_NAME).is_file()], [
        p for p in dirs if not (p / RECORD_NAME).is_file()
    ]


def _finished_result(key: str, run_dir: Path) -> Result | None:
    """The result of a run directory that already holds this key's record (else None)."""
    try:
        record = json.loads((run_dir / RECORD_NAME).read_text())
        if run_key(from_dict(TrainConfig, record["config"])) != key:
            return None
        wall = record["timings"]["total_s"]
        return {"key": key, "ok": True, "run_dir": str(run_dir), "metrics": record["metrics"],
                "wall_s": wall, "reused": True}  # fmt: skip
    except (OSError, ValueError, KeyError, GradguideError):
        return None


def _resumable(key: str, run_dir: Path) -> bool:
    """Whether an abandoned run directory of this key holds a checkpoint to continue from."""
    from gradguide.trained import load_run_config

    if not (run_dir / "checkpoint" / "state.json").is_file():
        return False
    try:
        return run_key(load_run_config(run_dir)) == key
    except GradguideError:
        return False


def _train_key(key: str, config: TrainConfig, out: Path) -> Result:
    """Reuse a finished run of ``key``, else continue its newest checkpoint, else train afresh
    (a failed gradient check is said on the run's result line, not as a Python warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GradientWarning)
        return _train_key_quietly(key, config, out)


def _train_key_quietly(key: str, config: TrainConfig, out: Path) -> Result:
    from gradguide.train import train

    finished, abandoned = run_dirs(out.parent.parent, key)
    for d in finished:
        if (done := _finished_result(key, d)) is not None:
            return done
    for d in sorted(abandoned, reverse=True):
        if _resumable(key, d):
            try:
                result = train(config, resume=d, show_progress=False)
                break
            except GradguideError:  # a damaged checkpoint: it stays for inspection
                continue
    else:
        result = train(config, show_progress=False)
    return {
        "key": key,
        "ok": True,
        "run_dir": str(result.run_dir),
        "metrics": result.metrics,
        "wall_s": result.record["timings"]["total_s"],
    }


def execute_run(payload: dict[str, Any], threads: int | None = None) -> Result:
    """Train one grid run in this process; never raises (a failure comes back as data).

    Holds ``runs/<key>/.lock`` meanwhile, waiting for it if another process trains this key.
    """
    result = _execute(payload, threads, wait=True)
    assert result is not None  # waiting never gives up
    return result


def try_execute_run(payload: dict[str, Any]) -> Result | None:
    """``execute_run``, or None at once when another process holds the run's lock."""
    return _execute(payload, None, wait=False)


def _execute(payload: dict[str, Any], threads: int | None, *, wait: bool) -> Result | None:
    key = payload["key"]
    try:
        if threads:
            import torch

            torch.set_num_threads(threads)
        config = from_dict(TrainConfig, payload["config"])
        config.out = payload["out"]
        out = Path(payload["out"])
        out.mkdir(parents=True, exist_ok=True)
        with open(out / LOCK_NAME, "a") as lock:
            try:  # the kernel releases the lock if this process dies
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                return None
            try:
                return _train_key(key, config, out)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    except Exception as e:  # a failed run must not take the grid down
        message = " ".join(str(e).split()) or type(e).__name__
        return {"key": key, "ok": False, "error": f"{type(e).__name__}: {message}"}


def _init_worker(threads: int) -> None:
    """Pool initializer: pin the worker to its share of the cores."""
    import torch

    torch.set_num_threads(threads)


def _payload(run: GridRun, out_dir: Path) -> dict[str, Any]:
    return {
        "key": run.key,
        "config": to_dict(run.config),
        "out": str((out_dir / RUNS_DIR / run.key).resolve()),
    }


def _run_inline(
    payloads: Sequence[dict[str, Any]],
    on_result: Callable[[Result], None],
    on_defer: Callable[[str], None] = lambda _key: None,
) -> None:
    """Run one after another; a run another process is training is taken up again at the end."""
    deferred = []
    for p in payloads:
        result = try_execute_run(p)
        if result is None:
            deferred.append(p)
            on_defer(p["key"])
        else:
            on_result(result)
    for p in deferred:
        on_result(execute_run(p))


def _run_pool(
    payloads: Sequence[dict[str, Any]],
    workers: int,
    on_result: Callable[[Result], None],
    on_retry: Callable[[str], None] = lambda _key: None,
    *,
    run: Callable[[dict[str, Any]], Result] = execute_run,
    retries: int = RETRIES,
) -> None:
    """Run ``workers`` at a time in a process pool; a pool broken by a dead worker is replaced.

    A worker that dies (killed, out of memory) breaks the whole pool and takes the runs in it with
    it. The runs that were running then go back to the front of the queue, ``retries`` times each,
    to continue from their checkpoints in a fresh pool; runs not yet started are never charged.
    Only ``workers`` runs are handed to the pool at once, so the running ones are known.
    """
    threads = threads_per_worker(workers)
    context = multiprocessing.get_context("spawn")
    queue = collections.deque(payloads)
    breaks: collections.Counter[str] = collections.Counter()
    while queue:
        died: list[dict[str, Any]] = []  # the runs a broken pool took with it
        with cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(threads,)
        ) as pool:
            running: dict[cf.Future[Result], dict[str, Any]] = {}
            broken = False
            try:
                while queue or running:
                    while queue and len(running) < workers and not broken:
                        p = queue.popleft()
                        try:
                            running[pool.submit(run, p)] = p
                        except cf.process.BrokenProcessPool:
                            queue.appendleft(p)
                            broken = True
                    if not running:
                        break
                    done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for future in done:
                        p = running.pop(future)
                        try:
                            result = future.result()
                        except cf.process.BrokenProcessPool:
                            died.append(p)
                            broken = True
                            continue
                        on_result(result)
                    if broken and not running:
                        break
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        again = []
        for p in sorted(died, key=payloads.index):
            breaks[p["key"]] += 1
            if breaks[p["key"]] > retries:
                on_result({"key": p["key"], "ok": False, "error": WORKER_DIED})
            else:
                again.append(p)
                on_retry(p["key"])
        queue.extendleft(reversed(again))


def _run_ray(
    payloads: Sequence[dict[str, Any]], workers: int, on_result: Callable[[Result], None]
) -> None:
    try:
        import ray
    except ImportError:
        raise GradguideError(
            "the ray backend needs Ray, which is not installed here: pip install ray "
            "(or use --backend local)"
        ) from None
    threads = threads_per_worker(workers)
    started_here = False
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if not os.environ.get("RAY_ADDRESS"):
            options["num_cpus"] = workers * threads
        ray.init(**options)
        started_here = True
    try:
        remote = ray.remote(num_cpus=threads, max_retries=0)(execute_run)
        refs = {remote.remote(p, threads): p for p in payloads}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    result = ray.get(ref)
                except Exception as e:
                    result = {"key": refs[ref]["key"], "ok": False, "error": f"ray: {e}"}
                on_result(result)
    finally:
        if started_here:
            ray.shutdown()


def _recover(store: Store, run: GridRun, grid: str, out_dir: Path) -> bool:
    """Store a run whose record was written but whose row was not (killed in between)."""
    finished, _ = run_dirs(out_dir, run.key)
    for d in finished:
        try:
            record = json.loads((d / RECORD_NAME).read_text())
            if run_key(from_dict(TrainConfig, record["config"])) != run.key:
                continue
        except (OSError, ValueError, KeyError, GradguideError):
            continue
        rel = d.relative_to(out_dir).as_posix()
        store.add_run(row_from_record(run.key, grid, run.settings, rel, record))
        return True
    return False


def _result_line(run: GridRun, result: Result) -> str:
    if not result["ok"]:
        return f"FAILED {run.label()}: {result['error']}"
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    reused = ", finished by another grid" if result.get("reused") else ""
    checks = result.get("failed_checks")
    warn = f"; FAILS the gradient check: {'; '.join(checks)}" if checks else ""
    return f"{run.label()}: {shown} ({result['wall_s']:.1f} s{reused}){warn}"


def pending_runs(spec: GridSpec, out_dir: str | Path) -> tuple[list[GridRun], set[str]]:
    """The grid's runs and the keys already stored in ``out_dir`` (nothing is run)."""
    runs = expand_grid(spec)
    path = Path(out_dir)
    if not (path / DB_NAME).is_file():
        return runs, set()
    with Store(path) as store:
        return runs, store.finished_keys()


def run_grid(
    spec: GridSpec,
    out_dir: str | Path,
    workers: int = 1,
    backend: str = "local",
    *,
    show_progress: bool = True,
    check: bool = True,
    on_line: Callable[[str], None] | None = None,
) -> GridOutcome:
    """Run every run of ``spec`` not yet stored in ``out_dir``; store each one as it finishes.

    ``workers`` processes run at once (each with its share of the cores); ``workers=0`` runs in
    this process, one after another. ``backend="ray"`` hands the runs to Ray instead (a local Ray,
    or the cluster named by RAY_ADDRESS, whose workers must see ``out_dir``).
    """
    started = time.perf_counter()
    if backend not in BACKENDS:
        raise GradguideError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if workers < 0:
        raise GradguideError(f"must be >= 0, got {workers}", field="--workers")
    runs = expand_grid(spec)
    if check:
        problems = check_models(runs, spec.source) + check_data(runs, spec.source).problems
        if problems:
            raise GradguideError("cannot run this grid:\n  " + "\n  ".join(problems))
    out = Path(out_dir).resolve()
    store = Store(out)
    try:
        store.save_grid(spec.name, spec.to_dict())
        done = store.finished_keys()
        already = sum(r.key in done for r in runs)
        recovered, abandoned, resumable = 0, 0, 0
        todo: list[GridRun] = []
        for r in runs:
            if r.key in done:
                continue
            if _recover(store, r, spec.name, out):
                recovered += 1
                continue
            left = run_dirs(out, r.key)[1]
            abandoned += len(left)
            resumable += any(_resumable(r.key, d) for d in left)
            todo.append(r)
        by_key = {r.key: r for r in todo}
        failed: list[tuple[str, str]] = []
        say = on_line or (tqdm.write if show_progress else (lambda _line: None))
        bar = tqdm(
            total=len(todo), desc=f"bench {spec.name}", unit="run", disable=not show_progress
        )
        if abandoned:
            say(
                f"{abandoned} unfinished run directories: {resumable} of them continue from their "
                "last checkpoint, the others start afresh"
            )

        waiting = list(todo)  # submission order, which both pools start runs in
        at_once = max(1, workers)

        def show_running() -> None:
            running = ", ".join(r.label() for r in waiting[:at_once])
            bar.set_postfix_str(f"running {running}" if running else "")

        show_running()

        def on_defer(key: str) -> None:  # trained by another process now: last in the queue
            waiting.append(waiting.pop(waiting.index(by_key[key])))
            show_running()

        def on_retry(key: str) -> None:
            run = by_key[key]
            resumes = (
                " and continues from its last checkpoint" if run.config.checkpoint_every else ""
            )
            say(f"a worker died while training {run.label()}: it goes back to the queue{resumes}")

        def on_result(result: Result) -> None:
            run = by_key[result["key"]]
            waiting.remove(run)
            if result["ok"]:
                try:
                    run_dir = Path(result["run_dir"]).resolve()
                    record = json.loads((run_dir / RECORD_NAME).read_text())
                    rel = run_dir.relative_to(out).as_posix()
                    store.add_run(row_from_record(run.key, spec.name, run.settings, rel, record))
                    checks = (record.get("gradient_check") or {}).get("failed")
                    result = {**result, "failed_checks": checks or []}
                except (OSError, ValueError, KeyError, GradguideError) as e:
                    result = {"key": run.key, "ok": False, "error": f"cannot store the run: {e}"}
            if not result["ok"]:
                failed.append((run.key, result["error"]))
                store.add_failure(run.key, spec.name, run.label(), result["error"])
            bar.update(1)
            show_running()
            say(f"[{bar.n}/{len(todo)}] {_result_line(run, result)}")

        payloads = [_payload(r, out) for r in todo]
        try:
            if not payloads:
                pass
            elif backend == "ray":
                _run_ray(payloads, max(1, workers), on_result)
            elif workers == 0:
                _run_inline(payloads, on_result, on_defer)
            else:
                _run_pool(payloads, workers, on_result, on_retry)
        finally:
            bar.close()
        return GridOutcome(
            total=len(runs),
            already=already,
            recovered=recovered,
            ran=len(todo) - len(failed),
            failed=failed,
            abandoned=abandoned,
            wall_s=time.perf_counter() - started,
        )
    finally:
        store.close()


def summarize(outcome: GridOutcome) -> Iterable[str]:
    """Lines saying what a grid call did (for the command line)."""
    yield (
        f"{outcome.total} runs: {outcome.already} already stored, {outcome.recovered} recovered "
        f"from their records, {outcome.ran} ran, {len(outcome.failed)} failed "
        f"({outcome.wall_s:.0f} s)"
    )
    for key, error in outcome.failed:
        yield f"  failed {key}: {error}"
