"""The report's SetFit-against-every-arm section, on constructed runs: numbers by hand."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gradguide.report.data import BenchData, RunData
from gradguide.report.doc import Doc
from gradguide.report.peers import peers_section
from gradguide.report.render import Figure, Table

TASKS = ("sst2", "trec")
SEEDS = (1, 2, 3)


def run(method: str, task: str, seed: int, shots: int, accuracy: float, wall: float) -> RunData:
    return RunData(
        key=f"{method}-{task}-{seed}-{shots}",
        grid="g",
        model="tiny",
        task=task,
        suite="classification",
        method=method,
        shots=shots,
        seed=seed,
        settings={},
        config={},
        metrics={"accuracy": accuracy},
        dynamics={},
        curves={},
        train_ids=(f"{task}-{seed}-{shots}",),
        eval_digest=task,
        eval_size=100,
        wall_s=wall,
        environment={},
        has_record=True,
    )


def _runs() -> list[RunData]:
    runs = []
    for shots in (8, 16):
        for i, task in enumerate(TASKS):
            for seed in SEEDS:
                base = 0.5 + 0.1 * i + 0.01 * seed + (0.1 if shots == 16 else 0.0)
                runs.append(run("setfit", task, seed, shots, base, 10.0 * seed))
                # LoRA 4 points ahead at 8 shots, by 2, 4 or 6 at 16 (mean 4, not constant)
                lift = 0.04 if shots == 8 else 0.02 * seed
                runs.append(run("lora", task, seed, shots, base + lift, 2.0))
    # a LoRA cell SetFit did not run must not enter LoRA's mean; an arm on one task is left out
    runs.append(run("lora", "sst2", 9, 8, 0.0, 2.0))
    runs += [run("sgg", "sst2", s, 8, 0.9, 5.0) for s in SEEDS]
    return runs


def test_each_arm_is_averaged_on_setfits_cells_and_paired_with_it():
    doc = Doc()
    peers_section(doc, BenchData(Path("synthetic"), _runs(), {}, [], []))
    accuracy, walls = [b for b in doc.blocks if isinstance(b, Table)]
    assert accuracy.header == ("shots", "cells", "setfit", "lora")
    eight, sixteen = accuracy.rows
    # SetFit at 8 shots: mean of 0.5/0.6 + 0.01·seed over 2 tasks × 3 seeds = 0.57
    assert eight[:3] == ("8", "6 (2 tasks)", "57.0")
    # a constant +4 points has no spread, so its interval is one point
    assert eight[3] == "61.0 (+4.0 [+4.0, +4.0])"
    # at 16 shots the differences are 2, 4, 6 per task: mean 4, sd 1.79, t(5) 2.571 → ± 1.9
    assert sixteen[2] == "67.0"
    assert sixteen[3] == "71.0 (+4.0 [+2.1, +5.9])"
    assert "sgg at 8 shots (3 of 6)" in accuracy.caption
    assert walls.rows == (("8", "20", "2"), ("16", "20", "2"))
    (figure,) = [b for b in doc.blocks if isinstance(b, Figure)]
    assert figure.png.startswith(b"\x89PNG")


def test_no_section_without_setfit():
    doc = Doc()
    runs = [dataclasses.replace(r, method="full") for r in _runs() if r.method == "setfit"]
    peers_section(doc, BenchData(Path("synthetic"), runs, {}, [], []))
    assert doc.blocks == []
