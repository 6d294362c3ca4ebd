"""The one generic task: a template and a verbalizer applied to the records of a file.

A task is a small spec (files per split, a reader, a row builder, a template, a verbalizer); the
row builder turns one record into one or more rows (MultiRC: one per answer option; COPA: rows that
bring their own candidates), and TemplateTask turns rows into Instances (DESIGN.md, "Tasks produce
candidates"). Adding a task is one TemplateTask entry in a suite module.
"""

from __future__ import annotations

import dataclasses
import random
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradguide.errors import GradguideError
from gradguide.tasks.base import Instance
from gradguide.tasks.dataroot import HOW_TO_PROVIDE, resolve_data_root
from gradguide.tasks.readers import Record

Located = tuple[int, Record]
Reader = Callable[[Path], Iterable[Located]]
Selector = Callable[[str, list[Located], Path], list[Located]]
Prepare = Callable[[Record, Path, int], Record]

_FORMATTER = string.Formatter()


@dataclass
class Row:
    """One decision read from a record: template fields, label, and optionally own candidates."""

    key: str
    fields: Mapping[str, Any]
    label: str
    label_field: str = "label"
    group: str | None = None
    candidates: tuple[str, ...] | None = None


RowBuilder = Callable[[Record, Path, int], list[Row]]


