"""A grid's spec: a grid file or preset read and checked into a GridSpec, and GridRun, its runs.

The file format is documented in gradguide.bench.grid. This module parses it (axes, ``base``,
``method_base``, ``model_base``, ``sweep``, ``--set`` overrides), checks every setting, value and
name before anything runs, finds the shipped presets, says how a stored grid departs from its
preset and reads a stored ``GridSpec.to_dict()`` back.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from gradguide.bench.compare import composite_arm
from gradguide.bench.store import arm_name
from gradguide.config import from_dict, merge, nest, read_yaml, to_dict
from gradguide.errors import GradguideError
from gradguide.guidance import GUIDANCE
from gradguide.methods import get_method, list_methods
from gradguide.tasks import get_task
from gradguide.train_config import NO_RESULT_FIELDS, TrainConfig

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
#: Methods of the papers that later versions add; named so that a preset using them fails clearly.
PLANNED_METHODS: tuple[str, ...] = ()  # OFA and spectral landed; none pending
#: Run settings the grid itself sets (axes) or the bench sets (out); not allowed in base/sweep.
AXES = {"model": "models", "task": "tasks", "method": "methods", "shots": "shots", "seed": "seeds"}
_BENCH_SET = ("out",)
_USER_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")
_SPEC_FIELDS = (
    "name",
    "description",
    "model",
    "models",
    "task",
    "tasks",
    "method",
    "methods",
    "shots",
    "seeds",
    "base",
    "method_base",
    "model_base",
    "sweep",
)


@dataclasses.dataclass(frozen=True)
class SweepBlock:
    """One cross product of setting values, optionally limited to some methods."""

    values: dict[str, list[Any]]
    methods: tuple[str, ...] | None = None

    def combos(self) -> list[dict[str, Any]]:
        """Every combination of the block's values, in the order the keys were written."""
        keys = list(self.values)
        return [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(self.values[k] for k in keys))
        ]


@dataclasses.dataclass
class GridSpec:
    """A parsed grid file (or preset): the axes, the base settings and the sweeps."""

    name: str
    models: list[str]
    tasks: list[str]
    methods: list[str]
    shots: list[int]
    seeds: list[int]
    base: dict[str, Any] = dataclasses.field(default_factory=dict)
    sweep: list[SweepBlock] = dataclasses.field(default_factory=list)
    method_base: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    model_base: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    source: str = "<grid>"
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (stored with the results so a report knows what was asked)."""
        return {
            "name": self.name,
            "description": self.description,
            "models": self.models,
            "tasks": self.tasks,
            "methods": self.methods,
            "shots": self.shots,
            "seeds": self.seeds,
            "base": self.base,
            "method_base": self.method_base,
            "model_base": self.model_base,
            "sweep": [
                {"values": b.values, "methods": list(b.methods) if b.methods else None}
                for b in self.sweep
            ],
            "source": self.source,
        }


@dataclasses.dataclass(frozen=True)
class GridRun:
    """One run of a grid: its position, stable key, full configuration and swept settings."""

    index: int
    key: str
    config: TrainConfig
    settings: dict[str, Any]

    @property
    def arm(self) -> str:
        """What the run compares as (``lora``, ``sgg``, …; see store.arm_name)."""
        return arm_name(to_dict(self.config))

    def label(self) -> str:
        """A short human description: method, task, shots, seed and swept settings."""
        c = self.config
        extra = "".join(f" {k}={v}" for k, v in self.settings.items())
        return f"{self.arm} {c.task} k={c.shots} seed={c.seed}{extra}"


def list_presets() -> list[str]:
    """Names of the grids shipped with gradguide (``gradguide bench NAME``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name``; GradguideError listing the presets otherwise."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise GradguideError(
            f"no preset or grid file {name!r}; presets: {', '.join(list_presets())}"
        )
    return path


