"""Label new examples with a trained run (``gradguide predict RUN_DIR --input file.jsonl``).

Input records need the fields of the run's prompt template (e.g. ``text`` for SST-2 or a user task
with one text field); a label field, if present, is ignored. Tasks whose examples bring their own
candidates (COPA, MultiRC) are not supported here: they have no fixed label set to predict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradguide.errors import GradguideError
from gradguide.scoring import build_prefix, score_dataset
from gradguide.tasks.base import Instance
from gradguide.tasks.generic import input_text, render
from gradguide.tasks.readers import read_records
from gradguide.trained import load_trained


def predict(
    run_dir: str | Path,
    input_path: str | Path,
    *,
    show_progress: bool = False,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """One prediction per input record: its line, the predicted label and every label's score
    (computed on ``device``; None: the device setting the run was trained with)."""
    run = load_trained(run_dir, device)
    task = run.task
    if not getattr(task, "uses_verbalizer", True):
        raise GradguideError(
            f"predict needs a task with a fixed label set; {task.name} takes its candidates "
            "from each example"
        )
    path = Path(input_path)
    words = tuple(task.verbalizer[label] for label in task.labels)
    lines, instances = [], []
    for line, record in read_records(path):
        prompt = render(task.template, record, path, line)
        text = input_text(task.template, record, path, line)
        instances.append(
            Instance(
                id=f"input:{line}", prompt=prompt, candidates=words, gold=0, label="", text=text
            )
        )
        lines.append(line)
    if not instances:
        raise GradguideError("no records to predict", file=path)
    scored = score_dataset(run.lm, instances, build_prefix(run.demonstrations), run.config.scoring)
    return [
        {
            "line": line,
            "prediction": task.labels[p],
            "scores": dict(zip(task.labels, s, strict=True)),
        }
        for line, p, s in zip(lines, scored.predictions, scored.scores, strict=True)
    ]
