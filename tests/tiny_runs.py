"""Training configs on the tiny model and the demo task, shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradguide.train import TrainConfig


def tiny_config(tmp_path: Path, **kw: Any) -> TrainConfig:
    """tiny-llama on demo-sentiment, 8 shots, seed 1, writing under ``tmp_path``; ``kw`` wins."""
    base: dict[str, Any] = dict(
        model="tiny-llama", task="demo-sentiment", shots=8, seed=1, out=str(tmp_path)
    )
    return TrainConfig(**{**base, **kw})
