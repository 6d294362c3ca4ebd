"""A guided run checks its own gradient curves when it ends (gradguide.health): the record says
which checks it failed and the user is warned, by the library, the command line and the grid."""

from __future__ import annotations

import dataclasses
import statistics
import warnings
from pathlib import Path

import pytest
from tiny_cli import tiny_train
from tiny_runs import tiny_config

from gradguide.bench.runner import _result_line
from gradguide.bench.spec import GridRun
from gradguide.cli import main
from gradguide.guidance.ofa import OfaOptions
from gradguide.health import TERMS, GradientWarning
from gradguide.train import GuidanceConfig, OptimConfig, TrainConfig, train


def _ofa(tmp_path: Path, scale: float) -> TrainConfig:
    """OFA on tiny-llama with its default weights times ``scale`` (its terms grow with it)."""
    options = OfaOptions(lambda_step=0.1 * scale, lambda_sharp=0.01 * scale)
    return tiny_config(
        tmp_path,
        method="ofa",
        eval_limit=8,
        optim=OptimConfig(steps=9, batch_size=4, lr=5e-2),
        guidance=GuidanceConfig(measure_alignment=False, ofa=options),
    )


def test_a_run_whose_loss_terms_swamp_the_task_records_the_failure_and_warns(tmp_path):
    """Catches a run that ends silently while its terms outweigh the task gradient (the report
    was the only place that said so), and a check computed from other numbers than the curve."""
    with pytest.warns(GradientWarning, match="loss terms dominate"):
        loud = train(_ofa(tmp_path / "loud", 10.0), show_progress=False)
    check = loud.record["gradient_check"]
    assert TERMS in check["failed"]
    measured = [v for v in loud.record["curves"]["terms_to_task"] if v is not None]
    assert check["terms_to_task"] == pytest.approx(statistics.median(measured))
    assert check["terms_to_task"] > 1

    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientWarning)
        quiet = train(_ofa(tmp_path / "quiet", 0.001), show_progress=False)
    check = quiet.record["gradient_check"]
    assert check["failed"] == [] and 0 < check["terms_to_task"] < 1


def test_an_unguided_run_has_no_gradient_check(tmp_path):
    """Catches the check applied to plain training, whose curves it was not made for."""
    config = dataclasses.replace(_ofa(tmp_path, 1.0), method="layernorm", guidance=GuidanceConfig())
    run = train(config, show_progress=False)
    assert "gradient_check" not in run.record


def test_the_command_line_says_a_failed_check_in_one_line(tmp_path, capsys):
    """Catches the warning lost on the command line, or printed as a Python traceback-style
    warning."""
    argv = tiny_train(
        "--method",
        "ofa",
        "--out",
        str(tmp_path),
        "--eval-limit",
        "8",
        "--lr",
        "0.05",
        "--set",
        "guidance.ofa.lambda_step=1.0",
        "--set",
        "guidance.ofa.lambda_sharp=0.1",
        "--set",
        "guidance.measure_alignment=false",
        steps=9,
    )
    assert main(argv) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "gradient sanity check" in line]
    assert len(warned) == 1 and warned[0].startswith("gradguide: warning:") and TERMS in warned[0]
    assert "GradientWarning" not in err


def test_a_grid_names_the_failed_check_on_the_run_line():
    """Catches a grid that stores a failed run and reports only its accuracy."""
    run = GridRun(index=0, key="k", config=_ofa(Path("out"), 1.0), settings={})
    ok = {"ok": True, "metrics": {"accuracy": 0.5}, "wall_s": 1.0}
    assert "FAILS" not in _result_line(run, {**ok, "failed_checks": []})
    assert f"FAILS the gradient check: {TERMS}" in _result_line(
        run, {**ok, "failed_checks": [TERMS]}
    )