def departures_from_preset(stored: Mapping[str, Any], *, name: bool = True) -> list[str]:
    """How a stored grid differs from the preset it was run from (axes and base settings).

    Grids are often reduced to fit a machine (fewer tasks, ``eval_limit``): a report must say so.
    Empty when the grid is not a preset's (another name or source) or matches it. ``name``: also
    say when it ran under another name than its preset's (a renaming, not a reduction).
    """
    source = Path(str(stored.get("source") or ""))
    grid = str(stored.get("name") or "")
    # a preset of any checkout (the grid may have run from another tree), read from this one
    if source.parent.parts[-3:] != ("gradguide", "bench", "presets"):
        return []
    if not (PRESETS_DIR / source.name).is_file():
        return []
    try:
        preset = load_grid(source.stem).to_dict()
    except GradguideError:
        return []
    renamed = name and source.stem != grid
    out = [f"named {grid} (preset {source.stem})"] if renamed else []
    for axis in ("models", "tasks", "methods", "shots", "seeds"):
        have, want = stored.get(axis), preset.get(axis)
        if _as_set(have) != _as_set(want):  # the order of an axis only orders the runs
            out.append(f"{axis} {_listed(have)} (preset: {_listed(want)})")
    base, want_base = stored.get("base") or {}, preset.get("base") or {}
    for key in sorted(set(base) | set(want_base)):
        if key in NO_RESULT_FIELDS:
            continue
        if base.get(key) != want_base.get(key):
            out.append(f"base.{key} {base.get(key)} (preset: {want_base.get(key)})")
    return out


def _as_set(value: Any) -> Any:
    return frozenset(map(str, value)) if isinstance(value, list) else value


