"""The examples under examples/ run (on the tiny model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script", ["sgg_plain_pytorch.py", "sgg_hf_trainer.py"])
def test_example_runs(script):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--steps", "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("step ")]
    assert len(lines) >= 2 and "penalties" in lines[-1]


def test_demo_main_job_runs_on_a_tiny_model(tmp_path):
    """`make demo` runs examples/demo.py on smollm2-135m; the same code path on the tiny model."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--model", "tiny-llama", "--seeds", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout.split("mean ± 95% interval")[-1]
    for method in ("zero-shot", "icl", "lora", "sgg"):
        assert f"\n{method}" in table


CONFIGS = sorted((EXAMPLES / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_single_run_configs_launch_as_their_header_says(config, tmp_path):
    """Each YAML under examples/configs/ is headed with its launch command and trains (tiny)."""
    import json

    from gradguide.cli import main
    from gradguide.tasks.dataroot import resolve_data_root

    header = [line for line in config.read_text().splitlines() if line.startswith("#")]
    assert any(f"gradguide train --config examples/configs/{config.name}" in h for h in header)
    if resolve_data_root() is None:
        pytest.skip("no data root: the configs train on SST-2 (and RTE as a source)")
    tiny = ["--model", "tiny-llama", "--steps", "2", "--out", str(tmp_path)]
    tiny += ["--set", "eval_limit=4", "--set", "layer_diagnostics=0"]
    assert main(["train", "--config", str(config), *tiny]) == 0
    (record,) = tmp_path.glob("*/record.json")
    rec = json.loads(record.read_text())
    assert rec["config"]["task"] == "sst2" and rec["steps"] == 2
    assert rec["config"]["guidance"]["use"] or rec["method"] == "ofa"
