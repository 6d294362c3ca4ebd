"""The command line: end to end on a tiny model, and user mistakes exit 2 without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gradguide.cli import main


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gradguide", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_eval_tiny_model_writes_record(tmp_path, capsys):
    code = main(
        ["eval", "--model", "tiny-llama", "--task", "demo-sentiment", "--out", str(tmp_path)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "run record" in out
    (run_dir,) = list(tmp_path.iterdir())
    record = json.loads((run_dir / "record.json").read_text())
    assert record["method"] == "zero-shot" and record["model"]["name"] == "tiny-llama"
    assert record["environment"]["packages"]["torch"]
    load = record["environment"]["load_average"]
    assert len(load) == 3 and all(x >= 0 for x in load)
    assert len(record["data"]["eval_ids"]) == record["data"]["eval_size"] > 0
    preds = (run_dir / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == record["data"]["eval_size"]


def test_eval_icl_records_demonstrations_and_is_deterministic(tmp_path):
    args = [
        "eval",
        "--model",
        "tiny-llama",
        "--task",
        "demo-sentiment",
        "--icl",
        "--shots",
        "4",
        "--seed",
        "3",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    ra, rb = (
        json.loads(next((tmp_path / d).iterdir()).joinpath("record.json").read_text()) for d in "ab"
    )
    assert len(ra["data"]["demonstration_ids"]) == 4
    assert ra["data"]["demonstration_ids"] == rb["data"]["demonstration_ids"]
    assert ra["metrics"] == rb["metrics"]


def test_user_jsonl_task(tmp_path):
    data = tmp_path / "mine.jsonl"
    rows = [
        {"text": f"item {i} is {'great' if i % 2 else 'awful'}", "label": "pos" if i % 2 else "neg"}
        for i in range(12)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(
        [
            "eval",
            "--model",
            "tiny-llama",
            "--task",
            str(data),
            "--label-words",
            "neg= negative,pos= positive",
            "--out",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["eval", "--model", "tiny-llama", "--task", "no-such-task"], "no-such-task"),
        (["eval", "--model", "no-such-model", "--task", "demo-sentiment"], "no-such-model"),
        (["eval", "--model", "tiny-llama", "--task", "demo-sentiment", "--shots", "4"], "--icl"),
        (["eval", "--model", "tiny-llama", "--task", "demo-sentiment", "--limit", "0"], "limit"),
    ],
)
def test_user_mistakes_exit_2_without_traceback(tmp_path, args, needle):
    proc = run_cli(*args, "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bad_user_file_names_file_and_line(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "fine", "label": "a"}\n{"text": "broken", "label": \n')
    proc = run_cli(
        "eval", "--model", "tiny-llama", "--task", str(data), "--out", str(tmp_path), cwd=tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{data}:2" in proc.stderr


def test_models_and_tasks_listings():
    proc = run_cli("models")
    assert proc.returncode == 0 and "smollm2-135m" in proc.stdout and "tiny-llama" in proc.stdout
    proc = run_cli("tasks")
    assert proc.returncode == 0 and "sst2" in proc.stdout and "demo-sentiment" in proc.stdout


def test_every_training_setting_declared_with_a_flag_reaches_its_setting():
    """The train flags come from the config fields (gradguide.config.option): each one parses
    into its dotted key, and an absent flag leaves the config's value (None override)."""
    from gradguide.cli import _train_overrides, build_parser
    from gradguide.config import flag_fields
    from gradguide.train_config import TrainConfig

    fields = flag_fields(TrainConfig)
    assert {"--shots", "--lr", "--guidance", "--two-sided", "--lora-r"} <= {f.flag for f in fields}
    absent = _train_overrides(build_parser().parse_args(["train"]))
    value = {bool: None, int: "3", float: "0.5", str: "x"}
    for f in fields:
        assert absent[f.key] is None, f.key
        argv = ["train", f.flag] + ([] if f.type is bool else [value[f.type]])
        got = _train_overrides(build_parser().parse_args(argv))[f.key]
        assert got == (True if f.type is bool else f.type(value[f.type])), f.flag
