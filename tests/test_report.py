"""The report, built from a synthetic bench directory (store + records): sections, verdicts."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gradguide.bench.store import Store, row_from_record
from gradguide.errors import GradguideError
from gradguide.report import ReportFiles, write_report
from gradguide.report.claims import NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, evaluate_claims
from gradguide.report.cli import main as report_main
from gradguide.report.data import _timings, load_bench

SUPERGLUE = ("boolq", "cb", "rte")
DOMAINS = ("financial_phrasebank", "banking77")
SEEDS = (1, 2, 3)
# accuracy level per method (SGG clearly on top), stability and alignment per method:
# SGG's alignment equals prompt tuning's, so that claim must come out "not reproduced".
LEVEL = {
    "zero-shot": 0.50,
    "icl": 0.55,
    "full": 0.60,
    "adapter": 0.62,
    "lora": 0.63,
    "prompt": 0.64,
    "sgg": 0.72,
    "sgg-dir": 0.68,
    "sgg-mag": 0.66,
}
STABILITY = {"full": 0.61, "adapter": 0.66, "lora": 0.68, "prompt": 0.70, "sgg": 0.80}
ALIGNMENT = {"full": 0.50, "adapter": 0.55, "lora": 0.58, "prompt": 0.62, "sgg": 0.62}
SHOT_CURVE = {16: 0.60, 32: 0.64, 64: 0.67, 128: 0.76, 256: 0.78, 512: 0.784}


def _record(
    method: str,
    task: str,
    suite: str,
    shots: int,
    seed: int,
    accuracy: float,
    rng: random.Random,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    trains = method not in ("zero-shot", "icl")
    steps = 40
    loss = [1.0 * math.exp(-i / 5) + 0.2 + 0.01 * rng.random() for i in range(steps)]
    norms = [1.0 + 0.2 * rng.random() for _ in range(steps)]
    dynamics = None
    if trains:
        jitter = 0.01 * (rng.random() - 0.5)
        dynamics = {
            "gradient_stability": STABILITY.get(method, 0.65) + jitter,
            "mean_consecutive_cosine": 0.5,
            "directional_alignment": ALIGNMENT.get(method, 0.55) + jitter,
            "source_alignment": None,
        }
    config = {
        "model": "synthetic-lm",
        "task": task,
        "method": method,
        "shots": shots,
        "seed": seed,
        "guidance": {k.split(".", 1)[1]: v for k, v in (settings or {}).items()},
    }
    return {
        "kind": "train",
        "method": method,
        "seed": seed,
        "config": config,
        "environment": {
            "git_commit": "abc123",
            "packages": {"torch": "2.x"},
            "cpu_count": 2,
            **({"load_average": [1.0, 1.5, 0.5 * seed]} if seed < 3 else {}),
        },
        "task": {"name": task, "suite": suite},
        "data": {
            "train_ids": [f"{task}-{seed}-{shots}-{i}" for i in range(shots)],
            "eval_ids": [f"{task}-e{i}" for i in range(50)],
            "eval_size": 50,
        },
        "curves": {
            "loss": loss if trains else [],
            "grad_norm": norms if trains else [],
            "cos_prior": [0.5 for _ in range(steps)] if trains else [],
        },
        "metrics": {"accuracy": accuracy},
        "dynamics": dynamics,
        "timings": {
            "total_s": 12.5,
            "train_s": 4.0 * seed if trains else 0.0,
            **({"step_s_median": 0.1 * seed} if trains else {}),
            "peak_rss_mb": 500.0 + 100 * seed,
        },
        # seed 3 is an old record whose peak covers its whole process: the report skips it
        "peak_rss_scope": "run" if seed < 3 else "process",
        "trainable_parameters": 460_800 if trains else 0,
    }


def build_fixture(root: Path) -> Path:
    """A bench directory with Table-1, sample-size, domain, ablation and sensitivity runs."""
    rng = random.Random(0)
    offsets = {t: 0.02 * i for i, t in enumerate(SUPERGLUE + DOMAINS + ("sst2",))}
    entries: list[tuple[str, str, int, int, float, dict[str, Any]]] = []
    for seed in SEEDS:
        noise = {t: 0.01 * (rng.random() - 0.5) for t in offsets}
        for task in SUPERGLUE:
            for method, level in LEVEL.items():
                acc = level + offsets[task] + noise[task] + 0.004 * rng.random()
                entries.append((method, task, 32, seed, acc, {}))
            for tau in (0.1, 1.0):
                acc = 0.70 + 0.01 * math.log10(tau) + offsets[task] + noise[task]
                entries.append(("sgg", task, 32, seed, acc, {"guidance.tau": tau}))
        for task, level in zip(DOMAINS, (0.79, 0.71), strict=True):
            for method, shift in (("zero-shot", -0.2), ("sgg", 0.0)):
                entries.append((method, task, 32, seed, level + shift + noise[task], {}))
        for shots, level in SHOT_CURVE.items():
            entries.append(("sgg", "sst2", shots, seed, level + 0.002 * rng.random(), {}))
            entries.append(("lora", "sst2", shots, seed, level - 0.03 + 0.002 * rng.random(), {}))
    with Store(root) as store:
        store.save_grid("synthetic", {"description": "made up for the tests", "source": "test"})
        for i, (method, task, shots, seed, acc, settings) in enumerate(entries):
            suite = "domain" if task in DOMAINS else "superglue"
            record = _record(method, task, suite, shots, seed, acc, rng, settings)
            rel = f"runs/k{i:04d}/run"
            (root / rel).mkdir(parents=True)
            (root / rel / "record.json").write_text(json.dumps(record))
            store.add_run(row_from_record(f"k{i:04d}", "synthetic", settings, rel, record))
        store.add_failure("k9999", "synthetic", "lora rte k=32 seed=9", "RuntimeError: boom")
    return root


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fixture(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def report(fixture_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    return write_report(fixture_dir, tmp_path_factory.mktemp("report"))


def _verdicts(bench: Path, where: str | None = None) -> dict[str, str]:
    claims = evaluate_claims(load_bench(bench))
    return {c.claim: c.status for c in claims if where is None or c.where in (where, "all runs")}


def test_claims_are_decided_from_the_numbers(fixture_dir):
    v = _verdicts(fixture_dir, "synthetic-lm, 32 shots")
    assert v["SGG has the highest average accuracy (Table 1)"] == REPRODUCED
    assert v["SGG has the highest gradient stability (Table 1)"] == REPRODUCED
    assert v["SGG has the highest directional alignment (Table 1)"] == NOT_REPRODUCED
    assert v["Training loss declines rapidly early in training"] == REPRODUCED
    v = _verdicts(fixture_dir, "synthetic-lm")
    assert v[next(k for k in v if k.startswith("Accuracy rises monotonically"))] == REPRODUCED
    v = _verdicts(fixture_dir, "synthetic-lm, 32 shots")
    assert v["Accuracy stays above 75% on domain-specific tasks"] == NOT_REPRODUCED


def test_cost_table_by_hand(report):
    md = report.markdown.read_text()
    # seeds 1, 2, 3: step times 0.1/0.2/0.3 s, training 4/8/12 s; t(0.975, 2) = 4.303
    half_step = 4.302653 * 0.1 / math.sqrt(3)
    half_train = 4.302653 * 4.0 / math.sqrt(3)
    row = (
        f"| boolq | lora | 460,800 | 0.200 ± {half_step:.3f} | 8.000 ± {half_train:.3f} "
        f"| 12.500 ± 0.000 | {650:.3f} ± {12.706205 * 50:.3f} | 3 | 0.5/2 1.0/2 |"
    )  # peak memory: seeds 1 and 2 only (600, 700 MiB: sd 50·√2); t(0.975, 1) = 12.706
    # load: seed 3 is an older record without a load average
    assert row in md
    assert "| boolq | zero-shot | 0 | n/a | 0.000 ± 0.000 | 12.500 ± 0.000 | 650.000" in md


def test_wall_time_of_an_older_resumed_record_counts_its_training():
    t = {"model_load_s": 5.0, "train_s": 900.0, "eval_s": 100.0, "total_s": 120.0}
    # before ``resumed_at_step`` existed, a resumed run's total_s held only its last session
    assert _timings({"timings": t})["total_s"] == 1005.0
    assert _timings({"timings": {**t, "total_s": 2000.0}})["total_s"] == 2000.0
    # newer records already count the earlier sessions: taken as written
    new = {**t, "resumed_at_step": 10}
    assert _timings({"timings": new})["total_s"] == 120.0
    assert "resumed_at_step" in _timings({"timings": new})
    assert "peak_rss_mb" not in _timings({"timings": {**t, "peak_rss_mb": 1.0}})


def test_spectral_diagnostics_table_and_spectra_by_hand(tmp_path):
    from gradguide.report.build import build_report
    from gradguide.report.data import BenchData, RunData
    from gradguide.report.render import to_markdown

    def run(method: str, seed: int, summary: dict[str, Any] | None) -> RunData:
        terms = {"spectral-reg": summary} if summary is not None else {}
        return RunData(
            key=f"{method}{seed}", grid="g", model="m", task="rte", suite="glue", method=method,
            shots=32, seed=seed, settings={}, config={}, metrics={"accuracy": 0.5},
            dynamics={}, curves={}, train_ids=(), eval_digest=None, eval_size=10, wall_s=1.0,
            environment={}, has_record=True, term_summaries=terms,
        )  # fmt: skip

    spectra = {f"base_model.model.layer{i}": [0.0, 0.5, 1.0] for i in range(4)}
    runs = [
        run("lora", 1, None),
        run("spectral-reg", 1, {"graphs": 2, "delta_norm": 1.0, "high_share": 0.2,
                                "energy": 3.0, "build_s": 2.0, "spectra": spectra}),
        run("spectral-reg", 2, {"graphs": 2, "delta_norm": 3.0, "high_share": 0.4,
                                "energy": 5.0, "build_s": 2.0, "spectra": spectra}),
    ]  # fmt: skip
    title, blocks = build_report(BenchData(tmp_path, runs, {}, [], []))
    md = to_markdown(title, blocks)
    # seeds 1 and 2: mean 2 ± t(0.975, 1)·sd/√2 = 12.706·1; share 30 ± 12.706·10
    assert (
        f"| rte | spectral-reg | 2 | 2.000 ± {12.706205:.3f} | 30.000 ± {127.06205:.3f} "
        f"| 4.000 ± {12.706205:.3f} | 2.000 ± 0.000 | 2 |"
    ) in md
    assert "| rte | lora |" not in md.split("## Spectral diagnostics")[1].split("## ")[0]
    (fig,) = [b for b in blocks if getattr(b, "name", "").startswith("graph-spectra")]
    assert "first 3 graphs of m" in fig.caption


def test_report_has_every_section_and_is_self_contained(report):
    files = report
    md = files.markdown.read_text()
    for heading in (
        "## Overview",
        "## Claims of the papers",
        "## Results (Table-1 analogue)",
        "## Paired comparisons",
        "## Sample-size curves",
        "## Domain tasks",
        "## Loss curves",
        "## Convergence",
        "## Cost",
        "## Gradient dynamics",
        "## Ablation",
        "## Sensitivity",
        "## Runs that failed",
    ):
        assert heading in md, heading
    assert "**reproduced**" in md and "**not reproduced**" in md
    assert "| sgg | boolq" not in md  # the table's columns are tasks, rows methods
    assert "| sgg [guidance.tau=0.1] |" in md
    assert "Paper: 80.1% vs 74.3–78.0%" in md
    assert all(p.is_file() for p in files.figures) and len(files.figures) >= 8
    page = files.html.read_text()
    assert page.count("data:image/png;base64,") == len(files.figures)
    assert 'src="http' not in page and "<link" not in page and "<script" not in page

    class Checker(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.stack: list[str] = []

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            if tag not in ("meta", "img", "br"):
                self.stack.append(tag)

        def handle_endtag(self, tag: str) -> None:
            assert self.stack and self.stack.pop() == tag

    checker = Checker()
    checker.feed(page)
    assert checker.stack == []


def test_numbers_in_the_table_come_from_the_store(fixture_dir, report):
    md = report.markdown.read_text()
    runs = load_bench(fixture_dir).runs
    zs = [r.value("accuracy") for r in runs if r.method == "zero-shot" and r.task == "cb"]
    mean = 100 * sum(v for v in zs if v is not None) / len(zs)
    row = next(line for line in md.splitlines() if line.startswith("| zero-shot | "))
    assert row.split(" | ")[2].startswith(f"{mean:.1f} ±")  # columns: method, boolq, cb, …


def test_ablation_table_gives_each_arms_gradient_measures(fixture_dir, report):
    md = report.markdown.read_text()
    section = md.split("## Ablation")[1].split("\n## ")[0]
    table = section.split("| arm | seeds | accuracy | gradient stability")[1].split("\n\n")[0]
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ")
        for line in table.splitlines()
        if line.startswith("| ")
    }
    runs = [r for r in load_bench(fixture_dir).runs if r.shots == 32 and not r.settings]
    for arm in ("lora", "sgg", "sgg-dir", "sgg-mag"):
        per_seed = [
            sum(
                r.value("gradient_stability") or 0.0
                for r in runs
                if r.method == arm and r.seed == s and r.task in SUPERGLUE
            )
            / 3
            for s in SEEDS
        ]
        assert rows[arm][1] == "3"
        assert rows[arm][3].startswith(f"{sum(per_seed) / 3:.3f} ±"), arm
        assert rows[arm][5].strip(" |") == "n/a"  # no arm of the fixture has a source task


def test_missing_runs_are_not_testable(tmp_path, capsys):
    bench = build_fixture(tmp_path / "b")
    with Store(bench) as store:
        store.conn.execute("DELETE FROM runs WHERE method LIKE 'sgg%'")
    assert set(_verdicts(bench).values()) == {NOT_TESTABLE}
    # a record deleted after the row was written: the row still counts, without curves
    first = load_bench(bench).runs[0]
    shutil.rmtree(bench / "runs" / first.key)
    assert report_main([str(bench)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert "record.json is missing" in (bench / "report.md").read_text()


def test_a_cell_run_twice_with_other_settings_keeps_the_latest_and_says_so(tmp_path):
    bench = build_fixture(tmp_path / "b")
    before = load_bench(bench)
    old = next(r for r in before.runs if r.method == "lora" and r.task == "cb" and r.seed == 1)
    record = json.loads((bench / "runs" / old.key / "run" / "record.json").read_text())
    record["config"]["optim"] = {"lr": 3e-3}
    record["config"]["out"] = "elsewhere"  # where files went is no difference worth listing
    record["metrics"]["accuracy"] = 0.99
    (bench / "runs" / "later" / "run").mkdir(parents=True)
    (bench / "runs" / "later" / "run" / "record.json").write_text(json.dumps(record))
    with Store(bench) as store:
        store.add_run(row_from_record("later", "synthetic", {}, "runs/later/run", record))
    after = load_bench(bench)
    assert len(after.runs) == len(before.runs)  # one run per cell, not two
    (kept,) = [r for r in after.runs if r.method == "lora" and r.task == "cb" and r.seed == 1]
    assert kept.key == "later" and kept.value("accuracy") == 0.99
    (s,) = after.superseded
    assert (s.dropped, s.kept) == (old.key, "later")
    assert s.differences == {"optim.lr": (None, 3e-3)}
    md = write_report(bench, tmp_path / "r").markdown.read_text()
    assert "## Superseded runs" in md and "optim.lr: None → 0.003" in md


def test_report_of_an_empty_or_missing_bench(tmp_path):
    with pytest.raises(GradguideError, match="no results database"):
        write_report(tmp_path / "nothing")
    assert report_main([str(tmp_path / "nothing")]) == 2
    Store(tmp_path / "empty").close()
    files = write_report(tmp_path / "empty")
    assert "No finished runs" in files.markdown.read_text()


CHROMIUM = next(
    filter(None, map(shutil.which, ("chromium-headless-shell", "chromium", "google-chrome"))), None
)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_html_loads_in_headless_chromium(report):
    files = report
    assert CHROMIUM is not None
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--enable-logging=stderr",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            files.html.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0 and "Claims of the papers" in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []  # the page logs no script errors
    assert dom.stdout.count("<img") >= 1 and "data:image/png;base64," in dom.stdout


def test_a_method_run_on_fewer_tasks_does_not_shrink_every_average(tmp_path):
    # e.g. a LayerNorm baseline from another grid that ran one task of the Table-1 grid
    bench = build_fixture(tmp_path / "b")
    with Store(bench) as store:
        store.conn.execute("DELETE FROM runs WHERE method = 'lora' AND task = 'rte'")
    md = write_report(bench, tmp_path / "r").markdown.read_text()
    results = md.split("## Results")[1].split("\n## ")[0]
    (section,) = [s for s in results.split("\n### ") if s.split("\n")[0].endswith(", 32 shots")]
    assert (
        "averaged over boolq, cb, rte (the tasks most methods ran; no average for lora" in section
    )
    rows = {
        line.split(" | ")[0]: line.split(" | ")
        for line in section.splitlines()
        if line.startswith("| ")
    }
    avg = rows["| method"].index("avg")
    assert rows["| lora"][avg] == "n/a"
    runs = [r for r in load_bench(bench).runs if r.method == "zero-shot" and r.shots == 32]
    by_seed = {
        s: sum(r.value("accuracy") or 0.0 for r in runs if r.seed == s and r.task in SUPERGLUE) / 3
        for s in SEEDS
    }
    mean = 100 * sum(by_seed.values()) / len(by_seed)
    assert rows["| zero-shot"][avg].startswith(f"{mean:.1f} ±")


def test_a_report_of_one_grid_keeps_its_own_runs_and_those_it_reused(tmp_path):
    # two grids share a directory: the same LoRA runs, and SGG with and without a source task
    # (sgg-table1 and ablation): the whole-directory report keeps one SGG run per cell, a
    # one-grid report keeps that grid's, plus the LoRA runs the other grid trained for it
    from gradguide.bench.grid import expand_grid, parse_grid
    from gradguide.bench.runner import run_grid

    base = {
        "eval_limit": 8,
        "optim": {"steps": 2, "batch_size": 4},
        "guidance": {"measure_alignment": False, "prior": "ema:0.9"},
    }
    axes = {
        "models": ["tiny-llama"],
        "tasks": ["demo-sentiment"],
        "methods": ["lora", "sgg"],
        "shots": [8],
        "seeds": [1],
        "base": base,
    }
    plain = parse_grid({"name": "plain", **axes}, source="plain.yaml")
    sourced = parse_grid(
        {
            "name": "sourced",
            **axes,
            "method_base": {"sgg": {"guidance.source_task": "demo-sentiment"}},
        },
        source="sourced.yaml",
    )
    out = tmp_path / "bench"
    assert run_grid(plain, out, workers=0, show_progress=False).ok
    assert run_grid(sourced, out, workers=0, show_progress=False).ok

    def sgg_source(data: Any) -> Any:
        (run,) = [r for r in data.runs if r.method == "sgg"]
        return run.setting("guidance.source_task")

    whole = load_bench(out)
    assert len(whole.runs) == 2 and len(whole.superseded) == 1
    assert sgg_source(whole) == "demo-sentiment"  # the later grid's run wins the cell
    first = load_bench(out, ["plain"])
    assert sorted(r.method for r in first.runs) == ["lora", "sgg"] and not first.superseded
    assert sgg_source(first) is None
    second = load_bench(out, ["sourced"])
    assert sorted(r.method for r in second.runs) == ["lora", "sgg"] and not second.superseded
    assert sgg_source(second) == "demo-sentiment"
    (lora,) = [r for r in second.runs if r.method == "lora"]
    assert lora.grid == "plain"  # trained once, by the first grid, and reused
    md = write_report(out, tmp_path / "r", grids=["sourced"]).markdown.read_text()
    assert "gradguide report: sourced" in md
    assert "2 of the 2 runs it asks for are here, 1 of them run by another grid" in md
    assert "## Superseded runs" not in md
    # a failure of a run no stored grid asks for any more (the grid was changed) is left out of
    # "Runs that failed"; one a grid still asks for stays there
    wider = parse_grid({"name": "plain", **axes, "seeds": [1, 2]}, source="plain.yaml")
    asked = next(r.key for r in expand_grid(wider) if r.config.seed == 2)
    with Store(out) as store:
        store.save_grid("plain", wider.to_dict())
        store.add_failure(asked, "plain", "lora seed 2", "RuntimeError: still asked for")
        store.add_failure("0123456789abcdef", "plain", "lora seed 7", "RuntimeError: stale")
    data = load_bench(out)
    assert [f.key for f in data.failures] == [asked] and data.stale_failures == 1
    md = write_report(out, tmp_path / "r2").markdown.read_text()
    assert "still asked for" in md and "RuntimeError: stale" not in md
    assert "no stored grid asks for them any more (their grid was changed since): 1" in md
    with pytest.raises(GradguideError, match=r"no grid 'other' is stored here \(stored: plain"):
        load_bench(out, ["other"])
    assert report_main([str(out), "--grid", "other"]) == 2
