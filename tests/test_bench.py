"""The bench harness: grid specs and their errors, the results store, running, resuming, Ray."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gradguide.bench.cli import main as bench_main
from gradguide.bench.grid import (
    check_data,
    expand_grid,
    list_presets,
    load_grid,
    parse_grid,
    run_key,
    setting_type,
)
from gradguide.bench.runner import RUNS_DIR, run_dirs, run_grid
from gradguide.bench.store import DB_NAME, Store, row_from_record
from gradguide.config import from_dict
from gradguide.errors import GradguideError
from gradguide.guidance import GUIDANCE
from gradguide.methods import list_methods
from gradguide.tasks import resolve_data_root
from gradguide.train import TrainConfig

SRC = Path(__file__).resolve().parents[1] / "src"


def _fast_base(steps: int = 4) -> dict[str, Any]:
    """Tiny, quick runs (skip the alignment prior where this version measures it)."""
    base: dict[str, Any] = {"eval_limit": 8, "optim": {"steps": steps, "batch_size": 4}}
    try:
        setting_type("guidance.measure_alignment")
        base["guidance"] = {"measure_alignment": False}
    except KeyError:
        pass
    return base


def _grid(**kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "t",
        "models": ["tiny-llama"],
        "tasks": ["demo-sentiment"],
        "methods": ["zero-shot", "lora"],
        "shots": [8],
        "seeds": [1, 2],
        "base": _fast_base(),
    }
    spec.update(kw)
    return spec


def _write(tmp_path: Path, spec: dict[str, Any], name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def _rows(out: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(out / DB_NAME) as c:
        return list(c.execute("SELECT key, run_dir FROM runs ORDER BY key"))


# --------------------------------------------------------------------------------------------
# Grid specs


def test_grid_expands_deterministically_with_stable_keys(tmp_path):
    spec = parse_grid(_grid(seeds=[1, 2, 3]), source="g.yaml")
    runs = expand_grid(spec)
    assert [(r.config.seed, r.config.method) for r in runs] == [
        (s, m) for s in (1, 2, 3) for m in ("zero-shot", "lora")
    ]
    assert len({r.key for r in runs}) == 6
    assert [r.key for r in expand_grid(parse_grid(_grid(seeds=[1, 2, 3])))] == [r.key for r in runs]
    c = runs[1].config
    c.out = "elsewhere"
    assert run_key(c) == runs[1].key  # where files go is not part of the key
    c.optim.lr = 0.123
    assert run_key(c) != runs[1].key
    assert runs[1].config.optim.steps == 4 and runs[1].config.eval_limit == 8


def test_sweeps_cross_product_union_and_method_limits():
    spec = parse_grid(
        _grid(
            seeds=[1],
            sweep=[
                {"methods": ["lora"], "optim.lr": [1e-3, 1e-2], "method_options.lora_r": [2, 4]},
                {"methods": ["lora"], "optim": {"weight_decay": [0.0, 0.1]}},
                {"methods": ["lora"], "optim.weight_decay": [0.1]},
            ],
        )
    )
    runs = expand_grid(spec)
    zero = [r for r in runs if r.config.method == "zero-shot"]
    lora = [r for r in runs if r.config.method == "lora"]
    assert len(zero) == 1 and zero[0].settings == {}
    # 2 x 2 cross product plus 2 one-at-a-time values; the third block repeats a run: merged
    assert len(lora) == 6
    assert {tuple(sorted(r.settings)) for r in lora} == {
        ("method_options.lora_r", "optim.lr"),
        ("optim.weight_decay",),
    }
    assert len({r.key for r in runs}) == len(runs)


def test_a_block_of_methods_alone_runs_them_with_the_base_settings_beside_their_variants():
    """Without it a method covered by a sweep block lost its base run (and that run's key)."""
    plain = {r.config.method: r.key for r in expand_grid(parse_grid(_grid(seeds=[1])))}
    spec = parse_grid(
        _grid(
            seeds=[1],
            sweep=[{"methods": ["lora"]}, {"methods": ["lora"], "optim.lr": [1e-2]}],
        )
    )
    lora = [r for r in expand_grid(spec) if r.config.method == "lora"]
    assert [r.settings for r in lora] == [{}, {"optim.lr": 1e-2}]
    assert lora[0].key == plain["lora"]  # the very run a grid without the sweep stores


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"sweep": [{"optim": {}}]}, "sweep[0]", "sweeps no setting"),
        ({"methods": ["lora", "lorax"]}, "methods[1]", "unknown method"),
        ({"tasks": ["no-such-task"]}, "tasks[0]", "unknown task"),
        ({"models": ["gpt-17"]}, "models[0]", "unknown model"),
        ({"base": {"no_such": 1}}, "base.no_such", "setting no_such is not available"),
        ({"base": {"optim": {"lr": -1.0}}}, "base.optim.lr", "must be > 0"),
        ({"base": {"optim": {"steps": "many"}}}, "base.optim.steps", "expected an integer"),
        ({"base": {"seed": 3}}, "base.seed", "grid axis"),
        ({"base": {"out": "x"}}, "base.out", "set by the bench"),
        ({"sweep": {"optim.nope": [1, 2]}}, "sweep.optim.nope", "not available"),
        ({"sweep": {"methods": ["icl"], "optim.lr": [1]}}, "sweep.methods", "not in the grid"),
        ({"shots": [8, 8]}, "shots[1]", "listed twice"),
        ({"seeds": []}, "seeds", "at least one"),
        ({"colour": "red"}, "colour", "unknown grid field"),
        ({"name": ""}, "name", "needs a name"),
    ],
)
def test_grid_errors_name_file_and_field(tmp_path, change, field, words):
    path = _write(tmp_path, _grid(**change))
    with pytest.raises(GradguideError) as err:
        expand_grid(load_grid(path))
    assert err.value.file == str(path) and err.value.field == field
    assert words in str(err.value)


