"""The step log of a training run: JSONL (and TensorBoard when asked), resume-aware."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gradguide.atomic import write_text_atomic
from gradguide.errors import GradguideError

LOG_NAME = "log.jsonl"


class StepLogger:
    """JSONL step log (plus TensorBoard when asked); on resume, lines past the checkpoint go."""

    def __init__(self, run_dir: Path, resume_step: int, tensorboard: bool) -> None:
        self.path = run_dir / LOG_NAME
        kept = []
        if resume_step and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] < resume_step:
                        kept.append(line)
                except (ValueError, KeyError):
                    break
        write_text_atomic(self.path, "".join(k + "\n" for k in kept))
        self.handle = self.path.open("a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise GradguideError(
                    "tensorboard logging needs the tensorboard package: pip install tensorboard"
                ) from None
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)

    def log(self, entry: dict[str, Any]) -> None:
        self.handle.write(json.dumps(entry) + "\n")
        self.handle.flush()
        if self.tb is not None:
            for k, v in entry.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, entry["step"])

    def close(self) -> None:
        self.handle.close()
        if self.tb is not None:
            self.tb.close()
