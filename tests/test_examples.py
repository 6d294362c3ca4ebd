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