def test_missing_grid_file_and_unknown_preset(tmp_path):
    with pytest.raises(GradguideError, match="not found"):
        load_grid(tmp_path / "nope.yaml")
    with pytest.raises(GradguideError, match=r"presets: .*smoke"):
        load_grid("no-such-preset")


def test_guidance_methods_are_lora_with_guidance_and_method_base_is_per_method():
    spec = parse_grid(
        _grid(
            methods=["lora", "sgg", "sgg-align"],
            seeds=[1],
            method_base={"sgg-align": {"guidance": {"source_task": "demo-sentiment"}}},
        )
    )
    runs = {r.arm: r for r in expand_grid(spec)}
    assert set(runs) == {"lora", "sgg", "sgg-align"}
    assert runs["sgg"].config.method == "lora" and runs["sgg"].config.guidance.use == "sgg"
    assert runs["lora"].config.guidance.use == ""
    assert runs["sgg-align"].config.guidance.source_task == "demo-sentiment"
    assert runs["sgg"].config.guidance.source_task is None
    assert runs["sgg-align"].settings == {}  # per-method settings are not swept settings
    assert runs["sgg"].label().startswith("sgg demo-sentiment")


def test_model_base_is_per_model_and_method_base_wins_over_it(tmp_path):
    spec = parse_grid(
        _grid(
            models=["tiny-llama", "tiny-bert"],
            methods=["lora", "sgg"],
            seeds=[1],
            # the encoder's sgg arm needs a prior other than pretrain (it has no LM loss)
            model_base={
                "tiny-bert": {"optim.lr": 3.0e-3, "eval_limit": 5, "guidance.prior": "ema:0.9"}
            },
            method_base={"sgg": {"eval_limit": 6}},
        )
    )
    runs = {(r.config.model, r.arm): r for r in expand_grid(spec)}
    assert runs["tiny-bert", "lora"].config.optim.lr == 3.0e-3
    assert runs["tiny-llama", "lora"].config.optim.lr != 3.0e-3
    assert runs["tiny-bert", "lora"].config.eval_limit == 5
    assert runs["tiny-bert", "sgg"].config.eval_limit == 6  # method_base comes after model_base
    assert runs["tiny-llama", "sgg"].config.eval_limit == 6
    assert runs["tiny-llama", "lora"].config.eval_limit == 8
    assert runs["tiny-bert", "lora"].settings == {}
    assert runs["tiny-bert", "sgg"].config.guidance.prior == "ema:0.9"
    assert runs["tiny-llama", "sgg"].config.guidance.prior == "pretrain"
    assert spec.to_dict()["model_base"]["tiny-bert"]["eval_limit"] == 5
    path = _write(tmp_path, _grid(model_base={"tiny-bert": {"optim.lr": 1e-3}}))
    with pytest.raises(GradguideError, match="'tiny-bert' is not in the grid's models") as err:
        load_grid(path)
    assert err.value.field == "model_base.tiny-bert" and err.value.file == str(path)
    path = _write(tmp_path, _grid(models=["tiny-llama", "tiny-bert"], model_base=spec.model_base))
    narrowed = load_grid(path, ["models=[tiny-llama]"])  # the override drops tiny-bert's block
    assert narrowed.models == ["tiny-llama"] and narrowed.model_base == {}
    path = _write(tmp_path, _grid(model_base={"tiny-llama": {"optim.lrr": 1e-3}}))
    with pytest.raises(GradguideError) as err:
        load_grid(path)
    assert err.value.field == "model_base.tiny-llama.optim.lrr"