def _listed(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def load_grid(name_or_path: str | Path, overrides: Sequence[str] = ()) -> GridSpec:
    """Read a grid file, or a preset by name, into a GridSpec (structure checked, not runs).

    ``overrides`` are ``KEY=VALUE`` strings (``tasks=[rte]``, ``seeds=[2,3]``,
    ``base.checkpoint_every=10``) applied on top of the file, each value read as YAML.
    """
    path = Path(name_or_path)
    if not path.is_file():
        if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
            raise GradguideError("grid file not found", file=path)
        path = preset_path(str(name_or_path))
    data = read_yaml(path)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise GradguideError(f"expected KEY=VALUE, got {item!r}", field="--set")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise GradguideError(f"{key.strip()}: not a YAML value ({e})", field="--set") from None
        data = merge(data, nest({key.strip(): value}))
        data = _prune_named_bases(data, key.strip())
    return parse_grid(data, source=str(path))


def _prune_named_bases(data: dict[str, Any], key: str) -> dict[str, Any]:
    """After ``--set models=…`` (or methods), drop the file's per-model (per-method) settings of
    names the override left out, so narrowing a preset does not trip over its own blocks."""
    for axis, block in (("model", "model_base"), ("method", "method_base")):
        if key in (axis, f"{axis}s") and isinstance(data.get(block), Mapping):
            kept = data[key] if isinstance(data[key], list) else [data[key]]
            data = {**data, block: {k: v for k, v in data[block].items() if k in kept}}
    return data


def _as_list(value: Any, field: str, source: str, kind: type) -> list[Any]:
    """A scalar or a list of ``kind`` values, non-empty and without repeats."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise GradguideError("needs at least one value", file=source, field=field)
    out = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]" if isinstance(value, list) else field
        if kind is int and (isinstance(item, bool) or not isinstance(item, int)):
            raise GradguideError(f"expected an integer, got {item!r}", file=source, field=where)
        if kind is str and not (isinstance(item, str) and item.strip()):
            raise GradguideError(f"expected a name, got {item!r}", file=source, field=where)
        if item in out:
            raise GradguideError(f"{item!r} is listed twice", file=source, field=where)
        out.append(item.strip() if isinstance(item, str) else item)
    return out


def _axis(data: Mapping[str, Any], single: str, plural: str, source: str, kind: type) -> list[Any]:
    if single in data and plural in data and single != plural:
        raise GradguideError(f"give {single} or {plural}, not both", file=source, field=plural)
    key = plural if plural in data else single
    if key not in data:
        raise GradguideError("missing (every grid needs it)", file=source, field=plural)
    return _as_list(data[key], key, source, kind)


def setting_type(path: str) -> Any:
    """The type annotation of a dotted TrainConfig setting (KeyError if this version lacks it)."""
    tp: Any = TrainConfig
    for part in path.split("."):
        if typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
            continue
        base = _dataclass_of(tp)
        if base is None:
            raise KeyError(part)
        hints = typing.get_type_hints(base)
        if part not in hints:
            raise KeyError(part)
        tp = hints[part]
    return tp


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass in an annotation (``X`` or ``X | None``), if there is one."""
    candidates = [tp, *typing.get_args(tp)]
    for c in candidates:
        if isinstance(c, type) and dataclasses.is_dataclass(c):
            return c
    return None


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested/dotted settings as dotted leaves, descending only into dataclass-typed settings."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        try:
            tp = setting_type(path)
        except KeyError:
            out[path] = value
            continue
        if isinstance(value, Mapping) and _dataclass_of(tp) is not None:
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _check_setting(path: str, where: str, source: str) -> None:
    """Reject a setting the bench owns, a grid axis, or one this version does not know."""
    top = path.split(".")[0]
    if top in AXES:
        raise GradguideError(
            f"{top} is a grid axis: list it in the grid field '{AXES[top]}'",
            file=source,
            field=where,
        )
    if top in _BENCH_SET:
        raise GradguideError(
            "set by the bench (every run writes under the bench directory; use --out)",
            file=source,
            field=where,
        )
    try:
        setting_type(path)
    except KeyError:
        known = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
        raise GradguideError(
            f"setting {path} is not available in this version (top-level settings: {known})",
            file=source,
            field=where,
        ) from None


def _check_value(path: str, value: Any, where: str, source: str) -> None:
    try:
        from_dict(TrainConfig, nest({path: value}), source=source)
    except GradguideError as e:
        raise GradguideError(e.message, file=source, field=where) from None


def _parse_sweep(raw: Any, methods: list[str], source: str) -> list[SweepBlock]:
    if raw is None:
        return []
    blocks_raw = raw if isinstance(raw, list) else [raw]
    blocks = []
    for i, block in enumerate(blocks_raw):
        where = f"sweep[{i}]" if isinstance(raw, list) else "sweep"
        if not isinstance(block, Mapping) or not block:
            raise GradguideError(
                "expected a mapping of setting: [values]", file=source, field=where
            )
        only: tuple[str, ...] | None = None
        values: dict[str, list[Any]] = {}
        for key, vals in block.items():
            key = str(key)
            if key == "methods":
                names = _as_list(vals, f"{where}.methods", source, str)
                for name in names:
                    if name not in methods:
                        raise GradguideError(
                            f"method {name!r} is not in the grid's methods",
                            file=source,
                            field=f"{where}.methods",
                        )
                only = tuple(names)
                continue
            flat = _flatten({key: vals}) if isinstance(vals, Mapping) else {key: vals}
            for path, v in flat.items():
                field = f"{where}.{path}"
                _check_setting(path, field, source)
                items = _as_list(v, field, source, object)
                for j, item in enumerate(items):
                    _check_value(path, item, f"{field}[{j}]", source)
                values[path] = items
        if not values and only is None:
            raise GradguideError("sweeps no setting", file=source, field=where)
        blocks.append(SweepBlock(values, only))
    return blocks


def _parse_named_base(
    raw: Any, names: list[str], source: str, block: str, what: str
) -> dict[str, dict[str, Any]]:
    """``method_base`` or ``model_base``: settings for some of the grid's methods or models."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise GradguideError(
            f"expected a mapping of {what}: {{setting: value}}", file=source, field=block
        )
    out: dict[str, dict[str, Any]] = {}
    for name, settings in raw.items():
        where = f"{block}.{name}"
        if name not in names:
            raise GradguideError(
                f"{what} {name!r} is not in the grid's {what}s", file=source, field=where
            )
        if not isinstance(settings, Mapping):
            raise GradguideError("expected a mapping of settings", file=source, field=where)
        flat = _flatten(settings)
        for path, value in flat.items():
            _check_setting(path, f"{where}.{path}", source)
            _check_value(path, value, f"{where}.{path}", source)
        out[str(name)] = flat
    return out


def parse_grid(data: Mapping[str, Any], *, source: str = "<grid>") -> GridSpec:
    """Check a grid mapping's structure and settings and build its GridSpec."""
    unknown = [k for k in data if k not in _SPEC_FIELDS]
    if unknown:
        raise GradguideError(
            f"unknown grid field; known: {', '.join(_SPEC_FIELDS)}", file=source, field=unknown[0]
        )
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise GradguideError("every grid needs a name", file=source, field="name")
    models = _axis(data, "model", "models", source, str)
    tasks = _axis(data, "task", "tasks", source, str)
    methods = _axis(data, "method", "methods", source, str)
    shots = _axis(data, "shots", "shots", source, int)
    seeds = _axis(data, "seeds", "seeds", source, int)
    base_raw = data.get("base") or {}
    if not isinstance(base_raw, Mapping):
        raise GradguideError("expected a mapping of settings", file=source, field="base")
    base = _flatten(base_raw)
    for path, value in base.items():
        _check_setting(path, f"base.{path}", source)
        _check_value(path, value, f"base.{path}", source)
    method_base = _parse_named_base(
        data.get("method_base"), methods, source, "method_base", "method"
    )
    model_base = _parse_named_base(data.get("model_base"), models, source, "model_base", "model")
    spec = GridSpec(
        name=name.strip(),
        models=models,
        tasks=tasks,
        methods=methods,
        shots=shots,
        seeds=seeds,
        base=base,
        sweep=_parse_sweep(data.get("sweep"), methods, source),
        method_base=method_base,
        model_base=model_base,
        source=source,
        description=str(data.get("description") or ""),
    )
    _check_names(spec)
    return spec


def spec_from_stored(data: Mapping[str, Any]) -> GridSpec:
    """The GridSpec of a stored ``GridSpec.to_dict()`` (a results store or archive's grids)."""
    plain = {k: v for k, v in data.items() if k in _SPEC_FIELDS and k != "sweep"}
    sweep = []
    for block in data.get("sweep") or []:
        values = dict(block.get("values") or {})
        if block.get("methods"):
            values["methods"] = list(block["methods"])
        sweep.append(values)
    if sweep:
        plain["sweep"] = sweep
    return parse_grid(plain, source=str(data.get("source") or "<stored grid>"))


def _check_names(spec: GridSpec) -> None:
    """Every method, task and model must exist in this version (checked before any run)."""
    available = {m.name for m in list_methods()} | set(GUIDANCE)
    for i, m in enumerate(spec.methods):
        if m in available:
            continue
        where = f"methods[{i}]"
        if "+" in m:  # a method with its guidance (setfit+sgg)
            try:
                composite_arm(m)
            except GradguideError as e:
                raise GradguideError(e.message, file=spec.source, field=where) from None
            continue
        if m in PLANNED_METHODS:
            raise GradguideError(
                f"method {m} is not available in this version (available: "
                f"{', '.join(sorted(available))})",
                file=spec.source,
                field=where,
            )
        try:
            get_method(m)
        except GradguideError as e:
            raise GradguideError(e.message, file=spec.source, field=where) from None
    for i, t in enumerate(spec.tasks):
        where = f"tasks[{i}]"
        if t.endswith(_USER_FILE_SUFFIXES):
            if not Path(t).is_file():
                raise GradguideError(f"task file {t} not found", file=spec.source, field=where)
            continue
        try:
            get_task(t)
        except GradguideError as e:
            raise GradguideError(e.message, file=spec.source, field=where) from None
    from gradguide.models import list_models

    registered = [m.name for m in list_models()]
    for i, name in enumerate(spec.models):
        if name in registered or Path(name).expanduser().is_dir() or "/" in name:
            continue
        raise GradguideError(
            f"unknown model {name!r}; registered: {', '.join(registered)} (or a local model "
            "directory, or a hub id owner/name)",
            file=spec.source,
            field=f"models[{i}]",
        )
