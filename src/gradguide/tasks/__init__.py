"""Tasks: the registry of built-in tasks, user-file tasks, data-root lookup and k-shot sampling.

Every task turns its files into Instances of (prompt, completion) candidates with a gold index
(DESIGN.md, "Tasks produce candidates"). Adding a task is one TemplateTask entry in a suite module
(superglue, classification, domain, demo); the registry below picks it up.
"""

from __future__ import annotations

from collections.abc import Mapping

from gradguide.errors import GradguideError
from gradguide.tasks import classification, demo, domain, superglue
from gradguide.tasks.base import Instance, Prompting, Task
from gradguide.tasks.dataroot import DATA_ENV, resolve_data_root
from gradguide.tasks.generic import TemplateTask
from gradguide.tasks.readers import MAX_FIELD_CHARS
from gradguide.tasks.sampling import sample_demonstrations, sample_k_shot
from gradguide.tasks.user import user_task

__all__ = [
    "DATA_ENV",
    "MAX_FIELD_CHARS",
    "Instance",
    "Prompting",
    "Task",
    "TemplateTask",
    "get_task",
    "list_tasks",
    "resolve_data_root",
    "sample_demonstrations",
    "sample_k_shot",
    "user_task",
]

_TASKS: tuple[TemplateTask, ...] = (
    *superglue.TASKS,
    *classification.TASKS,
    *domain.TASKS,
    demo.TASK,
)


def _key(name: str) -> str:
    """Names match case-insensitively, with '-' and '_' interchangeable."""
    return name.strip().lower().replace("-", "_")


_REGISTRY: dict[str, TemplateTask] = {_key(task.name): task for task in _TASKS}
if len(_REGISTRY) != len(_TASKS):
    raise RuntimeError("two built-in tasks share a name")


def list_tasks() -> list[Task]:
    """Every built-in task, suite by suite (SuperGLUE, classification, domain, demo)."""
    return list(_TASKS)


def get_task(
    name: str,
    *,
    template: str | None = None,
    verbalizer: Mapping[str, str] | None = None,
) -> Task:
    """The built-in task called ``name``, optionally with another template and/or verbalizer."""
    task = _REGISTRY.get(_key(name)) if isinstance(name, str) else None
    if task is None:
        known = ", ".join(t.name for t in _TASKS)
        raise GradguideError(
            f"unknown task {name!r}; known tasks: {known} (or a user file, see user_task)"
        )
    if template is None and verbalizer is None:
        return task
    return task.with_prompting(template=template, verbalizer=verbalizer)
