"""The training loop: end to end on a tiny model, determinism, kill-and-resume, bad configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import tiny_config

from gradguide import objective as objective_mod
from gradguide import train as train_mod
from gradguide.bench.keys import run_key
from gradguide.cli import main
from gradguide.errors import GradguideError
from gradguide.models import load_model
from gradguide.predict import predict
from gradguide.train import OptimConfig, TrainConfig, data_order, reevaluate, train
from gradguide.train_data import prepare_data


def tiny(tmp_path: Path, **kw) -> TrainConfig:
    kw = {
        "method": "lora",
        "optim": OptimConfig(steps=6, batch_size=4, lr=5e-3),
        **kw,
    }
    return tiny_config(tmp_path, **kw)


def test_lora_run_writes_record_curves_and_adapter(tmp_path):
    r = train(tiny(tmp_path), show_progress=False)
    rec = json.loads((r.run_dir / "record.json").read_text())
    assert (
        rec["steps"] == 6
        and len(rec["curves"]["loss"]) == 6
        and len(rec["curves"]["grad_norm"]) == 6
    )
    assert rec["trainable_parameters"] > 0 and rec["skipped_steps"] == []
    assert len(rec["data"]["train_ids"]) == 8 and rec["config"]["optim"]["lr"] == 5e-3
    assert set(rec["metrics"]) == {"accuracy"}
    # the evaluation set's majority class, the floor its accuracy is read against (demo task: a
    # balanced 2-label set would give 0.5 exactly, so count from the very instances scored)
    golds = [x.gold for x in prepare_data(tiny(tmp_path)).eval]
    assert len(golds) == rec["data"]["eval_size"]
    assert rec["data"]["eval_majority"] == max(map(golds.count, set(golds))) / len(golds)
    # its answers, one line per scored example, and their counts per label in the record
    answers = [json.loads(x) for x in (r.run_dir / "predictions.jsonl").read_text().splitlines()]
    assert [a["gold"] for a in answers] == golds
    picked = [a["prediction"] for a in answers]
    assert rec["metrics"]["accuracy"] == sum(
        p == g for p, g in zip(picked, golds, strict=True)
    ) / len(golds)
    assert rec["predictions"] == {
        "predicted": [picked.count(i) for i in range(2)],
        "gold": [golds.count(i) for i in range(2)],
    }
    assert "label_counts" not in rec["scoring"]
    assert (r.run_dir / "adapter" / "adapter_config.json").exists()
    lines = (r.run_dir / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(6))
    assert rec["curves"]["loss"][-1] < rec["curves"]["loss"][0]


def test_two_runs_give_identical_numbers(tmp_path):
    a = train(tiny(tmp_path / "a", method="full"), show_progress=False)
    b = train(tiny(tmp_path / "b", method="full"), show_progress=False)
    assert a.record["curves"]["loss"] == b.record["curves"]["loss"]
    assert a.record["curves"]["grad_norm"] == b.record["curves"]["grad_norm"]
    assert a.metrics == b.metrics and a.record["data"] == b.record["data"]


def test_untrained_methods_share_the_record_shape(tmp_path):
    zs = train(tiny(tmp_path, method="zero-shot"), show_progress=False)
    icl = train(tiny(tmp_path, method="icl", icl_shots=2), show_progress=False)
    assert zs.record["steps"] == 0 and zs.record["trainable_parameters"] == 0
    assert len(icl.record["data"]["demonstration_ids"]) == 2
    assert set(icl.record["data"]["demonstration_ids"]) <= set(icl.record["data"]["train_ids"])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_peak_memory_is_the_runs_own_not_the_processs(tmp_path):
    from gradguide.record import peak_rss_mb

    big = torch.ones(2**30 // 4)  # 1 GiB, touched: the process's peak is now above it
    big.add_(1.0)
    before = peak_rss_mb()
    del big
    rec = train(tiny(tmp_path), show_progress=False).record
    assert rec["peak_rss_scope"] == "run"
    assert 0 < rec["timings"]["peak_rss_mb"] < before - 600


def test_data_order_is_a_seeded_permutation_per_epoch():
    order = data_order(10, 4, 9, seed=3)
    assert order == data_order(10, 4, 9, seed=3) and order != data_order(10, 4, 9, seed=4)
    first_epoch = [i for b in order[:3] for i in b]
    assert sorted(first_epoch) == list(range(10))


def test_reevaluate_and_predict_a_finished_run(tmp_path):
    r = train(tiny(tmp_path), show_progress=False)
    assert reevaluate(r.run_dir, show_progress=False) == r.metrics
    inp = tmp_path / "new.jsonl"
    inp.write_text('{"text": "wonderful, I loved it"}\n{"text": "broken on arrival"}\n')
    rows = predict(r.run_dir, inp)
    assert [x["line"] for x in rows] == [1, 2]
    labels = {"negative", "positive"}
    assert all(x["prediction"] in labels and set(x["scores"]) == labels for x in rows)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"review": "no text field"}\n')
    with pytest.raises(GradguideError) as e:
        predict(r.run_dir, bad)
    assert e.value.line == 1 and e.value.field == "text"


def test_non_finite_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    real = objective_mod.rank_loss
    calls = {"n": 0}

    def flaky(lm, batch, options):
        calls["n"] += 1
        loss = real(lm, batch, options)
        return loss * float("nan") if calls["n"] in (2, 3) else loss

    monkeypatch.setattr(objective_mod, "rank_loss", flaky)
    r = train(tiny(tmp_path), show_progress=False)
    assert r.record["skipped_steps"] == [1, 2]
    assert all(torch.isfinite(p).all() for p in r.adapted.trainable.values())
    calls["n"] = 0
    cfg = tiny(tmp_path, checkpoint_every=1)
    cfg.optim.max_skipped_steps = 1
    with pytest.raises(GradguideError, match="non-finite"):
        train(cfg, show_progress=False)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and not (p / "record.json").exists()]
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    # the last checkpoint (after the first, tolerated skip) is intact and loadable
    assert state["step"] == 2 and state["skipped"] == [1]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"method": "magic"}, None),
        ({"shots": 0}, "shots"),
        ({"optim": OptimConfig(lr=-1.0)}, "optim.lr"),
        ({"optim": OptimConfig(batch_size=0)}, "optim.batch_size"),
    ],
)
def test_bad_configs_are_clear_errors(tmp_path, overrides, field):
    with pytest.raises(GradguideError) as e:
        train(tiny(tmp_path, **overrides), show_progress=False)
    if field:
        assert e.value.field == field
    else:
        assert "unknown method" in str(e.value)
    assert not any(tmp_path.iterdir())  # nothing written for a rejected config


def test_cli_bad_config_exits_2(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--model",
                "tiny-llama",
                "--task",
                "demo-sentiment",
                "--lr",
                "-1",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "optim.lr" in capsys.readouterr().err


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gradguide", *args]


def test_kill_and_resume_reaches_the_uninterrupted_result(tmp_path):
    """SIGKILL real training processes at random steps (checkpoints every step, so some kills
    land mid-write), resume each, and compare with one uninterrupted run."""
    import random

    common = [
        "train",
        "--model",
        "tiny-llama",
        "--task",
        "demo-sentiment",
        "--method",
        "lora",
        "--shots",
        "16",
        "--batch-size",
        "4",
        "--lr",
        "5e-3",
        "--seed",
        "2",
        "--steps",
        "24",
        "--checkpoint-every",
        "1",
    ]
    full = subprocess.run(
        _cli(*common, "--out", str(tmp_path / "full")), capture_output=True, text=True
    )
    assert full.returncode == 0, full.stderr
    (full_dir,) = list((tmp_path / "full").iterdir())
    b = json.loads((full_dir / "record.json").read_text())
    rng = random.Random(7)
    outcomes = []
    for trial in range(3):
        target, delay = rng.randint(2, 18), rng.uniform(0.0, 0.05)
        out = tmp_path / f"killed{trial}"
        proc = subprocess.Popen(
            _cli(*common, "--out", str(out)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            states = list(out.glob("*/checkpoint/state.json"))
            try:
                if states and json.loads(states[0].read_text())["step"] >= target:
                    break
            except (ValueError, OSError):
                pass
            time.sleep(0.005)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        (run_dir,) = list(out.iterdir())
        if (run_dir / "record.json").exists():
            outcomes.append("finished before the kill")
            continue
        done_at_kill = json.loads((run_dir / "checkpoint" / "state.json").read_text())["step"]
        resumed = subprocess.run(
            _cli("train", "--resume", str(run_dir)), capture_output=True, text=True
        )
        assert resumed.returncode == 0, resumed.stderr
        a = json.loads((run_dir / "record.json").read_text())
        assert a["metrics"] == b["metrics"]
        assert a["curves"]["loss"] == b["curves"]["loss"]
        assert a["curves"]["grad_norm"] == b["curves"]["grad_norm"]
        assert a["timings"]["resumed_at_step"] == done_at_kill
        assert b["timings"]["resumed_at_step"] is None
        # the resumed run's wall time counts the training its killed session did
        assert a["timings"]["total_s"] >= a["timings"]["train_s"] + a["timings"]["eval_s"]
        log = (run_dir / "log.jsonl").read_text().splitlines()
        assert [json.loads(x)["step"] for x in log] == list(range(24))
        outcomes.append(f"killed after step {done_at_kill}, resumed exactly")
    print("kill/resume trials:", outcomes)  # shown with -s
    assert sum("resumed exactly" in o for o in outcomes) >= 2, outcomes


def test_a_finished_run_drops_its_checkpoint_unless_told_to_keep_it(tmp_path):
    # the checkpoint repeats the saved weights plus the optimiser's moments: a grid that kept one
    # per finished run filled a 250 GB disk (SetFit: 520 MB each) and failed the runs after it
    done = train(tiny(tmp_path / "drop", checkpoint_every=2), show_progress=False)
    assert not (done.run_dir / "checkpoint").exists()
    assert [p.name for p in done.run_dir.iterdir() if p.name.startswith(".")] == []
    assert (done.run_dir / "record.json").is_file()
    assert reevaluate(done.run_dir, show_progress=False) == done.metrics  # all a user needs
    kept = train(tiny(tmp_path / "keep", keep_checkpoint=True), show_progress=False)
    state = json.loads((kept.run_dir / "checkpoint" / "state.json").read_text())
    assert state["step"] == 6
    assert run_key(tiny(tmp_path, keep_checkpoint=True)) == run_key(tiny(tmp_path))


def test_damaged_checkpoint_is_refused(tmp_path):
    r = train(tiny(tmp_path, checkpoint_every=2, keep_checkpoint=True), show_progress=False)
    weights = r.run_dir / "checkpoint" / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(GradguideError, match="damaged"):
        train(train_mod.load_run_config(r.run_dir), resume=r.run_dir, show_progress=False)


class _L2Term:
    """A toy loss term: weight · Σ‖θ‖² over the trained parameters."""

    name = "toy-l2"

    def __init__(self, weight: float) -> None:
        self.weight, self.steps = weight, []

    def begin_step(self, step: int) -> None:
        self.steps.append(step)

    def loss(self, params):
        return self.weight * sum((p**2).sum() for p in params.values())

    def summary(self):
        return {"steps_seen": len(self.steps)}

    def close(self) -> None:
        self.closed = True


class _ZeroGrad:
    """A toy transform that cancels every gradient."""

    name = "toy-zero"

    def apply(self, params) -> None:
        for p in params.values():
            p.grad.zero_()

    def summary(self):
        return {}


@pytest.fixture
def toy_guidance(monkeypatch):
    from gradguide import guidance

    monkeypatch.setitem(guidance.GUIDANCE, "toy-l2", ("toy-l2",))
    monkeypatch.setitem(guidance.GUIDANCE, "toy-zero", ("toy-zero",))
    monkeypatch.setitem(guidance.LOSS_TERMS, "toy-l2", lambda ctx: _L2Term(0.5))
    monkeypatch.setitem(guidance.TRANSFORMS, "toy-zero", lambda ctx: _ZeroGrad())


def test_loss_terms_join_the_objective_and_are_recorded_apart(tmp_path, toy_guidance):
    plain = train(tiny(tmp_path / "p", method="full"), show_progress=False)
    cfg = tiny(tmp_path / "t", method="full")
    cfg.guidance.use = "toy-l2"
    toy = train(cfg, show_progress=False)
    curves = toy.record["curves"]
    # step 0 runs at the same parameters: same task loss, and the term's own value beside it
    assert curves["loss"][0] == plain.record["curves"]["loss"][0]
    assert len(curves["term_toy-l2"]) == 6 and curves["term_toy-l2"][0] > 0
    # the term's gradient was applied: the first gradient norm differs from the plain run's
    assert curves["grad_norm"][0] != plain.record["curves"]["grad_norm"][0]
    assert toy.record["guidance"]["term_summaries"] == {"toy-l2": {"steps_seen": 6}}


def test_gradient_transforms_edit_the_step(tmp_path, toy_guidance):
    cfg = tiny(tmp_path, method="layernorm")
    cfg.guidance.use = "toy-zero"
    lm = load_model("tiny-llama", seed=1)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters() if "norm" in n}
    r = train(cfg, show_progress=False)
    after = dict(r.adapted.model.named_parameters())
    assert before and all(torch.equal(before[n], after[n]) for n in before)
    assert r.record["guidance"]["transforms"] == ["toy-zero"]


def test_the_recorded_commit_is_the_one_the_process_started_from(monkeypatch):
    # a grid process keeps the code it imported; a commit made while it runs must not be recorded
    # as the code of its later runs
    from gradguide import record

    record._git_commit.cache_clear()
    first = record.environment()["git_commit"]

    def moved_on(*args, **kwargs):
        raise AssertionError("git read again after the first record")

    monkeypatch.setattr(record.subprocess, "run", moved_on)
    assert record.environment()["git_commit"] == first
