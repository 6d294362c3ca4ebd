"""Zero-shot and in-context learning: nothing is trained (the trainer skips training for them)."""

from __future__ import annotations

from pathlib import Path

from gradguide.methods.base import (
    Adapted,
    MethodOptions,
    freeze_all,
    publish_files,
    read_meta,
    write_meta,
)
from gradguide.models import LoadedModel


class NoTraining:
    """A method that trains nothing: the model is used as loaded (all parameters frozen)."""

    trains = False
    default_lr = 0.0
    default_guidance = ""
    role = "baseline"
    step_factor = 1.0

    def __init__(
        self, name: str, description: str, report_rank: int, eval_factor: float = 1.0
    ) -> None:
        self.name = name
        self.description = description
        self.report_rank = report_rank
        self.eval_factor = eval_factor

    def apply(self, lm: LoadedModel, options: MethodOptions) -> Adapted:
        """Return the model untouched (frozen) with no trainable parameter."""
        freeze_all(lm.model)
        return Adapted(model=lm.model, method=self.name, trainable={}, options=options)

    def save(self, adapted: Adapted, out_dir: Path, base_model: str) -> None:
        """Write only adapter_meta.json, so every run directory looks the same."""
        files = publish_files(out_dir, lambda tmp: None)
        write_meta(out_dir, adapted, base_model, files)

    def load(self, lm: LoadedModel, out_dir: Path, options: MethodOptions) -> Adapted:
        """Check the saved meta and return the base model untouched."""
        read_meta(out_dir, self.name, lm)
        return self.apply(lm, options)


ZERO_SHOT = NoTraining(
    "zero-shot", "zero-shot: the base model scores candidates, nothing trained", report_rank=10
)
#: Evaluation scores prompts that carry the demonstrations: about three times the work.
ICL = NoTraining(
    "icl",
    "in-context learning: demonstrations are prepended, nothing trained",
    report_rank=20,
    eval_factor=3.0,
)
