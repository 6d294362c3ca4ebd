"""The report's guards: sanity checks of guided runs, no verdict from a failed run, comparable
alignments, the opening a reader sees first, provenance without absolute paths, no import circle."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from gradguide.bench.stats import paired_compare
from gradguide.bench.store import Store, row_from_record
from gradguide.errors import GradguideError
from gradguide.report import write_report
from gradguide.report.build import build_report
from gradguide.report.claims import evaluate_claims
from gradguide.report.cli import main as report_main
from gradguide.report.data import BenchData, RunData, load_bench
from gradguide.report.render import (
    Block,
    BulletList,
    Figure,
    Heading,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)
from gradguide.report.sanity import (
    CLIPPING,
    FILTER,
    NONFINITE,
    PENALTY,
    PRIORS,
    RATIO,
    TERMS,
    Limits,
    check,
)
from gradguide.report.verdict import FAILED_SANITY, NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED

TASKS = ("rte", "cb")
SEEDS = (1, 2, 3)
LEVEL = {"full": 0.60, "adapter": 0.61, "lora": 0.62, "prompt": 0.63, "sgg": 0.72}
WHERE = "tiny, 32 shots"
ACCURACY = "SGG has the highest average accuracy (Table 1)"
ALIGN = "SGG has the highest directional alignment (Table 1)"
LOSS = "Training loss declines rapidly early in training"
STABILITY_CLAIM = "SGG has the highest gradient stability (Table 1)"
STEPS = 20


def guided_run(
    method: str,
    task: str,
    seed: int,
    rng: random.Random,
    *,
    ratio: float = 1.03,
    prior: str = "pretrain",
    extra_curves: dict[str, list[float | None]] | None = None,
    grad_clip: float | None = 1.0,
) -> RunData:
    """A trained run: ``sgg`` guided with ‖guided g‖ = ratio·‖g‖, the others plain."""
    grad = [0.5 + 0.3 * rng.random() for _ in range(STEPS)]
    guided = [g * ratio for g in grad] if method == "sgg" else list(grad)
    loss = [math.exp(-i / 3) + 0.2 for i in range(STEPS)]
    return RunData(
        key=f"{method}-{task}-{seed}",
        grid="g",
        model="tiny",
        task=task,
        suite="superglue",
        method=method,
        shots=32,
        seed=seed,
        settings={},
        config={"optim": {"grad_clip": grad_clip}},
        metrics={"accuracy": LEVEL[method] + 0.004 * rng.random()},
        dynamics={
            "gradient_stability": 0.7 + (0.1 if method == "sgg" else 0.0) + 0.004 * rng.random(),
            "directional_alignment": (0.5 if method == "sgg" else 0.1) + 0.004 * rng.random(),
        },
        curves={"loss": loss, "grad_norm": grad, "guided_norm": guided, **(extra_curves or {})},
        train_ids=(f"{task}-{seed}",),
        eval_digest=task,
        eval_size=50,
        wall_s=1.0,
        environment={},
        has_record=True,
        prior=prior,
        guidance_use=("sgg",) if method == "sgg" else (),
    )


def archive(bad: dict[tuple[str, int], dict[str, Any]] | None = None) -> BenchData:
    """SGG ahead of four baselines on two tasks × three seeds; ``bad`` overrides the options of
    the named sgg runs."""
    rng = random.Random(0)
    runs = [
        guided_run(m, t, s, rng, **(bad or {}).get((t, s), {}) if m == "sgg" else {})
        for s in SEEDS
        for t in TASKS
        for m in LEVEL
    ]
    return BenchData(Path("results"), runs, {}, [], [])


def status(data: BenchData, claim: str, limits: Limits | None = None) -> tuple[str, str]:
    (found,) = [c for c in evaluate_claims(data, limits) if c.claim == claim and c.where == WHERE]
    return found.status, found.evidence


def section(blocks: list[Block], title: str) -> list[Block]:
    """The blocks under the level-2 heading ``title``, up to the next level-2 heading."""
    start = blocks.index(Heading(title)) + 1
    out = []
    for b in blocks[start:]:
        if isinstance(b, Heading) and b.level == 2:
            break
        out.append(b)
    return out


def test_a_clean_archive_passes_every_check_and_gets_its_verdicts():
    data = archive()
    sanity = check(data)
    assert len(sanity.runs) == len(TASKS) * len(SEEDS)  # the guided runs only
    assert not sanity.failures() and not sanity.clashes
    assert all(c.share is not None and not c.share_recorded for c in sanity.runs)
    assert status(data, ACCURACY)[0] == REPRODUCED
    assert status(data, ALIGN)[0] == REPRODUCED
    _, blocks = build_report(data)
    part = section(blocks, "Sanity checks")
    assert Paragraph("All 6 guided runs pass every check.") in part
    assert not any(isinstance(b, Paragraph) and "fail a check" in b.text for b in part)
    (table,) = [b for b in part if isinstance(b, Table)]
    assert {row[-1] for row in table.rows} == {"ok"}


def test_a_run_200x_off_is_flagged_and_the_claims_it_feeds_get_no_verdict():
    data = archive({("cb", 2): {"ratio": 200.0}})
    (failed,) = [c for c in check(data).runs if c.failed]
    assert failed.run.key == "sgg-cb-2"
    assert failed.ratio == pytest.approx(200.0)
    # ‖guided − g‖ ≥ 199‖g‖, so the share is at least 199/200; the clip scales it by ~1/(200‖g‖)
    assert failed.share == pytest.approx(199 / 200) and not failed.share_recorded
    assert failed.failed == (RATIO, PENALTY, CLIPPING)
    for claim in (ACCURACY, ALIGN, LOSS):
        verdict, evidence = status(data, claim)
        assert verdict == FAILED_SANITY, claim
        assert "sgg on cb (seed 2)" in evidence and "Numbers, not a verdict" in evidence
    _, blocks = build_report(data)
    (summary,) = [b for b in section(blocks, "Verdicts") if isinstance(b, Table)]
    row = next(r for r in summary.rows if r[1] == ACCURACY)
    assert row[3] == FAILED_SANITY
    assert row[4] == (f"1 of its runs failed: {RATIO}, {PENALTY}, {CLIPPING}")
    part = section(blocks, "Sanity checks")
    assert Paragraph("**1 of 6 guided runs fail a check**: sgg on tiny, 32 shots (1 runs).") in part
    (table,) = [b for b in part if isinstance(b, Table)]
    assert table.rows[0][4] == "sgg-cb-2" and table.rows[0][5].startswith("200× ")
    assert [r[-1] for r in table.rows[1:]] == ["ok"] * 5
    # the limit is configurable: at 1000× and a penalty 1000× the task's only clipping dominates
    loose = Limits(ratio=1000.0, penalty=1000.0)
    assert check(data, loose).failures()["sgg-cb-2"].checks == (CLIPPING,)
    assert not check(data, Limits(ratio=1000.0, penalty=1000.0, clip_scale=0.0)).failures()
    assert status(data, ACCURACY, Limits(1000.0, 1000.0, 0.0))[0] == REPRODUCED


def test_a_ratio_far_below_one_fails_too():
    data = archive({("rte", 1): {"ratio": 0.05}})
    assert check(data).failures()["sgg-rte-1"].checks[0] == RATIO


def test_a_failed_run_on_a_task_the_claim_never_averaged_does_not_withhold_it():
    """Table 1 averages the tasks SGG and every baseline ran: an SGG run on a task only SGG ran
    (wic here) is not evidence for it, so its failure must not withhold the verdict, while the
    claim it does feed (the loss curves, all of SGG's runs) is still withheld."""
    data = archive()
    rng = random.Random(5)
    extra = [guided_run("sgg", "wic", s, rng, ratio=200.0 if s == 2 else 1.03) for s in SEEDS]
    data = BenchData(data.bench_dir, [*data.runs, *extra], {}, [], [])
    assert "sgg-wic-2" in check(data).failures()
    verdict, evidence = status(data, ACCURACY)
    assert verdict == REPRODUCED, evidence
    assert status(data, LOSS)[0] == FAILED_SANITY


def test_the_sample_size_claim_is_withheld_only_by_runs_on_its_curve():
    """Figure 2 averages the tasks SGG ran at every number of shots: a failed SGG run at 32
    shots on a task of another grid (rte) is not on the curve and must not withhold it."""
    rng = random.Random(6)
    curve = {16: 0.60, 32: 0.64, 64: 0.67, 128: 0.76, 256: 0.78, 512: 0.784}
    runs = [
        dataclasses.replace(
            r, key=f"{r.key}-{k}", shots=k, metrics={"accuracy": acc + 0.004 * rng.random()}
        )
        for k, acc in curve.items()
        for s in SEEDS
        for r in [guided_run("sgg", "sst2", s, rng)]
    ]
    bad = guided_run("sgg", "rte", 1, rng, ratio=200.0)
    claim = "Accuracy rises monotonically with shots, most from 64 to 128, plateau beyond 256"

    def verdict(runs: list[RunData]) -> str:
        (found,) = [
            c for c in evaluate_claims(BenchData(Path("r"), runs, {}, [], [])) if c.claim == claim
        ]
        return found.status

    assert verdict(runs) == REPRODUCED
    assert verdict([*runs, bad]) == REPRODUCED
    on_curve = dataclasses.replace(runs[0], curves=bad.curves)
    assert verdict([on_curve, *runs[1:]]) == FAILED_SANITY


def test_recorded_share_and_clip_scale_are_used_before_the_norms():
    # the norms alone bound the share below by 0.03; the record says the penalty is 80% of it
    share = {"penalty_share": [0.8] * STEPS, "clip_scale": [1.0] * STEPS}
    data = archive({("cb", 1): {"ratio": 3.0, "extra_curves": share}})
    (c,) = [c for c in check(data).runs if c.run.key == "sgg-cb-1"]
    assert c.share_recorded and c.share == pytest.approx(0.8)
    assert c.penalty == pytest.approx(0.8 * 3.0)  # ‖p‖/‖g‖ = share × ratio, > 1: dominates
    assert c.failed == (PENALTY,)
    # a share above one half with the penalty part smaller than g does not dominate
    data = archive({("cb", 1): {"ratio": 0.9, "extra_curves": share}})
    (c,) = [c for c in check(data).runs if c.run.key == "sgg-cb-1"]
    assert c.penalty == pytest.approx(0.72) and c.failed == ()
    clipped = {"penalty_share": [None, 0.1] * (STEPS // 2), "clip_scale": [0.05] * STEPS}
    data = archive({("cb", 1): {"extra_curves": clipped}})
    (c,) = [c for c in check(data).runs if c.run.key == "sgg-cb-1"]
    assert c.share == pytest.approx(0.1) and c.clip == pytest.approx(0.05)
    assert c.failed == (CLIPPING,) and c.clipped == STEPS
    # without clipping there is no clip scale to check
    data = archive({("cb", 1): {"ratio": 1.0, "grad_clip": None}})
    (c,) = [c for c in check(data).runs if c.run.key == "sgg-cb-1"]
    assert c.clip is None and c.failed == ()


def test_loss_terms_that_outweigh_the_task_gradient_fail_and_withhold_the_claim():
    """A loss term (OFA, spectral-reg) leaves ‖guided g‖/‖g‖ at 1: only ‖∇T‖/‖∇L‖ sees it."""
    measured = [None if i % 4 else 3.0 for i in range(STEPS)]  # every 4th step, as recorded
    data = archive({("cb", 1): {"ratio": 1.0, "extra_curves": {"terms_to_task": measured}}})
    (c,) = [c for c in check(data).runs if c.run.key == "sgg-cb-1"]
    assert c.terms == pytest.approx(3.0) and c.failed == (TERMS,)
    assert status(data, ACCURACY)[0] == FAILED_SANITY
    assert status(data, ACCURACY, Limits(penalty=5.0))[0] == REPRODUCED
    small = [None if i % 4 else 0.4 for i in range(STEPS)]
    data = archive({("cb", 1): {"ratio": 1.0, "extra_curves": {"terms_to_task": small}}})
    (c,) = [c for c in check(data).runs if c.run.key == "sgg-cb-1"]
    assert c.terms == pytest.approx(0.4) and c.failed == ()


def test_loss_terms_are_judged_while_the_task_is_learnt():
    """Once the k shots are fitted ∇L vanishes and any regulariser outweighs it (OFA on SST-2:
    ‖∇T‖/‖∇L‖ 0.3, 0.7, then 5.7 at a loss of 0.009): the check reads the steps before the loss
    fell to a tenth of its start. Catches a check that fails every regulariser on a task the
    model fits, and one that ignores terms that dominate while the task is learnt."""
    late = [None if i % 4 else (0.3 if i < 8 else 6.0) for i in range(STEPS)]
    fitted = [1.0, 0.9, 0.8, 0.7, 0.5, 0.3, 0.1, 0.03, 0.01] + [0.005] * (STEPS - 9)
    curves = {"terms_to_task": late, "loss": fitted}
    data = archive({("cb", 1): {"ratio": 1.0, "extra_curves": curves}})
    (c,) = [c for c in check(data).runs if c.run.key == "sgg-cb-1"]
    assert c.terms == pytest.approx(0.3) and c.failed == ()
    # the same terms on a loss that never falls that far: every measured step counts
    flat = [1.0 - 0.02 * i for i in range(STEPS)]
    data = archive({("cb", 1): {"ratio": 1.0, "extra_curves": {**curves, "loss": flat}}})
    (c,) = [c for c in check(data).runs if c.run.key == "sgg-cb-1"]
    assert c.terms == pytest.approx(6.0) and c.failed == (TERMS,)
    # terms that dominate from the first steps fail however fast the loss falls
    early = [None if i % 4 else 2.0 for i in range(STEPS)]
    data = archive({("cb", 1): {"ratio": 1.0, "extra_curves": {**curves, "terms_to_task": early}}})
    (c,) = [c for c in check(data).runs if c.run.key == "sgg-cb-1"]
    assert c.failed == (TERMS,)


def test_a_filter_that_keeps_a_sliver_of_the_gradient_fails():
    thin = {"transform_keep": [0.05] * STEPS}
    data = archive({("rte", 2): {"ratio": 1.0, "extra_curves": thin}})
    (c,) = [c for c in check(data).runs if c.run.key == "sgg-rte-2"]
    assert c.keep == pytest.approx(0.05) and c.failed == (FILTER,)
    assert check(data, Limits(ratio=50.0)).failures() == {}
    kept = {"transform_keep": [0.4] * STEPS}
    data = archive({("rte", 2): {"ratio": 1.0, "extra_curves": kept}})
    assert check(data).failures() == {}


def test_alignments_against_different_priors_fail_only_the_alignment_claim():
    data = archive({(t, s): {"prior": "ema:0.9"} for t in TASKS for s in SEEDS})
    sanity = check(data)
    (clash,) = sanity.clashes
    assert clash.priors["sgg"] == ("ema:0.9",) and clash.priors["lora"] == ("pretrain",)
    assert not sanity.failures() and len(sanity.failures("directional_alignment")) == 30
    assert sanity.failures("directional_alignment")["lora-cb-1"].checks == (PRIORS,)
    verdict, evidence = status(data, ALIGN)
    assert verdict == FAILED_SANITY and PRIORS in evidence
    assert status(data, ACCURACY)[0] == REPRODUCED


def test_an_arm_outside_a_claim_measured_against_another_prior_leaves_the_claim_its_verdict():
    # the smollm2 archive: an ablation arm (sgg-dir) measured against an older prior than SGG and
    # the paper's baselines, which share one; Table 1 compares only those
    data = archive()
    ablation = [
        dataclasses.replace(
            r, key=f"dir-{r.key}", method="sgg-dir", prior="pretrain (an older corpus)"
        )
        for r in data.runs
        if r.method == "sgg"
    ]
    data = BenchData(data.bench_dir, [*data.runs, *ablation], {}, [], [])
    sanity = check(data)
    (clash,) = sanity.clashes  # the section still says the condition mixes priors
    assert clash.priors["sgg-dir"] == ("pretrain (an older corpus)",)
    assert (
        len(sanity.failures("directional_alignment")) == 36
    )  # with no claim named, every arm's run
    assert status(data, ALIGN)[0] == REPRODUCED
    # one baseline run on the older prior: the claim's own runs clash, so it has no verdict
    old = [
        dataclasses.replace(r, prior="pretrain (an older corpus)") if r.key == "lora-cb-3" else r
        for r in data.runs
    ]
    verdict, evidence = status(BenchData(data.bench_dir, old, {}, [], []), ALIGN)
    assert verdict == FAILED_SANITY and PRIORS in evidence


def test_each_condition_keeps_its_own_verdict_and_reason():
    """At 32 shots the arms' alignments clash (a sanity failure); at 16 the baselines measured
    none (not testable: no baseline records it). Each condition is its own row with its own reason:
    one merged row once lent the 32-shot failure to the 16-shot condition and kept one reason."""
    clash = archive({(t, s): {"prior": "ema:0.9"} for t in TASKS for s in SEEDS})
    unmeasured = [
        dataclasses.replace(
            r,
            key=f"{r.key}-16",
            shots=16,
            dynamics={k: v for k, v in r.dynamics.items() if k != "directional_alignment"}
            if r.method != "sgg"
            else r.dynamics,
        )
        for r in archive().runs
    ]
    data = BenchData(Path("results"), [*clash.runs, *unmeasured], {}, [], [])
    rows = {c.where: c for c in evaluate_claims(data) if c.claim == ALIGN}
    assert set(rows) == {"tiny, 16 shots", WHERE}
    assert rows[WHERE].status == FAILED_SANITY and PRIORS in rows[WHERE].evidence
    sixteen = rows["tiny, 16 shots"]
    assert sixteen.status == NOT_TESTABLE and "records directional_alignment" in sixteen.evidence
    assert status(data, ACCURACY)[0] == REPRODUCED
    # the verdict table says in a few words why the 16-shot condition has no verdict
    _, blocks = build_report(data)
    (summary,) = [b for b in section(blocks, "Verdicts") if isinstance(b, Table)]
    (row,) = [r for r in summary.rows if r[1] == ALIGN and r[2] == "tiny, 16 shots"]
    assert row[4] == "no run of full, adapter, lora, prompt records directional_alignment"


def test_one_table_shows_alignment_against_one_stated_prior():
    data = archive({(t, s): {"prior": "ema:0.9"} for t in TASKS for s in SEEDS})
    md = to_markdown(*build_report(data))
    results = md.split("## Results")[1].split("\n## ")[0]
    header = next(line for line in results.splitlines() if line.startswith("| method |"))
    assert header.endswith("| directional alignment (vs pretrain) |")
    sgg = next(line for line in results.splitlines() if line.startswith("| sgg |"))
    lora = next(line for line in results.splitlines() if line.startswith("| lora |"))
    assert sgg.endswith("| other prior |") and not lora.endswith("| n/a |")
    assert "none for sgg (measured against ema:0.9, not comparable)" in results
    comparisons = md.split("## Paired comparisons")[1].split("\n## ")[0]
    assert "| sgg | lora | directional_alignment |" not in comparisons
    assert "| sgg | lora | accuracy |" in comparisons
    # with one prior for every arm, the comparison is there again
    md = to_markdown(*build_report(archive()))
    assert "| sgg | lora | directional_alignment |" in md


def test_the_report_opens_with_the_verdicts_and_the_figure_against_lora():
    data = archive({("cb", 2): {"ratio": 200.0}})
    title, blocks = build_report(data)
    assert blocks[0] == Heading("Verdicts")
    summary = blocks[1]
    assert isinstance(summary, Table) and summary.badge_column == 3
    assert summary.header[:4] == ("paper", "claim", "model", "verdict")
    assert {r[0] for r in summary.rows} == {"SGG", "OFA", "Spectral"}
    assert isinstance(blocks[2], Figure) and blocks[2].name == "accuracy-vs-lora"
    headings = [b.text for b in blocks if isinstance(b, Heading) and b.level == 2]
    assert headings[:3] == ["Verdicts", "Sanity checks", "Overview"]
    page = to_html(title, blocks)
    assert '<span class="badge badge-not-testable-failed-sanity-check">' in page
    assert '<span class="badge badge-reproduced">' not in page  # every SGG claim withheld
    # the headline: SGG minus the baseline it leads least (prompt), with its bootstrap interval
    clean = archive()
    _, blocks = build_report(clean)
    assert '<span class="badge badge-reproduced">' in to_html(title, blocks)
    table = blocks[1]
    assert isinstance(table, Table)
    row = next(r for r in table.rows if r[1] == ACCURACY)
    own = {(r.task, r.seed): r.metrics["accuracy"] for r in clean.runs if r.method == "sgg"}
    prompt = {(r.task, r.seed): r.metrics["accuracy"] for r in clean.runs if r.method == "prompt"}
    c = paired_compare(own, prompt)
    assert c is not None
    assert row[4] == (
        f"{100 * c.mean_diff:+.1f} pp [{100 * c.bootstrap.low:+.1f} pp, "
        f"{100 * c.bootstrap.high:+.1f} pp] vs prompt"
    )


def test_the_title_counts_many_grids_and_names_a_few():
    data = archive()
    few = BenchData(data.bench_dir, data.runs, {"a": {}, "b": {}}, [], [])
    assert build_report(few)[0] == "gradguide report: a, b"
    many = BenchData(data.bench_dir, data.runs, {n: {} for n in "abcdefg"}, [], [])
    n = len(data.runs)
    assert (
        build_report(many)[0] == f"gradguide report: {n} runs of 7 grids (listed under Provenance)"
    )


def test_the_verdicts_say_which_grids_were_reduced_from_their_presets():
    from gradguide.bench.spec import PRESETS_DIR, load_grid

    spec = load_grid("sgg-table1").to_dict()
    spec.update(
        name="g",
        source=str(PRESETS_DIR / "sgg-table1.yaml"),
        tasks=["rte", "cb"],
        seeds=[3, 2, 1],  # reordered, not reduced
    )
    spec["base"] = {**spec["base"], "eval_limit": 300}
    data = archive()
    data = BenchData(data.bench_dir, data.runs, {"g": spec}, [], [])
    _, blocks = build_report(data)
    part = section(blocks, "Verdicts")
    (cuts,) = [b for b in part if isinstance(b, BulletList)]
    assert cuts.items == (
        "g: tasks rte, cb (preset: boolq, cb, copa, multirc, rte, wic); "
        "base.eval_limit 300 (preset: 500)",
    )


def _write_bench(root: Path, records: list[dict[str, Any]], source: str) -> Path:
    with Store(root) as store:
        store.save_grid("g", {"description": "tiny", "source": source})
        for i, record in enumerate(records):
            rel = f"runs/k{i}/run"
            (root / rel).mkdir(parents=True)
            (root / rel / "record.json").write_text(json.dumps(record))
            store.add_run(row_from_record(f"k{i}", "g", {}, rel, record))
        store.add_failure("k99", "g", "sgg seed 9", f"OSError: cannot read {root}/runs/k99/x.pt")
    return root


def _train_record(seed: int, guided: list[float], grad: list[float]) -> dict[str, Any]:
    config = {
        "model": "tiny",
        "task": "rte",
        "method": "lora",
        "shots": 8,
        "seed": seed,
        "optim": {"grad_clip": 1.0},
        "guidance": {"use": "sgg", "prior": "ema:0.9"},
    }
    return {
        "kind": "train",
        "method": "lora",
        "seed": seed,
        "config": config,
        "environment": {"git_commit": "abc", "packages": {"torch": "2.x"}},
        "task": {"name": "rte", "suite": "superglue"},
        "data": {"train_ids": ["a"], "eval_ids": ["b"], "eval_size": 1},
        "curves": {"loss": [1.0] * len(grad), "grad_norm": grad, "guided_norm": guided},
        "metrics": {"accuracy": 0.5},
        "dynamics": {"gradient_stability": 0.5},
        "guidance": {"use": ["sgg"], "prior": "ema:0.9"},
        "skipped_steps": [2] if seed == 2 else [],
    }


def test_a_non_finite_norm_in_a_record_fails_and_paths_stay_relative(tmp_path):
    grad = [1.0, 0.9, 0.8, 0.7]
    records = [
        _train_record(1, [1.01, 0.9, 0.81, 0.7], grad),
        _train_record(2, [1.0, float("nan"), float("inf"), 0.7], grad),
    ]
    bench = _write_bench(tmp_path / "results", records, str(tmp_path / "grids" / "g.yaml"))
    data = load_bench(bench)
    (bad,) = [r for r in data.runs if r.seed == 2]
    assert bad.nonfinite == {"guided_norm": 2} and bad.skipped_steps == 1
    checks = {c.run.seed: c for c in check(data).runs}
    assert checks[1].failed == () and checks[2].failed == (NONFINITE,)
    assert checks[2].nonfinite == 3  # two non-finite norms, one skipped step
    files = write_report(bench, tmp_path / "out")
    md = files.markdown.read_text()
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", files.html.read_text())
    for text in (md, page):
        assert str(tmp_path) not in text
        assert not re.search(r"(?:^|[\s(\['\"=:])/(?:[\w.+-]+/)+", text), text
    assert "(../grids/g.yaml)" in md  # the grid's source, relative to the results directory
    assert "cannot read runs/k99/x.pt" in md
    assert md.rstrip().splitlines()[-1].startswith("- torch: ")  # provenance comes last


def test_sanity_limits_are_checked_and_set_from_the_command_line(tmp_path, capsys):
    with pytest.raises(GradguideError, match="sanity-ratio"):
        Limits(ratio=1.0)
    with pytest.raises(GradguideError, match="sanity-penalty"):
        Limits(penalty=0.0)
    with pytest.raises(GradguideError, match="sanity-clip-scale"):
        Limits(clip_scale=1.0)
    grad = [1.0, 0.9, 0.8, 0.7]
    bench = _write_bench(tmp_path / "b", [_train_record(1, [20 * g for g in grad], grad)], "g.yaml")
    assert report_main([str(bench), "--sanity-ratio", "0.5"]) == 2
    assert "--sanity-ratio" in capsys.readouterr().err
    assert report_main([str(bench), "--out", str(tmp_path / "r1")]) == 0
    assert "**1 of 1 guided runs fail a check**" in (tmp_path / "r1" / "report.md").read_text()
    loose = ["--sanity-ratio", "30", "--sanity-penalty", "30", "--sanity-clip-scale", "0.01"]
    assert report_main([str(bench), "--out", str(tmp_path / "r2"), *loose]) == 0
    assert "All 1 guided runs pass every check." in (tmp_path / "r2" / "report.md").read_text()


def test_a_real_guided_run_is_checked_from_its_record(tmp_path):
    from gradguide.bench.grid import parse_grid
    from gradguide.bench.runner import run_grid

    spec = {
        "name": "tiny-sgg",
        "models": ["tiny-llama"],
        "tasks": ["demo-sentiment"],
        "methods": ["lora", "sgg"],
        "shots": [8],
        "seeds": [1],
        "base": {
            "eval_limit": 8,
            "optim": {"steps": 3, "batch_size": 4},
            "guidance": {"measure_alignment": False, "prior": "ema:0.9"},
        },
    }
    out = tmp_path / "bench"
    assert run_grid(parse_grid(spec, source="s.yaml"), out, workers=0, show_progress=False).ok
    data = load_bench(out)
    (c,) = check(data).runs  # the LoRA run is not guided
    assert c.run.method == "sgg" and c.steps == 3
    assert c.ratio is not None and 0 < c.ratio < math.inf and c.share is not None
    assert c.clip is not None and 0 < c.clip <= 1


def test_report_modules_import_no_circle():
    root = Path(__file__).parents[1] / "src" / "gradguide" / "report"
    names = {p.stem for p in root.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for p in root.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):  # TYPE_CHECKING imports count too
            if isinstance(node, ast.ImportFrom) and node.module:
                parts = node.module.split(".")
                if parts[:2] == ["gradguide", "report"]:
                    if len(parts) > 2:
                        deps.add(parts[2])
                    else:
                        deps.update(a.name for a in node.names if a.name in names)
        graph[p.stem] = deps - {p.stem}

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            n = todo.pop()
            if n not in seen and n in graph:
                seen.add(n)
                todo.extend(graph[n])
        return seen

    circles = sorted(n for n in graph if n != "__init__" and n in reach(n))
    assert circles == []


def test_withheld_claims_keep_their_numbers_only_as_evidence():
    clean = {(c.claim, c.where): c for c in evaluate_claims(archive())}
    withheld = [
        c
        for c in evaluate_claims(archive({("cb", 2): {"ratio": 200.0}}))
        if c.status == FAILED_SANITY
    ]
    assert {c.claim for c in withheld} == {ACCURACY, ALIGN, LOSS, STABILITY_CLAIM}
    for c in withheld:
        before = clean[(c.claim, c.where)]
        assert before.status in (REPRODUCED, NOT_REPRODUCED) and before.runs == c.runs
        assert c.evidence.endswith("Numbers, not a verdict: " + before.evidence)
        assert before.headline and not c.headline


def test_pretrain_priors_from_different_corpora_are_different_priors():
    """A pretrain prior is named with its corpus: old (BoolQ val) and new (train32) runs clash."""
    from gradguide.report.data import prior_label

    old = prior_label({"prior": "pretrain"})
    new = prior_label(
        {
            "prior": "pretrain",
            "prior_made_from": {"corpus": {"file": "superglue/BoolQ/train32.jsonl"}},
        }
    )
    assert old != new and new == "pretrain (superglue/BoolQ/train32.jsonl)"
    assert "before the corpus was recorded" in str(old)
    assert prior_label({"prior": "ema:0.9"}) == "ema:0.9" and prior_label({}) is None


def test_each_results_table_shows_the_majority_class_beside_the_methods():
    """A method below the majority class is read against that floor. Catches the row missing,
    a task's value taken from another task, and an average over tasks that lack one."""
    import dataclasses

    floors = {"rte": 0.527, "cb": 0.5}
    base = archive()
    runs = [dataclasses.replace(r, eval_majority=floors[r.task]) for r in base.runs]
    md = to_markdown(*build_report(dataclasses.replace(base, runs=runs)))
    results = md.split("## Results")[1].split("\n## ")[0]
    header = next(line for line in results.splitlines() if line.startswith("| method |"))
    row = next(line for line in results.splitlines() if line.startswith("| majority class |"))
    cells = dict(zip(header.split("|")[2:], row.split("|")[2:], strict=False))
    assert cells[" rte "].strip() == "52.7" and cells[" cb "].strip() == "50.0"
    assert cells[" avg "].strip() == "51.4"
    # runs that did not record it (older records): no row, no claim about a floor
    md = to_markdown(*build_report(base))
    assert "| majority class |" not in md.split("## Results")[1]


def test_records_that_predate_the_majority_class_get_it_from_the_task_data():
    """Catches older archived runs shown without their floor, a floor taken from the whole split
    rather than the ids the run scored, and a guess where an id is not in the data."""
    from gradguide.report.majority import majority_of
    from gradguide.tasks import get_task

    xs = get_task("demo-sentiment").load("test", None)
    ones = [x.id for x in xs if x.gold == 1]
    zeros = [x.id for x in xs if x.gold == 0]
    assert majority_of("demo-sentiment", "test", ones[:3] + zeros[:1]) == pytest.approx(0.75)
    assert majority_of("demo-sentiment", "test", [*ones[:3], "test:99999"]) is None
    assert majority_of("no-such-task", "test", ones[:3]) is None


def test_a_run_that_answers_one_label_is_listed_with_its_share():
    from gradguide.report.one_label import one_label

    rng = random.Random(0)
    run = guided_run("lora", "rte", 1, rng)
    # RTE-like: 131 of 277 gold are label 0; the run answers 0 for 270 of them
    lopsided = dataclasses.replace(run, label_counts={"predicted": (270, 7), "gold": (131, 146)})
    spread = dataclasses.replace(
        run, key="spread", label_counts={"predicted": (140, 137), "gold": (131, 146)}
    )
    skewed_set = dataclasses.replace(
        run, key="skewed", label_counts={"predicted": (275, 2), "gold": (270, 7)}
    )
    found = one_label(lopsided)
    assert found is not None and found.label == 0
    assert found.share == pytest.approx(270 / 277) and found.gold_share == pytest.approx(131 / 277)
    assert one_label(spread) is None and one_label(skewed_set) is None and one_label(run) is None
    data = BenchData(Path("results"), [lopsided, spread, skewed_set, run], {}, [], [])
    _, blocks = build_report(data)
    text = to_markdown("t", section(blocks, "One-label predictors"))
    assert "3 of 4 runs record their answers per label" in text
    assert "**1 are**: lora on tiny, rte (1 of 3 runs)" in text
    assert "97.5%" in text and "47.3%" in text and "spread" not in text
