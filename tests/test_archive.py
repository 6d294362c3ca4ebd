"""Results archives: finished runs exported as text, reported on, continued from a fresh clone."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gradguide.bench.archive import (
    KEPT_FILES,
    ROWS_NAME,
    export_results,
    import_results,
    read_rows,
)
from gradguide.bench.grid import expand_grid, parse_grid
from gradguide.bench.runner import run_grid
from gradguide.bench.store import DB_NAME, Store
from gradguide.cli import main as cli_main
from gradguide.errors import GradguideError
from gradguide.report.data import load_bench

SPEC = {
    "name": "arch",
    "models": ["tiny-llama"],
    "tasks": ["demo-sentiment"],
    "methods": ["zero-shot", "lora"],
    "shots": [8],
    "seeds": [1, 2],
    "base": {"eval_limit": 8, "optim": {"steps": 3, "batch_size": 4}},
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b"
    outcome = run_grid(parse_grid(SPEC, source="arch.yaml"), out, workers=0, show_progress=False)
    assert outcome.ok and outcome.ran == 4
    return out


def _summary(bench_dir: Path) -> dict[str, tuple]:
    data = load_bench(bench_dir)
    return {r.key: (r.method, r.seed, r.metrics, r.dynamics, r.wall_s) for r in data.runs}


def test_export_keeps_text_only_and_reports_like_the_original(bench, tmp_path):
    archive = tmp_path / "results"
    t = export_results(bench, archive)
    assert (t.added, t.present) == (4, 0)
    rows = read_rows(archive)
    assert len(rows) == 4
    kept = sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*") if p.is_file())
    assert ROWS_NAME in kept and "grids.json" in kept
    run_files = [k for k in kept if k.startswith("runs/")]
    assert run_files and all(k.rsplit("/", 1)[1] in KEPT_FILES for k in run_files)
    # the trained LoRA runs wrote weights and checkpoints too: none of that is archived
    for r in (r for r in rows if r.method == "lora"):
        left_out = {p.name for p in (bench / r.run_dir).iterdir()} - set(KEPT_FILES)
        assert left_out and not any((archive / r.run_dir / name).exists() for name in left_out)
    assert not (archive / DB_NAME).exists()
    # a fresh checkout has no store: the report builds it from rows.jsonl, same numbers
    assert _summary(archive) == _summary(bench)
    assert (archive / DB_NAME).is_file()


def test_export_merges_and_a_continued_grid_skips_archived_runs(bench, tmp_path):
    archive = tmp_path / "results"
    export_results(bench, archive)
    again = export_results(bench, archive)
    assert (again.added, again.present, again.files) == (0, 4, 0)
    assert len(read_rows(archive)) == 4
    spec = parse_grid(SPEC, source="arch.yaml")
    import_results(archive)
    outcome = run_grid(spec, archive, workers=0, show_progress=False)
    assert (outcome.ran, outcome.already) == (0, 4)
    # a wider grid trains only what is new, and export adds just that
    wider = parse_grid({**SPEC, "seeds": [1, 2, 3]}, source="arch.yaml")
    outcome = run_grid(wider, archive, workers=0, show_progress=False)
    assert (outcome.ran, outcome.already) == (2, 4)
    merged = tmp_path / "merged"
    export_results(bench, merged)
    assert len(load_bench(merged).runs) == 4  # builds merged/bench.sqlite from 4 rows
    t = export_results(archive, merged)
    assert (t.added, t.present) == (2, 4)
    assert {r.key for r in read_rows(merged)} == {r.key for r in expand_grid(wider)}
    # the store built before is brought up to the archive's rows, not left stale
    assert len(load_bench(merged).runs) == 6


def test_two_grids_of_one_name_are_stored_and_exported_as_the_union_of_their_axes(tmp_path):
    first = {**SPEC, "seeds": [1, 2], "shots": [8]}
    second = {**SPEC, "seeds": [3], "shots": [16], "tasks": ["sst2"]}
    with Store(tmp_path / "a") as store:
        store.save_grid("arch", parse_grid(first, source="arch.yaml").to_dict())
    with Store(tmp_path / "b") as store:
        store.save_grid("arch", parse_grid(second, source="arch.yaml").to_dict())
    with Store(tmp_path / "a") as store:
        store.save_grid("arch", parse_grid(second, source="arch.yaml").to_dict())
        (stored,) = store.grids().values()
    assert (stored["seeds"], stored["shots"]) == ([1, 2, 3], [8, 16])
    assert stored["tasks"] == ["demo-sentiment", "sst2"]
    # the archive of two bench directories that each ran part of the grid describes both parts
    archive = tmp_path / "results"
    export_results(tmp_path / "b", archive)
    with Store(tmp_path / "c") as store:
        store.save_grid("arch", parse_grid(first, source="arch.yaml").to_dict())
    export_results(tmp_path / "c", archive)
    (exported,) = json.loads((archive / "grids.json").read_text()).values()
    assert (exported["seeds"], exported["shots"]) == ([3, 1, 2], [16, 8])
    assert exported["methods"] == SPEC["methods"]


def test_a_narrowed_rerun_keeps_the_per_method_settings_of_the_methods_it_left_out(tmp_path):
    # the preset gives sgg and lora their own settings; a rerun of the baselines alone
    # (--set methods=[lora]) must not drop sgg's, or the grid would ask for other sgg runs
    whole = {
        **SPEC,
        "methods": ["lora", "sgg"],
        "method_base": {"sgg": {"guidance.lambda_dir": 0.003}, "lora": {"optim.lr": 0.001}},
    }
    narrowed = {**SPEC, "methods": ["lora"], "method_base": {"lora": {"optim.lr": 0.003}}}
    with Store(tmp_path / "a") as store:
        store.save_grid("arch", parse_grid(whole, source="arch.yaml").to_dict())
        store.save_grid("arch", parse_grid(narrowed, source="arch.yaml").to_dict())
        (stored,) = store.grids().values()
    assert stored["methods"] == ["lora", "sgg"]
    assert stored["method_base"] == {
        "sgg": {"guidance.lambda_dir": 0.003},
        "lora": {"optim.lr": 0.003},  # the newer invocation's, for a method both name
    }


def test_import_into_another_bench_directory_twice_adds_once(bench, tmp_path):
    archive = tmp_path / "results"
    export_results(bench, archive)
    other = tmp_path / "other"
    first = import_results(archive, other)
    assert (first.added, first.present) == (4, 0) and first.files > 0
    second = import_results(archive, other)
    assert (second.added, second.present, second.files) == (0, 4, 0)
    with Store(other, create=False) as store:
        assert store.finished_keys() == {r.key for r in read_rows(archive)}
        assert "arch" in store.grids()
    assert _summary(other) == _summary(bench)


def test_cli_export_import_and_clear_errors(bench, tmp_path, capsys):
    archive = tmp_path / "results"
    assert cli_main(["results", "export", str(bench), str(archive)]) == 0
    assert "4 runs added" in capsys.readouterr().out
    assert cli_main(["results", "import", str(archive), str(tmp_path / "b2")]) == 0
    assert "4 runs added" in capsys.readouterr().out
    assert cli_main(["results", "export", str(bench), str(bench)]) == 2
    assert "itself" in capsys.readouterr().err
    assert cli_main(["results", "import", str(tmp_path / "nothing")]) == 2
    assert "not a results archive" in capsys.readouterr().err
    assert cli_main(["results", "export", str(tmp_path / "nothing"), str(archive)]) == 2
    assert "no results database" in capsys.readouterr().err


def test_malformed_rows_name_file_line_and_field(bench, tmp_path):
    archive = tmp_path / "results"
    export_results(bench, archive)
    (archive / "grids.json").write_text("{not json")
    with pytest.raises(GradguideError, match=r"grids.json: not JSON"):
        export_results(bench, archive)
    (archive / "grids.json").write_text("{}")
    lines = (archive / ROWS_NAME).read_text().splitlines()
    row = json.loads(lines[1])
    del row["seed"]
    (archive / ROWS_NAME).write_text("\n".join([lines[0], json.dumps(row), *lines[2:]]) + "\n")
    with pytest.raises(GradguideError) as err:
        read_rows(archive)
    assert err.value.line == 2 and err.value.field == "seed" and ROWS_NAME in str(err.value)
    (archive / ROWS_NAME).write_text(lines[0] + "\n[1, 2]\n")
    with pytest.raises(GradguideError, match=r"rows.jsonl:2: not a stored run"):
        import_results(archive)
    # the failed import stored nothing half-way: the bad line came before any new row
    if (archive / DB_NAME).exists():
        with sqlite3.connect(archive / DB_NAME) as c:
            assert c.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 0
