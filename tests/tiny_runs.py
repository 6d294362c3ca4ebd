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


def die_then_succeed(payload: dict[str, Any]) -> dict[str, Any]:
    """A pool run that kills its own worker the first ``payload["die"]`` times it is started.

    Each start is counted in ``payload["marks"]/<key>`` so a test can see which runs were charged.
    """
    import os
    import signal

    marks = Path(payload["marks"]) / payload["key"]
    with open(marks, "a") as f:
        f.write("x")
    if len(marks.read_text()) <= payload.get("die", 0):
        os.kill(os.getpid(), signal.SIGKILL)
    return {"key": payload["key"], "ok": True}