def test_a_finished_runs_record_maps_back_to_its_key(tmp_path):
    """Reuse, resume and recovery find a run by the key of its recorded config, which train()
    completes (ofa's implied guidance written out): it must be the grid's key."""
    from gradguide.train import load_run_config, train

    spec = parse_grid(_grid(methods=["ofa", "lora"], seeds=[1], base=_fast_base(steps=2)))
    for run in expand_grid(spec):
        config = dataclasses.replace(run.config, out=str(tmp_path / run.arm))
        result = train(config, show_progress=False)
        assert run_key(from_dict(TrainConfig, result.record["config"])) == run.key, run.arm
        assert run_key(load_run_config(result.run_dir)) == run.key, run.arm


def test_methods_that_cannot_run_fail_before_anything_runs(tmp_path, monkeypatch):
    from gradguide.bench import spec

    monkeypatch.setattr(spec, "PLANNED_METHODS", ("future",))  # a method a later version adds
    path = _write(tmp_path, _grid(methods=["lora", "future"]))
    with pytest.raises(GradguideError) as err:
        expand_grid(load_grid(path))
    assert "method future is not available in this version" in str(err.value)
    assert err.value.field == "methods[1]" and err.value.file == str(path)
    path = _write(tmp_path, _grid(methods=["sgg-align"]))
    with pytest.raises(GradguideError, match="needs a source task"):
        expand_grid(load_grid(path))
    path = _write(tmp_path, _grid(methods=["sgg"], method_base={"lora": {"eval_limit": 2}}))
    with pytest.raises(GradguideError, match="not in the grid's methods"):
        load_grid(path)


def test_the_pretrain_prior_on_an_encoder_fails_before_anything_runs(tmp_path):
    # an encoder has no language-modelling loss to take the pretrain prior from: every sgg run of
    # such a grid would fail after loading its model, so the grid refuses it up front
    path = _write(tmp_path, _grid(models=["tiny-bert"], methods=["lora", "sgg"]))
    with pytest.raises(GradguideError, match="tiny-bert is an encoder") as err:
        expand_grid(load_grid(path))
    assert err.value.field == "guidance.prior" and err.value.file == str(path)
    spec = _grid(
        models=["tiny-bert"], methods=["sgg"], base={**_fast_base(), "guidance.prior": "pretrain"}
    )
    with pytest.raises(GradguideError, match="pretrain prior") as err:
        expand_grid(load_grid(_write(tmp_path, spec)))
    assert err.value.field == "base.guidance.prior"
    # another prior, a term that needs none, or a causal model: the grid expands
    ema = {"sgg": {"guidance.prior": "ema:0.9"}}
    for spec in (
        _grid(models=["tiny-bert"], methods=["sgg"], method_base=ema),
        _grid(models=["tiny-bert"], methods=["sgg-mag"]),
        _grid(models=["tiny-llama"], methods=["sgg"]),
    ):
        assert len(expand_grid(load_grid(_write(tmp_path, spec)))) == 2


@pytest.mark.skipif(resolve_data_root() is None, reason="no data root (GRADGUIDE_DATA)")
def test_presets_have_their_data_and_too_many_shots_are_caught():
    for name in list_presets():
        assert check_data(expand_grid(load_grid(name))).problems == []
    spec = parse_grid(_grid(tasks=["rte"], shots=[64], methods=["lora"], seeds=[1]))
    (problem,) = check_data(expand_grid(spec), "g.yaml").problems
    assert "rte" in problem and "more than the 32" in problem


