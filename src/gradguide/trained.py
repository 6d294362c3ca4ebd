"""A finished (or killed) training run read back from its directory: config, model, re-evaluation.

A run directory holds ``config.json`` (written before training starts), the method's saved
``adapter/`` and, once finished, ``record.json``; resume, ``gradguide eval RUN`` and
``gradguide predict`` start from here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from gradguide.config import from_dict
from gradguide.errors import GradguideError
from gradguide.evaluate import evaluate_instances
from gradguide.methods import get_method
from gradguide.models import LoadedModel, load_configured
from gradguide.tasks.base import Instance, Task
from gradguide.train_config import TrainConfig
from gradguide.train_data import prepare_data

CONFIG_NAME = "config.json"
ADAPTER_NAME = "adapter"


def load_run_config(run_dir: Path) -> TrainConfig:
    """The configuration a run directory was started with (for resume, eval and predict)."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise GradguideError(
            "not a gradguide training run directory (no config.json)", file=run_dir
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GradguideError(f"cannot read the run's config: {e}", file=path) from None
    return from_dict(TrainConfig, data, source=str(path))


@dataclasses.dataclass
class TrainedRun:
    """A finished run loaded back: its config, task and the adapted model ready for scoring."""

    config: TrainConfig
    task: Task
    lm: LoadedModel
    demonstrations: list[Instance]
    record: dict[str, Any]


def load_trained(run_dir: str | Path, device: str | None = None) -> TrainedRun:
    """Rebuild a finished run's model (base model + saved adapter) for evaluation or prediction,
    on ``device`` (auto, cpu, cuda, cuda:N; None: the device setting the run was trained with)."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if device is not None:  # a run trained on a GPU, evaluated on another machine
        config = dataclasses.replace(config, device=device)
    record_path = run_dir / "record.json"
    if not record_path.is_file():
        raise GradguideError("run has not finished (no record.json); resume it first", file=run_dir)
    record = json.loads(record_path.read_text())
    method = get_method(config.method)
    lm = load_configured(config)
    if method.trains:
        lm = method.load(lm, run_dir / ADAPTER_NAME, config.method_options).as_lm(lm)
    lm.model.eval()
    setup = prepare_data(config)
    by_id = {x.id: x for x in setup.train}
    demos = [by_id[i] for i in record["data"]["demonstration_ids"]]
    return TrainedRun(config, setup.task, lm, demos, record)


def reevaluate(
    run_dir: str | Path, *, show_progress: bool = True, device: str | None = None
) -> dict[str, float]:
    """Evaluate a finished run again on its evaluation set (must match its record), on
    ``device`` (None: the run's own setting)."""
    run = load_trained(run_dir, device)
    setup = prepare_data(run.config)
    metrics, _, _ = evaluate_instances(
        run.lm,
        run.task,
        setup.eval,
        demonstrations=run.demonstrations,
        options=run.config.scoring,
        show_progress=show_progress,
    )
    return metrics
