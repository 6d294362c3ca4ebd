"""Typed run configurations: dataclasses filled from a YAML file, then command-line overrides.

Unknown keys and wrongly typed values are errors naming the file and the field; every default
ends up in the run record, so a record alone says how its run was configured.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gradguide.errors import GradguideError
from gradguide.scoring import ScoringOptions

T = TypeVar("T")


@dataclasses.dataclass
class UserTaskOptions:
    """How to read a user's JSONL/CSV file when ``task`` is a path rather than a task name."""

    text_fields: str = "text"
    label_field: str = "label"
    eval_file: str | None = None
    label_words: dict[str, str] | None = None


@dataclasses.dataclass
class EvalConfig:
    """An evaluation run: zero-shot (``shots=0``) or in-context with ``shots`` demonstrations."""

    model: str = "smollm2-135m"
    task: str = "sst2"
    split: str | None = None
    limit: int | None = None
    shots: int = 0
    seed: int = 0
    data_dir: str | None = None
    cache_dir: str | None = None
    template: str | None = None
    verbalizer: dict[str, str] | None = None
    out: str = "runs"
    #: where the model runs (auto, cpu, cuda, cuda:N) and its weights' precision (fp32, bf16)
    device: str = "auto"
    dtype: str = "fp32"
    user_task: UserTaskOptions = dataclasses.field(default_factory=UserTaskOptions)
    scoring: ScoringOptions = dataclasses.field(default_factory=ScoringOptions)


def _check(value: Any, tp: Any, where: str, source: str | None) -> Any:
    """Coerce/validate ``value`` against a (simple) annotation, or raise a field-level error."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, where, source)
            except GradguideError as e:
                errors.append(e)
        raise errors[0] if errors else GradguideError("bad value", file=source, field=where)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise GradguideError(f"expected a mapping, got {value!r}", file=source, field=where)
        return from_dict(tp, value, source=source, prefix=where + ".")
    if origin is dict:
        if not isinstance(value, Mapping):
            raise GradguideError(f"expected a mapping, got {value!r}", file=source, field=where)
        return {
            str(k): _check(v, typing.get_args(tp)[1], f"{where}.{k}", source)
            for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise GradguideError(f"expected true/false, got {value!r}", file=source, field=where)
    if tp is int:
        if isinstance(value, bool):
            raise GradguideError(f"expected an integer, got {value!r}", file=source, field=where)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise GradguideError(f"expected an integer, got {value!r}", file=source, field=where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise GradguideError(f"expected a number, got {value!r}", file=source, field=where)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise GradguideError(f"expected a string, got {value!r}", file=source, field=where)
    return value


def from_dict(
    cls: type[T], data: Mapping[str, Any], *, source: str | None = None, prefix: str = ""
) -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise GradguideError(
            f"unknown setting; known: {', '.join(sorted(fields))}",
            file=source,
            field=prefix + str(unknown[0]),
        )
    kwargs = {k: _check(v, hints[k], prefix + k, source) for k, v in data.items()}
    return cls(**kwargs)


def nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys (``optim.lr``) as nested mappings."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, nested mappings merged key by key."""
    merged = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), Mapping):
            merged[k] = merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every parse problem into an error with file and line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GradguideError("config file not found", file=p) from None
    except UnicodeDecodeError as e:
        raise GradguideError(f"not UTF-8 text ({e.reason})", file=p) from None
    except OSError as e:
        raise GradguideError(f"cannot read config file: {e.strerror}", file=p) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise GradguideError(
            f"invalid YAML: {getattr(e, 'problem', e)}", file=p, line=line
        ) from None
    except RecursionError:
        raise GradguideError("invalid YAML: nested too deeply", file=p) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GradguideError("a config file must hold a mapping of settings", file=p)
    return data


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> T:
    """Defaults, then the YAML file (if any), then ``overrides`` (dotted keys: ``scoring.x``)."""
    data = read_yaml(path) if path is not None else {}
    if overrides:
        data = merge(data, nest({k: v for k, v in overrides.items() if v is not None}))
    return from_dict(cls, data, source=str(path) if path is not None else None)


def to_dict(config: Any) -> dict[str, Any]:
    """The full configuration, defaults included, as plain data for the run record."""
    return dataclasses.asdict(config)


def option(default: Any, help: str, *, flag: str | None = None) -> Any:
    """A dataclass field that is also a command-line flag, its help declared here, once.

    The flag is ``--`` + the field's name with dashes (``batch_size`` → ``--batch-size``) unless
    ``flag`` names it; ``gradguide train`` and ``compare`` add one per such field
    (:func:`flag_fields`), and ``--set KEY=VALUE`` reaches every field, flag or not.
    """
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag or True})


@dataclasses.dataclass(frozen=True)
class FlagField:
    """A setting declared with :func:`option`: its dotted key, flag, help and value type."""

    key: str
    flag: str
    help: str
    type: Any  # bool, int, float or str (None removed from an optional)


def flag_fields(cls: type, prefix: str = "") -> list[FlagField]:
    """Every :func:`option` field of dataclass ``cls`` and of its nested dataclasses, in order."""
    hints = typing.get_type_hints(cls)
    out: list[FlagField] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            out.extend(flag_fields(tp, f"{prefix}{f.name}."))
            continue
        declared = f.metadata.get("flag")
        if not declared:
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
        flag = declared if isinstance(declared, str) else "--" + f.name.replace("_", "-")
        out.append(FlagField(prefix + f.name, flag, f.metadata["help"], tp))
    return out


#: one field a registration adds to a carrier dataclass: its name, (resolved) type and field
ExtraField = tuple[str, Any, "dataclasses.Field[Any]"]


def remember_core_fields(cls: type) -> None:
    """Record dataclass ``cls``'s own fields, the ones :func:`rebuild_dataclass` keeps first."""
    cls._core_fields = dataclasses.fields(cls)  # type: ignore[attr-defined]


def rebuild_dataclass(cls: type, extra: list[ExtraField]) -> None:
    """Rebuild ``cls``'s dataclass machinery (in place) from its own fields plus ``extra``.

    Registries that let a module add settings to a config class use this: each guidance family's
    options become a field of GuidanceConfig (gradguide.guidance.registry), each method's options
    fields of MethodOptions (gradguide.methods.base). The class object stays the same (isinstance,
    pickling and imports of it keep working); its ``__init__``, ``__repr__``, ``__eq__``, fields
    and annotations follow the current registrations. :func:`remember_core_fields` first.
    """
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    core = [(f.name, f.type, f) for f in cls.__dict__["_core_fields"]]
    for name, tp, f in [*core, *extra]:
        annotations[name] = tp
        namespace[name] = dataclasses.field(
            default=f.default,
            default_factory=f.default_factory,
            init=f.init,
            repr=f.repr,
            compare=f.compare,
            metadata=f.metadata,
        )
    if "__post_init__" in cls.__dict__:
        namespace["__post_init__"] = cls.__dict__["__post_init__"]
    namespace["__annotations__"] = annotations
    built: type = dataclasses.dataclass(type(cls.__name__, (), namespace))
    for attr in ("__init__", "__repr__", "__eq__", "__match_args__", "__dataclass_fields__"):
        setattr(cls, attr, built.__dict__[attr])
    cls.__annotations__ = annotations
