"""The `gradguide train` command line on the tiny model and the demo task, shared by the tests."""

from __future__ import annotations


def tiny_train(*extra: str, shots: int = 8, steps: int = 3, batch_size: int = 4) -> list[str]:
    """``train`` on tiny-llama / demo-sentiment with ``extra`` flags (a later flag wins)."""
    return [
        "train",
        "--model",
        "tiny-llama",
        "--task",
        "demo-sentiment",
        "--shots",
        str(shots),
        "--steps",
        str(steps),
        "--batch-size",
        str(batch_size),
        *extra,
    ]
