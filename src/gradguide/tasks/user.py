"""Tasks over the user's own files: JSONL or CSV/TSV with one or two text fields and a label.

Splits are ``train`` (the training file) and ``eval`` (the evaluation file, or the training file
again when none is given). Labels are the label-word keys if given, else the sorted distinct
labels of the training file. Files must be UTF-8. Ids are ``"<split>:<line>"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

from gradguide.errors import GradguideError
from gradguide.tasks.generic import (
    TemplateTask,
    label_text,
    record_rows,
    require,
    template_fields,
)
from gradguide.tasks.readers import read_records

#: User files are UTF-8; a leading byte-order mark (as spreadsheet programs write) is accepted.
USER_ENCODING = "utf-8-sig"

_FORBIDDEN_IN_NAMES = "{}:!"


def default_template(text_fields: Sequence[str]) -> str:
    """One placeholder per text field, one per line, then ``Label:``."""
    return "".join(f"{{{name}}}\n" for name in text_fields) + "Label:"


def _file(path: Path | str, role: str) -> Path:
    """An existing user file, or a GradguideError saying which one is missing."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise GradguideError(f"{role} file not found", file=file)
    return file


def _train_labels(path: Path, label_field: str) -> tuple[str, ...]:
    """The sorted distinct label values (as text) of a training file."""
    labels: set[str] = set()
    for line, record in read_records(path, encoding=USER_ENCODING):
        value = require(record, label_field, (str, int, bool), path, line)
        labels.add(label_text(value, path, line, label_field))
    return tuple(sorted(labels))


def user_task(
    train: Path | str,
    eval: Path | str | None = None,
    *,
    text_fields: Sequence[str] = ("text",),
    label_field: str = "label",
    label_words: Mapping[str, str] | None = None,
    template: str | None = None,
    name: str | None = None,
) -> TemplateTask:
    """A task over the user's JSONL/CSV/TSV files, ready to load splits ``train`` and ``eval``."""
    train_file = _file(train, "training")
    eval_file = _file(eval, "evaluation") if eval is not None else train_file
    fields = tuple(text_fields)
    if isinstance(text_fields, str) or not fields:
        raise GradguideError("text_fields must name one or more fields, e.g. ('text',)")
    for field_name in (*fields, label_field):
        if not field_name or any(ch in field_name for ch in _FORBIDDEN_IN_NAMES):
            raise GradguideError(
                f"field name {field_name!r} is empty or holds one of {_FORBIDDEN_IN_NAMES}"
            )
    if label_words is not None:
        labels = tuple(str(label) for label in label_words)
        verbalizer = {str(label): word for label, word in label_words.items()}
    else:
        labels = _train_labels(train_file, label_field)
        verbalizer = {label: " " + label for label in labels}
    if len(labels) < 2:
        raise GradguideError(
            f"a task needs at least two labels; found {len(labels)} ({', '.join(labels)})",
            file=train_file,
            field=label_field,
        )
    eval_note = (
        f"evaluation on {eval_file}"
        if eval is not None
        else "no evaluation file given: eval defaults to the training file"
    )
    return TemplateTask(
        name=name or train_file.stem,
        suite="user",
        description=(
            f"User task from {train_file} ({len(labels)} labels, text field(s) "
            f"{', '.join(fields)}, label field {label_field}); {eval_note}."
        ),
        labels=labels,
        template=template if template is not None else default_template(fields),
        verbalizer=verbalizer,
        split_files={"train": str(train_file.resolve()), "eval": str(eval_file.resolve())},
        read=partial(read_records, encoding=USER_ENCODING),
        train_split="train",
        eval_split="eval",
        fields=fields if template is None else template_fields(template),
        rows=record_rows(label_field=label_field),
    )