def test_every_preset_expands_or_names_what_is_missing():
    available = {m.name for m in list_methods()} | set(GUIDANCE)
    assert {"smoke", "sgg-table1", "sample-size", "domains", "ablation", "sensitivity"} <= set(
        list_presets()
    )
    for name in list_presets():
        text = (Path(load_grid("smoke").source).parent / f"{name}.yaml").read_text()
        assert "Expected run time on a 2-core CPU" in text and "estimate" in text
        spec_methods = yaml.safe_load(text)["methods"]
        # a method joined to its guidance (setfit+sgg) is available when both parts are
        missing = [m for m in spec_methods if m not in available and "+" not in m]
        if missing:
            with pytest.raises(GradguideError) as err:
                expand_grid(load_grid(name))
            assert "not available in this version" in str(err.value)
            assert err.value.file is not None and err.value.file.endswith(f"{name}.yaml")
        else:
            assert expand_grid(load_grid(name))


def test_a_stored_grid_expands_to_the_keys_it_ran():
    # a report restricted to one grid (--grid) rebuilds the grid from its stored form
    from gradguide.bench.grid import grid_keys, spec_from_stored

    for name in ("ablation", "sensitivity", "sgg-table1-minilm"):  # method/model bases, sweeps
        spec = load_grid(name, ["seeds=[1]"])
        stored = json.loads(json.dumps(spec.to_dict()))  # as the store keeps it
        assert grid_keys(spec_from_stored(stored)) == {r.key for r in expand_grid(spec)}
    stored = spec.to_dict() | {"methods": ["lora"]}  # its method_base names a method now absent
    with pytest.raises(GradguideError, match="not in the grid's methods"):
        spec_from_stored(stored)


def test_the_minilm_table1_arms_measure_alignment_against_sggs_prior():
    """On the encoder SGG's prior is ema:0.9; every trained baseline measures against it too (a
    cosine against another prior is another quantity), while the runs it does not touch, SGG's
    and the untrained arms', keep the archive's keys."""
    runs = expand_grid(load_grid("sgg-table1-minilm", ["tasks=[cb,copa,rte,wic]"]))
    trained = [r for r in runs if r.arm not in ("zero-shot", "icl")]
    assert {r.arm for r in trained} == {"full", "adapter", "lora", "prompt", "sgg"}
    assert {r.config.guidance.prior for r in trained} == {"ema:0.9"}
    rows = Path(__file__).resolve().parents[1] / "results" / "rows.jsonl"
    archived = {
        json.loads(line)["key"]
        for line in rows.read_text().splitlines()
        if '"sgg-table1-minilm"' in line
    }
    kept = {r.key for r in runs if r.arm in ("zero-shot", "icl", "sgg")}
    assert len(kept) == 60 and kept <= archived


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(40, "40 s"), (89.4, "89 s"), (720, "12 min"), (5340, "89 min"),
     (12000, "3 h 20 min"), (3 * 3600 + 59.8 * 60, "4 h 0 min"), (float("inf"), "unknown")],
)  # fmt: skip
def test_durations_read_as_people_read_them(seconds, shown):
    """A duration just short of the hour rounds up into it ("4 h 0 min", never "3 h 60 min")."""
    from gradguide.bench.estimate import format_duration

    assert format_duration(seconds) == shown


def test_dry_run_estimates_learn_from_stored_runs():
    from gradguide.bench.estimate import Calibration, estimate_config_seconds
    from gradguide.bench.grid import DataCheck
    from gradguide.bench.workload import TaskText
    from gradguide.config import to_dict

    runs = expand_grid(parse_grid(_grid(seeds=[1, 2]), source="g.yaml"))
    lora1, lora2, zero = (next(r for r in runs if (r.arm, r.config.seed) == a)
                          for a in (("lora", 1), ("lora", 2), ("zero-shot", 1)))  # fmt: skip
    sst2, twice = (TaskText(n, n, 2 * n, n, n, 2.0) for n in (132.0, 264.0))  # SST-2-like, longer
    data = DataCheck({"demo-sentiment": 8}, [], {"demo-sentiment": (sst2, sst2)})
    longer = DataCheck({"demo-sentiment": 8}, [], {"demo-sentiment": (twice, sst2)})
    formula = estimate_config_seconds(lora1.config, data)
    assert Calibration.from_rows([], data).seconds(lora1) == (formula, "formula")
    steps = estimate_config_seconds(lora1.config, longer) - formula  # twice the text to train on
    assert steps > 0 and estimate_config_seconds(zero.config, longer) == pytest.approx(
        estimate_config_seconds(zero.config, data)  # untrained: only evaluation counts
    )
    record = {"config": to_dict(lora1.config), "metrics": {}, "timings": {"total_s": 120.0}}
    row = row_from_record(lora1.key, "g", {}, "runs/x", record)
    calibration = Calibration.from_rows([row], data)
    assert calibration.seconds(lora2) == (120.0, "measured")  # like a stored run
    seconds, how = calibration.seconds(zero)  # same model and task, another method
    assert how == "scaled"
    assert seconds == pytest.approx(estimate_config_seconds(zero.config, data) * 120.0 / formula)