def require(
    record: Mapping[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    path: Path,
    line: int,
    *,
    where: str = "",
) -> Any:
    """Return ``record[name]`` checked against ``kind``; missing or wrong type: GradguideError."""
    shown = f"{where}.{name}" if where else name
    if name not in record:
        raise GradguideError("missing field", file=path, line=line, field=shown)
    value = record[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    wrong_bool = isinstance(value, bool) and bool not in kinds
    if not isinstance(value, kinds) or wrong_bool:
        expected = " or ".join(_type_name(k) for k in kinds)
        raise GradguideError(
            f"expected {expected}, found {_type_name(type(value))}",
            file=path,
            line=line,
            field=shown,
        )
    return value


def _type_name(kind: type) -> str:
    """A JSON-flavoured name for a Python type, for messages."""
    names = {
        str: "text",
        int: "integer",
        bool: "true/false",
        float: "number",
        list: "list",
        dict: "object",
        type(None): "null",
    }
    return names.get(kind, kind.__name__)


def label_text(value: Any, path: Path, line: int, name: str) -> str:
    """A label value as the string the task's labels use (JSON true → "True", 1 → "1")."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | str):
        text = str(value)
        if not text.strip():
            raise GradguideError("empty label", file=path, line=line, field=name)
        return text
    raise GradguideError(
        f"expected a text, integer or true/false label, found {_type_name(type(value))}",
        file=path,
        line=line,
        field=name,
    )


def template_fields(template: str) -> tuple[str, ...]:
    """The field names a template uses, in order; a malformed template is a GradguideError."""
    if not isinstance(template, str):
        raise GradguideError(f"the template must be text, got {type(template).__name__}")
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as err:
        raise GradguideError(f"malformed template {template!r}: {err}") from None
    names: list[str] = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name or name.isdigit():
            raise GradguideError(
                f"template {template!r} has a positional placeholder '{{{name}}}'; name a field, "
                "e.g. {text}"
            )
        if spec or conversion:
            raise GradguideError(
                f"template {template!r}: placeholder '{{{name}}}' may not carry a format spec or "
                "conversion"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise GradguideError(f"template {template!r} uses no field; write e.g. '{{text}}\\nLabel:'")
    return tuple(names)


def render(template: str, fields: Mapping[str, Any], path: Path, line: int) -> str:
    """Fill a template with stripped text fields (looked up by literal name, never evaluated)."""
    parts: list[str] = []
    for literal, name, _spec, _conversion in _FORMATTER.parse(template):
        parts.append(literal)
        if name is not None:
            parts.append(require(fields, name, str, path, line).strip())
    return "".join(parts)


def input_text(template: str, fields: Mapping[str, Any], path: Path, line: int) -> str:
    """The template's fields alone, stripped, one per line: the example without its prompt."""
    names = template_fields(template)
    return "\n".join(require(fields, name, str, path, line).strip() for name in names)


def record_rows(
    *,
    label_field: str = "label",
    id_field: str | None = None,
    prepare: Prepare | None = None,
) -> RowBuilder:
    """Row builder for one-decision-per-record tasks; ids from ``id_field`` or the line number."""

    def build(record: Record, path: Path, line: int) -> list[Row]:
        fields = prepare(record, path, line) if prepare is not None else record
        if id_field is None:
            key = str(line)
        else:
            key = str(require(record, id_field, (int, str), path, line))
        label = label_text(
            require(fields, label_field, (str, int, bool), path, line), path, line, label_field
        )
        return [Row(key=key, fields=fields, label=label, label_field=label_field)]

    return build


def rename(mapping: Mapping[str, str], clean: Callable[[str], str] | None = None) -> Prepare:
    """A prepare step renaming fields (file column → template field), optionally cleaning text."""

    def prepare(record: Record, path: Path, line: int) -> Record:
        out = dict(record)
        for source, target in mapping.items():
            value = require(record, source, str, path, line)
            out[target] = clean(value) if clean is not None else value
        return out

    return prepare


def seeded_partition(sizes: Mapping[str, int | None], seed: int = 0) -> Selector:
    """Split one file's records into named splits: Random(seed) shuffle of indices, then slices.

    ``sizes`` is ordered; ``None`` means "all the rest". Records keep file order within a split.
    """

    def select(split: str, records: list[Located], path: Path) -> list[Located]:
        order = list(range(len(records)))
        random.Random(seed).shuffle(order)
        start = 0
        for name, size in sizes.items():
            stop = len(order) if size is None else min(start + size, len(order))
            if name == split:
                return [records[i] for i in sorted(order[start:stop])]
            start = stop
        return []

    return select


def split_field(name: str = "split") -> Selector:
    """Keep the records whose ``name`` field equals the split (one file holding every split)."""

    def select(split: str, records: list[Located], path: Path) -> list[Located]:
        return [
            (line, rec) for line, rec in records if require(rec, name, str, path, line) == split
        ]

    return select


def _short_list(items: Sequence[str], limit: int = 12) -> str:
    """Comma-joined items, cut after ``limit`` with a count of the rest."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, … ({len(items) - limit} more)"


@dataclass
class TemplateTask:
    """A task defined by files, a reader, a row builder, a template and a verbalizer.

    ``split_files`` maps each split to a path relative to the data root (or to ``base_dir`` for
    data shipped with the package; absolute paths, as user tasks have, are used as they are).
    ``fields`` lists the template fields a row offers, so a custom template is checked when set.
    ``uses_verbalizer`` is False where rows bring their own candidates (COPA).
    """

    name: str
    suite: str
    description: str
    labels: tuple[str, ...]
    template: str
    verbalizer: Mapping[str, str]
    split_files: Mapping[str, str]
    read: Reader
    train_split: str
    eval_split: str
    fields: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ("accuracy",)
    rows: RowBuilder = field(default_factory=record_rows)
    select: Selector | None = None
    base_dir: Path | None = None
    uses_verbalizer: bool = True

    def __post_init__(self) -> None:
        """Validate the prompting so a bad custom template or verbalizer fails at once."""
        used = template_fields(self.template)
        if self.fields:
            unknown = [name for name in used if name not in self.fields]
            if unknown:
                raise GradguideError(
                    f"task {self.name}: template field(s) {', '.join(unknown)} unknown; available: "
                    f"{', '.join(self.fields)}"
                )
        # YAML and JSON configs may give label keys as numbers or booleans: compare them as text.
        self.verbalizer = {_key_text(key): word for key, word in self.verbalizer.items()}
        if self.uses_verbalizer:
            check_verbalizer(self.name, self.labels, self.verbalizer)
        elif self.verbalizer:
            raise GradguideError(
                f"task {self.name} takes its candidates from each example; it has no verbalizer"
            )
        for split in (self.train_split, self.eval_split):
            if split not in self.split_files:
                raise GradguideError(f"task {self.name}: default split {split!r} has no file")

    @property
    def splits(self) -> tuple[str, ...]:
        """Every split this task can load."""
        return tuple(self.split_files)

    def with_prompting(
        self, template: str | None = None, verbalizer: Mapping[str, str] | None = None
    ) -> TemplateTask:
        """A copy with another template and/or verbalizer (validated)."""
        return dataclasses.replace(
            self,
            template=self.template if template is None else template,
            verbalizer=self.verbalizer if verbalizer is None else verbalizer,
        )

    def _root(self, data_root: Path | str | None) -> Path | None:
        """The folder the split files are relative to."""
        if self.base_dir is not None:
            return self.base_dir
        if data_root is not None:
            return Path(data_root)
        return resolve_data_root()

    def _needs_root(self) -> bool:
        """Whether any split file is relative to the data root."""
        return any(not Path(rel).is_absolute() for rel in self.split_files.values())

    def files(self, data_root: Path | None = None) -> dict[str, Path]:
        """Path of every split (relative paths when no data root can be found)."""
        root = self._root(data_root) if self._needs_root() else None
        return {
            split: (root / rel if root else Path(rel)) for split, rel in self.split_files.items()
        }

    def path(self, split: str, data_root: Path | None = None) -> Path:
        """The file of one split; a missing split, root or file is a GradguideError saying why."""
        if split not in self.split_files:
            raise GradguideError(
                f"task {self.name} has no split {split!r}; splits: {', '.join(self.split_files)}"
            )
        rel = self.split_files[split]
        if Path(rel).is_absolute():
            if not Path(rel).is_file():
                raise GradguideError(f"task {self.name}: split {split!r} file not found", file=rel)
            return Path(rel)
        root = self._root(data_root)
        if root is None:
            raise GradguideError(
                f"task {self.name} reads {rel} under a data root, and none was found; "
                + HOW_TO_PROVIDE
            )
        file = root / rel
        if not file.is_file():
            raise GradguideError(
                f"task {self.name}: {rel} not found under the data root {root}; " + HOW_TO_PROVIDE
            )
        return file

    def load(self, split: str, data_root: Path | None = None) -> list[Instance]:
        """Read one split and build its instances; bad input raises GradguideError."""
        file = self.path(split, data_root)
        records = list(self.read(file))
        if self.select is not None:
            records = self.select(split, records, file)
        if not records:
            raise GradguideError(f"no records for split {split!r}", file=file)
        index = {label: i for i, label in enumerate(self.labels)}
        completions = tuple(self.verbalizer.get(label, "") for label in self.labels)
        instances: list[Instance] = []
        seen: dict[str, int] = {}
        for line, record in records:
            for row in self.rows(record, file, line):
                gold = index.get(row.label)
                if gold is None:
                    raise GradguideError(
                        f"unknown label {row.label!r}; {self.name} labels are "
                        f"{_short_list(self.labels)}",
                        file=file,
                        line=line,
                        field=row.label_field,
                    )
                ident = f"{split}:{row.key}"
                if ident in seen:
                    raise GradguideError(
                        f"duplicate id {ident!r} (first on line {seen[ident]})",
                        file=file,
                        line=line,
                    )
                seen[ident] = line
                candidates = row.candidates if row.candidates is not None else completions
                if not self.uses_verbalizer and row.candidates is None:
                    raise GradguideError(
                        f"task {self.name}: the row builder gave no candidates",
                        file=file,
                        line=line,
                    )
                instances.append(
                    Instance(
                        id=ident,
                        prompt=render(self.template, row.fields, file, line),
                        candidates=candidates,
                        gold=gold,
                        label=row.label,
                        group=row.group,
                        text=input_text(self.template, row.fields, file, line),
                    )
                )
        if not instances:
            raise GradguideError(f"no examples for split {split!r}", file=file)
        return instances


def _key_text(key: object) -> str:
    """A verbalizer key as label text (1 → "1", True → "True")."""
    return key if isinstance(key, str) else str(key)


def check_verbalizer(name: str, labels: Sequence[str], verbalizer: Mapping[str, str]) -> None:
    """A verbalizer must give every label one distinct, non-empty completion and nothing else."""
    missing = [label for label in labels if label not in verbalizer]
    if missing:
        raise GradguideError(
            f"task {name}: the verbalizer has no completion for label(s) {_short_list(missing)}"
        )
    extra = [str(key) for key in verbalizer if key not in labels]
    if extra:
        raise GradguideError(
            f"task {name}: the verbalizer names unknown label(s) {_short_list(extra)}; labels are "
            f"{_short_list(list(labels))}"
        )
    words: dict[str, str] = {}
    for label in labels:
        word = verbalizer[label]
        if not isinstance(word, str) or not word.strip():
            raise GradguideError(f"task {name}: label {label!r} needs a non-empty completion")
        if word in words:
            raise GradguideError(
                f"task {name}: labels {words[word]!r} and {label!r} share the completion {word!r}"
            )
        words[word] = label


def suite_task(
    suite: str,
    name: str,
    description: str,
    labels: tuple[str, ...],
    template: str,
    verbalizer: Mapping[str, str],
    fields: tuple[str, ...],
    splits: Mapping[str, str],
    read: Reader,
    *,
    eval_split: str = "test",
    rows: RowBuilder | None = None,
    select: Selector | None = None,
    metrics: tuple[str, ...] = ("accuracy",),
) -> TemplateTask:
    """One entry of a suite: files under <suite>/<name>/, train split ``train``."""
    return TemplateTask(
        name=name,
        suite=suite,
        description=description,
        labels=labels,
        template=template,
        verbalizer=verbalizer,
        split_files={split: f"{suite}/{name}/{file}" for split, file in splits.items()},
        read=read,
        train_split="train",
        eval_split=eval_split,
        fields=fields,
        rows=rows if rows is not None else record_rows(),
        select=select,
        metrics=metrics,
    )
