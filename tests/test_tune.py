"""Cross-validation on the k shots: the folds, the held-out runs, and the choice read from them."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
from tiny_runs import tiny_config

from gradguide.bench.grid import expand_grid, load_grid, parse_grid, run_key
from gradguide.bench.runner import run_grid
from gradguide.bench.store import RunRow, Store
from gradguide.bench.tune import choice_lines, choose
from gradguide.cli import main
from gradguide.errors import GradguideError
from gradguide.report.data import load_bench
from gradguide.report.render import Table
from gradguide.tasks.base import Instance
from gradguide.train import OptimConfig, train
from gradguide.train_config import validate
from gradguide.train_data import cv_split, prepare_data


def _shots(n: int, labels: str = "ab", grouped: bool = False) -> list[Instance]:
    return [
        Instance(
            id=f"train:{i}",
            prompt=f"p{i}",
            candidates=("a", "b"),
            gold=i % len(labels) % 2,
            label=labels[i % len(labels)],
            group=f"q{i // 3}" if grouped else None,
        )
        for i in range(n)
    ]


def test_each_shot_is_held_out_exactly_once_in_label_balanced_folds():
    shots = _shots(32)
    held = [cv_split(shots, 4, fold, seed=7) for fold in range(4)]
    for train_part, out in held:
        assert sorted(x.id for x in train_part + out) == sorted(x.id for x in shots)
        assert Counter(x.label for x in out) == {"a": 4, "b": 4}  # 16 of each, 4 folds
        assert [x.id for x in train_part] == [x.id for x in shots if x not in out]  # order kept
    outs = [x.id for _, out in held for x in out]
    assert sorted(outs) == sorted(x.id for x in shots)  # a partition: once each
    assert cv_split(shots, 4, 2, seed=7) == held[2]  # seeded
    assert cv_split(shots, 4, 2, seed=8)[1] != held[2][1]


def test_grouped_shots_are_held_out_by_whole_groups():
    shots = _shots(12, grouped=True)  # MultiRC-like: 4 questions of 3 options
    for fold in range(2):
        _, out = cv_split(shots, 2, fold, seed=1)
        groups = {x.group for x in out}
        assert sum(x.group in groups for x in shots) == len(out) == 3 * len(groups)


def test_a_cv_run_trains_on_the_other_folds_and_scores_the_held_out_one(tmp_path):
    plain = prepare_data(tiny_config(tmp_path, method="lora"))
    cfg = tiny_config(tmp_path, method="lora", cv_folds=4, cv_fold=1, eval_limit=None)
    data = prepare_data(cfg)
    assert len(data.eval) == 2 and len(data.train) == 6  # 8 shots in 4 folds
    assert {x.id for x in data.train} | {x.id for x in data.eval} == {x.id for x in plain.train}
    assert not {x.id for x in data.train} & {x.id for x in data.eval}
    r = train(
        dataclasses.replace(cfg, optim=OptimConfig(steps=2, batch_size=4)), show_progress=False
    )
    assert r.record["data"]["eval_ids"] == [x.id for x in data.eval]
    assert "fold 1 of 4" in r.record["data"]["eval_split"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"cv_fold": 1}, "cv_fold"),  # a fold without folds
        ({"cv_folds": 4, "cv_fold": 4}, "cv_fold"),
        ({"cv_folds": 1}, "cv_folds"),
        ({"cv_folds": 9}, "cv_folds"),  # more folds than the 8 shots
        ({"cv_folds": 4, "eval_limit": 20}, "cv_folds"),  # the fold is the evaluation set
        ({"cv_folds": 4, "eval_split": "validation"}, "cv_folds"),
    ],
)
def test_impossible_cross_validation_settings_are_refused(tmp_path, overrides, field):
    cfg = tiny_config(tmp_path, method="lora", **{"eval_limit": None, **overrides})
    with pytest.raises(GradguideError) as e:
        validate(cfg)
    assert e.value.field == field


def test_runs_without_cross_validation_keep_their_keys(tmp_path):
    # the keys of the archived runs were made before cv_folds existed: stored runs stay found
    from gradguide.bench.archive import ensure_store

    archive = Path(__file__).resolve().parents[1] / "results"
    ensure_store(archive)  # a fresh clone holds the rows only; the report builds its store so
    with Store(archive, create=False) as store:
        rows = store.runs()[:20]
    from gradguide.config import from_dict
    from gradguide.train import TrainConfig

    for row in rows:
        assert run_key(from_dict(TrainConfig, row.config)) == row.key, row.run_dir
    cv = tiny_config(tmp_path, method="lora", cv_folds=4, eval_limit=None)
    assert run_key(cv) != run_key(dataclasses.replace(cv, cv_fold=1))


def _row(task: str, seed: int, lr: float, fold: int, acc: float) -> RunRow:
    return RunRow(
        key=f"{task}{seed}{lr}{fold}",
        grid="t",
        model="m",
        task=task,
        method="lora",
        shots=32,
        seed=seed,
        settings={"optim.lr": lr, "cv_fold": fold},
        config={"cv_folds": 2, "cv_fold": fold},
        metrics={"accuracy": acc},
        dynamics={},
        run_dir=f"runs/{task}{seed}{lr}{fold}",
        wall_s=1.0,
        finished_at="",
    )


def test_the_choice_is_the_best_mean_over_folds_then_cells_on_complete_cells_only():
    rows = [
        # sst2 seed 1: lr 0.1 means 0.7, lr 0.2 means 0.6
        _row("sst2", 1, 0.1, 0, 0.6), _row("sst2", 1, 0.1, 1, 0.8),
        _row("sst2", 1, 0.2, 0, 0.5), _row("sst2", 1, 0.2, 1, 0.7),
        # trec seed 1: lr 0.2 better by more (0.9 vs 0.5): it wins on the mean over cells
        _row("trec", 1, 0.1, 0, 0.5), _row("trec", 1, 0.1, 1, 0.5),
        _row("trec", 1, 0.2, 0, 0.9), _row("trec", 1, 0.2, 1, 0.9),
        # trec seed 2: lr 0.2 lacks a fold, so the cell is left out (lr 0.1 would win it hugely)
        _row("trec", 2, 0.1, 0, 1.0), _row("trec", 2, 0.1, 1, 1.0),
        _row("trec", 2, 0.2, 0, 0.0),
        # a run that is not a tuning run is ignored
        dataclasses.replace(_row("sst2", 1, 0.3, 0, 1.0), config={}),
    ]  # fmt: skip
    (ch,) = choose(rows)
    assert [c.settings for c in ch.candidates] == [{"optim.lr": 0.1}, {"optim.lr": 0.2}]
    assert ch.best.settings == {"optim.lr": 0.2}
    assert ch.best.mean == pytest.approx((0.6 + 0.9) / 2)
    assert ch.candidates[0].mean == pytest.approx((0.7 + 0.5) / 2)
    assert ch.incomplete == [("trec", 2)]
    other, diff, won, n = ch.margin()
    assert other.settings == {"optim.lr": 0.1}
    assert diff == pytest.approx(0.15) and (won, n) == (1, 2)
    text = "\n".join(choice_lines([ch]))
    assert "optim.lr=0.2" in text and "--set base.optim.lr=0.2" in text


def test_a_tie_goes_to_the_candidate_listed_first():
    rows = [_row("sst2", 1, lr, f, 0.5) for lr in (0.3, 0.1) for f in (0, 1)]
    assert choose(rows)[0].best.settings == {"optim.lr": 0.3}


def test_a_tuning_grid_runs_chooses_and_stays_out_of_the_results(tmp_path, capsys):
    spec = parse_grid(
        {
            "name": "tune",
            "models": ["tiny-llama"],
            "tasks": ["demo-sentiment"],
            "methods": ["lora"],
            "shots": [8],
            "seeds": [1],
            "base": {"cv_folds": 2, "optim": {"steps": 2, "batch_size": 4}},
            "sweep": [{"optim.lr": [1e-4, 5e-2], "cv_fold": [0, 1]}],
        }
    )
    assert len(expand_grid(spec)) == 4
    out = tmp_path / "bench"
    run_grid(spec, out, workers=0, show_progress=False)
    assert main(["tune", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "<- chosen" in printed and "held-out fold" in printed
    bench = load_bench(out)
    assert bench.runs == [] and len(bench.tuning) == 4  # no held-out score reads as a result
    records = [json.loads(Path(out, r.run_dir, "record.json").read_text()) for r in bench.tuning]
    assert sorted(r["data"]["eval_size"] for r in records) == [4, 4, 4, 4]
    from gradguide.report.build import build_report
    from gradguide.report.render import to_markdown

    _, blocks = build_report(bench)
    markdown = to_markdown("r", blocks)
    section = markdown.split("Settings chosen on the k shots", 1)[1]
    assert "| chosen |" in section and "lr=0.05" in section and "lr=0.0001" in section


def test_tune_of_one_grid_counts_the_runs_another_grid_finished_for_it(tmp_path, capsys):
    """A second tuning grid that shares a candidate with a first reuses its runs (same keys,
    stored under the first grid's name and swept settings): ``tune --grid`` must still weigh
    that candidate, named by the second grid's settings."""

    def grid(name: str, optim: dict[str, float], sweep: dict[str, list[float]]) -> None:
        spec = parse_grid(
            {
                "name": name,
                "models": ["tiny-llama"],
                "tasks": ["demo-sentiment"],
                "methods": ["lora"],
                "shots": [8],
                "seeds": [1],
                "base": {"cv_folds": 2, "optim": {"batch_size": 4, **optim}},
                "sweep": [{**sweep, "cv_fold": [0, 1]}],
            }
        )
        run_grid(spec, out, workers=0, show_progress=False)

    out = tmp_path / "bench"
    grid("first", {"lr": 5e-2}, {"optim.steps": [2, 3]})
    grid("second", {"steps": 2}, {"optim.lr": [5e-2, 1e-2]})
    with Store(out, create=False) as store:
        assert Counter(r.grid for r in store.runs()) == {"first": 4, "second": 2}
    assert main(["tune", str(out), "--grid", "second"]) == 0
    printed = capsys.readouterr().out
    candidates = [line.split()[0] for line in printed.splitlines() if line.startswith("  optim.")]
    assert candidates == ["optim.lr=0.05", "optim.lr=0.01"], printed
    assert main(["tune", str(out), "--grid", "third"]) == 2
    assert "no grid 'third' is stored here" in capsys.readouterr().err
    # the report makes one choice per tuning grid: a step count is not ranked against a rate
    from gradguide.report.build import build_report

    _, blocks = build_report(load_bench(out))
    (table,) = [b for b in blocks if isinstance(b, Table) and b.header[0] == "tuning grid"]
    assert [(r[0], r[2]) for r in table.rows] == [
        ("first", "optim.steps=2"),
        ("first", "optim.steps=3"),
        ("second", "optim.lr=0.05"),
        ("second", "optim.lr=0.01"),
    ]


def test_tune_without_tuning_runs_says_so(tmp_path, capsys):
    with Store(tmp_path):
        pass
    assert main(["tune", str(tmp_path)]) == 2
    assert "no cross-validation runs" in capsys.readouterr().err


def test_the_tune_lr_preset_expands_to_every_fold_of_every_rate():
    runs = expand_grid(load_grid("tune-lr"))
    folds = Counter((r.arm, r.config.task, r.config.seed, r.config.optim.lr) for r in runs)
    assert set(folds.values()) == {4} and len(folds) == 2 * 2 * 3 * 4
    assert all(r.config.cv_folds == 4 and r.config.eval_limit is None for r in runs)


def test_the_tune_steps_preset_tunes_steps_on_held_out_folds_of_both_sizes():
    runs = expand_grid(load_grid("tune-steps"))
    folds = Counter(
        (r.arm, r.config.task, r.config.shots, r.config.seed, r.config.optim.steps) for r in runs
    )
    assert set(folds.values()) == {4}
    steps = {arm: {k[-1] for k in folds if k[0] == arm} for arm in ("lora", "sgg")}
    assert steps == {"lora": {20, 40, 100}, "sgg": {20, 40}}
    assert {r.config.shots for r in runs} == {16, 32}
    assert all(r.config.cv_folds == 4 and r.config.eval_limit is None for r in runs)
    assert {r.config.optim.lr for r in runs if r.arm == "sgg"} == {1.0e-3}


def test_the_tune_sgg_weights_preset_ties_the_two_weights_and_reuses_the_step_grids_runs():
    runs = expand_grid(load_grid("tune-sgg-weights"))
    g = [r.config.guidance for r in runs]
    assert {(x.lambda_dir, x.lambda_mag) for x in g} == {(0.1, 0.1), (0.03, 0.03), (0.01, 0.01)}
    folds = Counter(
        (r.config.task, r.config.shots, r.config.seed, r.config.guidance.lambda_dir) for r in runs
    )
    assert len(folds) == 2 * 2 * 3 * 3 and set(folds.values()) == {4}
    # the default weights at 40 steps are tune-steps' runs: same keys, so they are not re-run
    steps = {r.key for r in expand_grid(load_grid("tune-steps")) if r.config.optim.steps == 40}
    default = {r.key for r in runs if r.config.guidance.lambda_dir == 0.1}
    assert default <= steps and len(default) == 48


def test_a_setting_whose_runs_fail_the_gradient_check_is_not_chosen():
    rows = [_row("sst2", 1, lr, f, acc) for lr, acc in ((0.1, 0.6), (0.2, 0.9)) for f in (0, 1)]
    fails_at = {0.2}
    (ch,) = choose(rows, failed=lambda r: r.settings["optim.lr"] in fails_at)
    assert ch.best is not None and ch.best.settings == {"optim.lr": 0.1}
    assert [c.failed_runs for c in ch.candidates] == [0, 2]
    assert "fails the gradient check in 2 of 2 runs" in "\n".join(choice_lines([ch]))
    fails_at = {0.1, 0.2}
    (ch,) = choose(rows, failed=lambda r: r.settings["optim.lr"] in fails_at)
    assert ch.best is None and ch.margin() is None
    assert "no choice" in "\n".join(choice_lines([ch]))


def test_the_gradient_check_is_read_from_each_runs_record(tmp_path):
    from gradguide.bench.tune import record_check

    row = _row("sst2", 1, 0.1, 0, 0.5)
    run = tmp_path / row.run_dir
    run.mkdir(parents=True)
    failed = record_check(tmp_path)
    assert failed(row)  # no record: nothing shows it passed
    (run / "record.json").write_text(json.dumps({"gradient_check": {"failed": []}}))
    assert not failed(row)
    (run / "record.json").write_text(json.dumps({"gradient_check": {"failed": ["the penalty"]}}))
    assert failed(row)


def test_the_smollm2_sgg_weight_preset_is_table_ones_sgg_arm_on_held_out_folds():
    runs = expand_grid(load_grid("tune-sgg-weights-smollm2"))
    table1 = {
        r.config.task: r.config
        for r in expand_grid(load_grid("sgg-table1"))
        if r.config.guidance.use == "sgg" and r.config.seed == 1
    }
    assert {r.config.task for r in runs} == {"rte", "copa", "wic", "cb"}
    cells = Counter((r.config.task, r.config.guidance.lambda_dir) for r in runs)
    assert set(cells.values()) == {2} and {w for _, w in cells} == {0.03, 0.01}
    for r in runs:
        c = r.config
        assert c.guidance.use == "sgg" and c.guidance.lambda_mag == c.guidance.lambda_dir
        assert c.cv_folds == 2
        # everything but the weights and the fold is what Table 1's sgg run trains with
        same = dataclasses.replace(
            table1[c.task],
            guidance=dataclasses.replace(
                table1[c.task].guidance,
                lambda_dir=c.guidance.lambda_dir,
                lambda_mag=c.guidance.lambda_mag,
            ),
            cv_folds=c.cv_folds,
            cv_fold=c.cv_fold,
            eval_limit=None,
        )
        assert c == same