# --------------------------------------------------------------------------------------------
# Store


def test_store_needs_the_record_and_never_duplicates(tmp_path):
    record = {
        "method": "lora",
        "seed": 1,
        "config": {"model": "m", "task": "t", "method": "lora", "shots": 8, "seed": 1},
        "metrics": {"accuracy": 0.5},
        "timings": {"total_s": 1.0},
    }
    with Store(tmp_path) as store:
        row = row_from_record("k1", "g", {}, "runs/k1/a", record)
        with pytest.raises(GradguideError, match="not finished"):
            store.add_run(row)
        (tmp_path / "runs/k1/a").mkdir(parents=True)
        (tmp_path / "runs/k1/a/record.json").write_text(json.dumps(record))
        assert store.add_run(row) is True
        assert store.add_run(row) is False
        assert store.count() == 1 and store.finished_keys() == {"k1"}
        assert store.runs()[0].metrics == {"accuracy": 0.5} and store.runs()[0].dynamics == {}
    with sqlite3.connect(tmp_path / DB_NAME) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(GradguideError, match="no results database"):
        Store(tmp_path / "empty", create=False)


# --------------------------------------------------------------------------------------------
# Running


def test_smoke_preset_end_to_end_then_nothing_to_do(tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench_main(["smoke", "--out", str(out), "--workers", "2", "--quiet"]) == 0
    expected = {r.key for r in expand_grid(load_grid("smoke"))}
    rows = _rows(out)
    assert {k for k, _ in rows} == expected and len(rows) == 4
    for _key, run_dir in rows:
        assert (out / run_dir / "record.json").is_file()
    capsys.readouterr()
    assert bench_main(["smoke", "--out", str(out), "--workers", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "4 already stored" in printed and "0 ran" in printed
    assert _rows(out) == rows
    assert bench_main(["smoke", "--out", str(out), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert listing.count("done") == 4 and "estimated" in listing and "0 to run" in listing


def test_recovers_a_recorded_run_and_restarts_an_abandoned_one(tmp_path):
    spec = parse_grid(_grid(methods=["zero-shot"]), source="g.yaml")
    out = tmp_path / "bench"
    first = run_grid(spec, out, workers=0, show_progress=False)
    assert first.ran == 2 and first.ok
    keys = [r.key for r in expand_grid(spec)]
    # killed between record.json and the row: the row is rebuilt from the record, no rerun
    with sqlite3.connect(out / DB_NAME) as c:
        c.execute("DELETE FROM runs WHERE key = ?", (keys[0],))
    # killed mid-run: a run directory without record.json, and no row
    with sqlite3.connect(out / DB_NAME) as c:
        c.execute("DELETE FROM runs WHERE key = ?", (keys[1],))
    finished, _ = run_dirs(out, keys[1])
    (finished[0] / "record.json").unlink()
    again = run_grid(spec, out, workers=0, show_progress=False)
    assert (again.recovered, again.ran, again.abandoned, again.already) == (1, 1, 1, 0)
    assert sorted(k for k, _ in _rows(out)) == sorted(keys)
    done, abandoned = run_dirs(out, keys[1])
    assert len(done) == 1 and len(abandoned) == 1


def test_progress_bar_names_the_running_run(tmp_path, capsys):
    spec = parse_grid(_grid(methods=["zero-shot"]), source="g.yaml")
    assert run_grid(spec, tmp_path / "bench", workers=0).ok
    err = capsys.readouterr().err
    assert "bench t" in err and "2/2" in err
    first = err.index("running zero-shot demo-sentiment k=8 seed=1")
    assert err.index("running zero-shot demo-sentiment k=8 seed=2") > first


def test_a_failing_run_is_recorded_and_the_grid_goes_on(tmp_path):
    spec = parse_grid(_grid(methods=["zero-shot"], base={"eval_limit": 8}), source="g.yaml")
    out = tmp_path / "bench"
    runs = expand_grid(spec)
    blocker = out / RUNS_DIR / runs[0].key
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the run directory should go")
    outcome = run_grid(spec, out, workers=0, show_progress=False)
    assert outcome.ran == 1 and len(outcome.failed) == 1 and not outcome.ok
    with Store(out) as store:
        assert [f.key for f in store.failures()] == [runs[0].key]
    blocker.unlink()
    assert run_grid(spec, out, workers=0, show_progress=False).ok
    with Store(out) as store:
        assert store.failures() == [] and store.count() == 2


def test_kill_the_grid_mid_run_and_resume(tmp_path):
    spec = _grid(methods=["lora"], seeds=[1, 2], base=_fast_base(steps=12))
    path = _write(tmp_path, spec)
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "gradguide.bench.cli", str(path), "--out", str(out)]
    cmd += ["--workers", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    keys = {r.key for r in expand_grid(load_grid(path))}
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, env=env)
        try:
            deadline = time.monotonic() + 240
            while True:
                assert proc.poll() is None, (tmp_path / "log.txt").read_text()
                assert time.monotonic() < deadline, "no run finished in time"
                stored = set()
                if (out / DB_NAME).is_file():
                    with contextlib.suppress(sqlite3.OperationalError):  # schema not made yet
                        stored = {k for k, _ in _rows(out)}
                running = [
                    k for k in keys - stored if run_dirs(out, k)[1]
                ]  # a run directory without record.json
                if stored and running:
                    break
                time.sleep(0.05)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert len(stored) < len(keys)
    assert bench_main([str(path), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    rows = _rows(out)
    assert sorted(k for k, _ in rows) == sorted(keys)  # every run once: none lost, none twice
    for key in keys:
        done, _abandoned = run_dirs(out, key)
        assert len(done) == 1
    assert any(run_dirs(out, k)[1] for k in running)


def test_a_killed_run_continues_from_its_checkpoint_to_the_same_result(tmp_path, monkeypatch):
    import gradguide.fit as train_module  # the loop that checkpoints

    plain = parse_grid(_grid(methods=["lora"], seeds=[1], base=_fast_base(steps=6)), source="a")
    base = {**_fast_base(steps=6), "checkpoint_every": 2}
    checkpointed = parse_grid(_grid(methods=["lora"], seeds=[1], base=base), source="b")
    key = expand_grid(plain)[0].key
    assert expand_grid(checkpointed)[0].key == key  # where checkpoints go changes no result
    reference = run_grid(plain, tmp_path / "a", workers=0, show_progress=False)
    assert reference.ok

    saved = train_module.save_checkpoint
    calls = []

    def die_after_second_checkpoint(*args: Any, **kw: Any) -> None:
        saved(*args, **kw)
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")

    monkeypatch.setattr(train_module, "save_checkpoint", die_after_second_checkpoint)
    out = tmp_path / "b"
    assert len(run_grid(checkpointed, out, workers=0, show_progress=False).failed) == 1
    monkeypatch.setattr(train_module, "save_checkpoint", saved)
    lines: list[str] = []
    again = run_grid(checkpointed, out, workers=0, show_progress=False, on_line=lines.append)
    assert again.ok and again.abandoned == 1
    assert any("1 of them continue from their last checkpoint" in line for line in lines)
    done, left = run_dirs(out, key)
    assert len(done) == 1 and left == []  # continued in place, not started afresh
    record = json.loads((done[0] / "record.json").read_text())
    expected = json.loads((run_dirs(tmp_path / "a", key)[0][0] / "record.json").read_text())
    assert record["curves"]["loss"] == expected["curves"]["loss"]
    assert record["metrics"] == expected["metrics"]


def _pool(tmp_path: Path, dies: dict[str, int], workers: int = 1) -> tuple[dict, list, dict]:
    """Run payloads a, b, c through the pool with a worker that dies as ``dies`` says."""
    from tiny_runs import die_then_succeed

    from gradguide.bench.runner import _run_pool

    payloads = [{"key": k, "die": dies.get(k, 0), "marks": str(tmp_path)} for k in "abc"]
    results: dict[str, Any] = {}
    retried: list[str] = []
    _run_pool(
        payloads,
        workers,
        lambda r: results.__setitem__(r["key"], r),
        retried.append,
        run=die_then_succeed,
    )
    starts = {k: len((tmp_path / k).read_text()) for k in "abc" if (tmp_path / k).exists()}
    return results, retried, starts


def test_a_dead_worker_costs_only_the_run_it_was_running(tmp_path):
    results, retried, starts = _pool(tmp_path, {"b": 1})
    assert {k: r["ok"] for k, r in results.items()} == {"a": True, "b": True, "c": True}
    assert retried == ["b"] and starts == {"a": 1, "b": 2, "c": 1}


def test_a_run_that_kills_its_worker_every_time_fails_alone(tmp_path):
    from gradguide.bench.runner import RETRIES, WORKER_DIED

    results, retried, starts = _pool(tmp_path, {"a": 99}, workers=2)
    assert results["a"] == {"key": "a", "ok": False, "error": WORKER_DIED}
    assert results["b"]["ok"] and results["c"]["ok"]
    assert starts["a"] == RETRIES + 1 and retried.count("a") == RETRIES


def test_a_worker_killed_mid_grid_is_replaced_and_its_run_continues(tmp_path):
    import multiprocessing
    import threading

    base = {**_fast_base(steps=40), "checkpoint_every": 2}
    spec = parse_grid(_grid(methods=["lora"], seeds=[1, 2], base=base), source="g.yaml")
    out = tmp_path / "bench"
    first = expand_grid(spec)[0].key
    killed: list[int] = []

    def kill_the_worker_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            left = run_dirs(out, first)[1]
            if left and (left[0] / "checkpoint" / "state.json").is_file():
                for child in multiprocessing.active_children():
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_worker_after_a_checkpoint)
    killer.start()
    lines: list[str] = []
    outcome = run_grid(spec, out, workers=1, show_progress=False, on_line=lines.append)
    killer.join()
    assert killed, "the first run finished before a checkpoint was seen"
    assert outcome.ok and outcome.ran == 2, outcome.failed
    assert sorted(k for k, _ in _rows(out)) == sorted(r.key for r in expand_grid(spec))
    assert any("a worker died while training lora" in line for line in lines)
    done, left = run_dirs(out, first)
    assert len(done) == 1 and left == []  # continued in its own directory, not started afresh


def test_one_key_is_trained_once_across_grids_sharing_a_directory(tmp_path):
    import fcntl
    import threading

    from gradguide.bench.runner import LOCK_NAME, _payload, execute_run

    spec = parse_grid(_grid(methods=["zero-shot"], seeds=[1]), source="g.yaml")
    out = tmp_path / "bench"
    assert run_grid(spec, out, workers=0, show_progress=False).ok
    run = expand_grid(spec)[0]
    first = run_dirs(out, run.key)[0]
    results: list[dict[str, Any]] = []
    with open(out / RUNS_DIR / run.key / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another grid is training this key
        worker = threading.Thread(target=lambda: results.append(execute_run(_payload(run, out))))
        worker.start()
        worker.join(timeout=1.0)
        assert worker.is_alive() and not results  # it waits instead of training it too
        fcntl.flock(lock, fcntl.LOCK_UN)
    worker.join()
    assert results[0]["ok"] and results[0]["reused"]  # the other grid's run, not a new one
    assert run_dirs(out, run.key) == (first, [])


def test_a_grid_passes_over_a_run_another_process_holds(tmp_path):
    import fcntl
    import threading

    from gradguide.bench.runner import LOCK_NAME

    spec = parse_grid(_grid(methods=["zero-shot"]), source="g.yaml")
    out = tmp_path / "bench"
    first, second = expand_grid(spec)
    (out / RUNS_DIR / first.key).mkdir(parents=True)
    lines: list[str] = []
    outcome = []
    with open(out / RUNS_DIR / first.key / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is training the first run
        grid = threading.Thread(
            target=lambda: outcome.append(
                run_grid(spec, out, workers=0, show_progress=False, on_line=lines.append)
            )
        )
        grid.start()
        deadline = time.monotonic() + 300
        while not run_dirs(out, second.key)[0]:  # the second run goes first meanwhile
            assert grid.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        assert run_dirs(out, first.key) == ([], [])  # the held run was passed over, not started
        fcntl.flock(lock, fcntl.LOCK_UN)
    grid.join()
    assert outcome[0].ok and outcome[0].ran == 2
    assert "seed=2" in lines[0] and "seed=1" in lines[1]
    assert len(run_dirs(out, first.key)[0]) == 1


def test_ray_backend_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    spec = parse_grid(_grid(methods=["zero-shot"], seeds=[1]), source="g.yaml")
    with pytest.raises(GradguideError, match="pip install ray"):
        run_grid(spec, tmp_path, backend="ray", show_progress=False)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_backend_stores_the_same_rows(tmp_path):
    spec = parse_grid(_grid(methods=["zero-shot"]), source="g.yaml")
    out = tmp_path / "bench"
    outcome = run_grid(spec, out, workers=1, backend="ray", show_progress=False)
    assert outcome.ok and outcome.ran == 2
    assert sorted(k for k, _ in _rows(out)) == sorted(r.key for r in expand_grid(spec))
    again = run_grid(spec, out, workers=1, backend="ray", show_progress=False)
    assert again.ran == 0 and again.already == 2


def test_unknown_backend_and_bad_workers(tmp_path):
    spec = parse_grid(_grid(seeds=[1]), source="g.yaml")
    with pytest.raises(GradguideError, match="unknown backend"):
        run_grid(spec, tmp_path, backend="slurm")
    with pytest.raises(GradguideError, match=">= 0"):
        run_grid(spec, tmp_path, workers=-1)
    assert bench_main([str(tmp_path / "missing.yaml")]) == 2


def test_archived_runs_keep_their_keys():
    """A new config field must not change the key of any stored run (grids would retrain all).

    Every archived run without a gradient penalty re-keys to its stored key; penalty runs carry
    the revision their defects called for, so their old keys must differ.
    """
    import json
    from pathlib import Path

    from gradguide.bench.grid import _has_active_penalty, run_key
    from gradguide.config import from_dict
    from gradguide.train import TrainConfig

    rows_file = Path(__file__).resolve().parents[1] / "results" / "rows.jsonl"
    rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    assert len(rows) > 100
    same, revised = 0, 0
    for row in rows:
        config = from_dict(TrainConfig, row["config"])
        if _has_active_penalty(config):
            revised += run_key(config) != row["key"]
        else:
            assert run_key(config) == row["key"], (row["key"], row["config"]["method"])
            same += 1
    assert same > 100 and revised > 0


def test_a_reduced_preset_says_how_it_was_reduced():
    """The report's provenance names every departure of a stored grid from its preset."""
    from gradguide.bench.grid import departures_from_preset, load_grid

    exact = load_grid("ofa").to_dict()
    assert departures_from_preset(exact) == []
    reduced = load_grid("ofa", ["tasks=[sst2,trec]", "base.eval_limit=300"]).to_dict()
    assert departures_from_preset(reduced) == [
        "tasks sst2, trec (preset: sst2, trec, emo, mr, subj, agnews)",
        "base.eval_limit 300 (preset: 500)",
    ]
    renamed = load_grid("ofa", ["name=ofa-small", "seeds=[1]"]).to_dict()
    assert departures_from_preset(renamed)[:2] == [
        "named ofa-small (preset ofa)",
        "seeds 1 (preset: 1, 2, 3)",
    ]
    elsewhere = {**reduced, "source": "/tmp/my-grid.yaml"}  # not a preset: nothing to compare
    assert departures_from_preset(elsewhere) == []


def test_settings_that_change_no_result_change_no_key_and_depart_from_no_preset():
    """Each of NO_RESULT_FIELDS leaves a run's key alone (switching TensorBoard on re-keyed a run
    and retrained it) and is no departure of a grid from its preset; a real setting is both."""
    import dataclasses

    from gradguide.bench.grid import departures_from_preset, load_grid, run_key
    from gradguide.train_config import NO_RESULT_FIELDS, TrainConfig

    base = TrainConfig(model="tiny-llama", task="demo-sentiment", shots=8)
    changed = {
        "out": "elsewhere",
        "cache_dir": "cache",
        "device": "cuda:1",
        "gradient_checkpointing": True,
        "micro_batch_tokens": 1,
        "checkpoint_every": 3,
        "keep_checkpoint": True,
        "tensorboard": True,
    }
    assert set(changed) == set(NO_RESULT_FIELDS)  # a new no-result field gets a value here
    for name, value in changed.items():
        assert run_key(dataclasses.replace(base, **{name: value})) == run_key(base), name
    assert run_key(dataclasses.replace(base, seed=2)) != run_key(base)
    thrifty = ["base.tensorboard=true", "base.checkpoint_every=10", "base.micro_batch_tokens=0"]
    assert departures_from_preset(load_grid("ofa", thrifty).to_dict()) == []
    assert departures_from_preset(load_grid("ofa", ["base.icl_shots=2"]).to_dict()) == [
        "base.icl_shots 2 (preset: None)"
    ]
