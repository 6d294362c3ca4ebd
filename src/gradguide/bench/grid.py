"""Experiment grids: a YAML spec (models × tasks × methods × shots × seeds × sweeps) made into runs.

A grid file::

    name: my-grid
    models: [smollm2-135m]          # or model: smollm2-135m
    tasks: [rte, cb]
    methods: [zero-shot, lora]
    shots: [32]
    seeds: [1, 2, 3]
    base: {optim: {epochs: 10}, eval_limit: 500}   # any TrainConfig setting, nested or dotted
    method_base: {sgg: {guidance.source_task: sst2}}  # optional: settings of one method only
    model_base: {minilm-l6: {optim.lr: 3.0e-3}}    # optional: settings of one model only
    sweep:                                         # optional
      - {methods: [lora], optim.lr: [1.0e-4, 1.0e-3]}

A method is a name of gradguide.methods or a guidance name of gradguide.guidance (``sgg``,
``sgg-dir``, …: LoRA trained with that guidance; ``ofa-step``, ``ofa-sharp``: LayerNorm tuning with
it; as in ``gradguide compare``). ``method_base`` gives settings to some methods only and
``model_base`` to some models only (a learning rate that suits one model, say); they are part of
the run, not of its swept settings. Later blocks win: base, model_base, method_base, sweep.
``sweep`` is one mapping (the cross product of its lists) or a list of them (their union: one
block per swept setting gives a one-at-a-time sensitivity grid). A block's ``methods`` limits it to
those methods; methods no block covers run once with the base settings, and a block of
``methods`` alone (``- {methods: [sgg]}``) runs them with the base settings beside their swept
variants. Expansion is deterministic (model, shots, seed, task, method, sweep order) and every run
gets a stable key, the hash of its full configuration, which the results store uses to skip
finished runs. Every problem (unknown method, task, model or setting, a bad value) is a
GradguideError naming the file and the field before anything runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from gradguide.bench.compare import arm_method, composite_arm, is_guidance_arm, recipe
from gradguide.bench.store import arm_name
from gradguide.config import from_dict, merge, nest, read_yaml, to_dict
from gradguide.errors import GradguideError
from gradguide.evaluate import limit_instances, resolve_task
from gradguide.guidance import (
    GUIDANCE,
    build_penalties,
    expand_terms,
    parse_guidance,
)
from gradguide.guidance.priors import check_prior_fits
from gradguide.guidance.registry import option_specs
from gradguide.methods import get_method, list_methods
from gradguide.methods.base import options_scoped_out
from gradguide.models import model_kind
from gradguide.tasks import get_task, resolve_data_root, sample_k_shot
from gradguide.train_config import TrainConfig, as_eval_config, validate

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
KEY_VERSION = "gradguide-bench-1"
#: Gradient-penalty runs get a revision in their key when a defect changed what they compute, so
#: a grid retrains them instead of reusing the stored run: revision 2 replays the dropout masks in
#: the finite-difference HVP and builds the pretrain prior from training passages (revision-1
#: runs trained on dropout noise on encoders, or with a prior from BoolQ's evaluation split).
PENALTY_REVISION = 2
#: Methods of the papers that later versions add; named so that a preset using them fails clearly.
PLANNED_METHODS: tuple[str, ...] = ()  # OFA and spectral landed; none pending
#: Run settings the grid itself sets (axes) or the bench sets (out); not allowed in base/sweep.
AXES = {"model": "models", "task": "tasks", "method": "methods", "shots": "shots", "seed": "seeds"}
_BENCH_SET = ("out",)
#: Configuration fields that say where files live or where and how thriftily a run computes, not
#: what it computes: not part of a run key (a grid resumed on a GPU keeps its CPU runs).
_NOT_HASHED = ("out", "cache_dir", "device", "gradient_checkpointing")
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


def departures_from_preset(stored: Mapping[str, Any]) -> list[str]:
    """How a stored grid differs from the preset it was run from (axes and base settings).

    Grids are often reduced to fit a machine (fewer tasks, ``eval_limit``): a report must say so.
    Empty when the grid is not a preset's (another name or source) or matches it.
    """
    source = Path(str(stored.get("source") or ""))
    name = str(stored.get("name") or "")
    # a preset of any checkout (the grid may have run from another tree), read from this one
    if source.parent.parts[-3:] != ("gradguide", "bench", "presets"):
        return []
    if not (PRESETS_DIR / source.name).is_file():
        return []
    try:
        preset = load_grid(source.stem).to_dict()
    except GradguideError:
        return []
    out = [] if source.stem == name else [f"named {name} (preset {source.stem})"]
    for axis in ("models", "tasks", "methods", "shots", "seeds"):
        have, want = stored.get(axis), preset.get(axis)
        if have != want:
            out.append(f"{axis} {_listed(have)} (preset: {_listed(want)})")
    base, want_base = stored.get("base") or {}, preset.get("base") or {}
    for key in sorted(set(base) | set(want_base)):
        if key == "checkpoint_every":  # where checkpoints go changes no result
            continue
        if base.get(key) != want_base.get(key):
            out.append(f"base.{key} {base.get(key)} (preset: {want_base.get(key)})")
    return out


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


def grid_keys(spec: GridSpec) -> set[str]:
    """The run keys a grid asks for, including runs another grid already finished for it."""
    return {run.key for run in expand_grid(spec)}


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


def _check_guidance(config: TrainConfig) -> None:
    """Guidance that cannot run (alignment without a source, the pretrain prior on an encoder)
    fails here, not mid-grid."""
    g = config.guidance
    penalties = build_penalties(
        parse_guidance(g.use), g, has_source=bool(g.source_task or g.source_run)
    )
    if g.source_task:
        get_task(g.source_task)
    if any(p.needs_prior for p in penalties):
        check_prior_fits(g.prior, config.model, model_kind(config.model))


def run_key(config: TrainConfig) -> str:
    """Stable key of a run: sha256 of its full configuration (minus where files go), 16 hex."""
    data = to_dict(config)
    for name in _NOT_HASHED:
        data.pop(name, None)
    data["checkpoint_every"] = 0  # where checkpoints are taken changes no result
    if data.get("dtype") == "fp32":  # the default weights (runs stored before it keep their keys)
        data.pop("dtype")
    # nor does which shared prefixes evaluation caches (scores equal full scoring, tested)
    data["scoring"].pop("prefix_min_tokens", None)
    default_use = get_method(config.method).default_guidance
    if config.guidance.use == default_use:
        # train() writes a method's default guidance (ofa's) into the config it records: the
        # recorded config and the grid's, which leaves it implied, are one run
        data["guidance"]["use"] = ""
    for name in options_scoped_out(config.method):  # another method's options (setfit_*)
        data["method_options"].pop(name, None)
    if not config.layer_diagnostics:  # the diagnostics when off change nothing
        data.pop("layer_diagnostics", None)
    in_use = expand_terms(parse_guidance(config.guidance.use or default_use))
    for spec in option_specs():
        # options of guidance not in use change nothing (and runs stored before a family
        # existed keep their keys)
        used = any(t.name in in_use for t in spec.terms)
        if not used and not (spec.options_in_use and spec.options_in_use(config)):
            data["guidance"].pop(spec.options_key, None)
    if _has_active_penalty(config):
        data["guidance"]["revision"] = PENALTY_REVISION
    text = json.dumps([KEY_VERSION, data], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _has_active_penalty(config: TrainConfig) -> bool:
    """Whether the run applies a gradient penalty (SGG's HVP engine) with a non-zero weight."""
    g = config.guidance
    terms = expand_terms(parse_guidance(g.use or get_method(config.method).default_guidance))
    weights = {"dir": g.lambda_dir, "mag": g.lambda_mag, "align": g.lambda_align}
    return any(weights[t] != 0 for t in terms if t in weights)


def _combos_for(spec: GridSpec, method: str) -> list[dict[str, Any]]:
    blocks = [b for b in spec.sweep if b.methods is None or method in b.methods]
    if not blocks:
        return [{}]
    return [combo for b in blocks for combo in b.combos()]


def expand_grid(spec: GridSpec) -> list[GridRun]:
    """Every run of the grid in a deterministic order, validated, duplicates (same key) merged."""
    base_nested = nest(spec.base)
    runs: list[GridRun] = []
    seen: set[str] = set()
    for model, shots, seed, task, method in itertools.product(
        spec.models, spec.shots, spec.seeds, spec.tasks, spec.methods
    ):
        own = spec.method_base.get(method, {})
        for_model = spec.model_base.get(model, {})
        as_guidance = is_guidance_arm(method) or composite_arm(method) is not None
        trained = arm_method(method)
        axes = {"model": model, "task": task, "method": trained, "shots": shots, "seed": seed}
        # base < model_base < method_base, then each swept combination on top
        fixed = merge(merge(merge(base_nested, axes), nest(for_model)), nest(own))
        for combo in _combos_for(spec, method):
            data = merge(fixed, nest(combo))
            try:
                config = from_dict(TrainConfig, data, source=spec.source)
                if as_guidance:
                    config = recipe(config, method)
                validate(config)
                _check_guidance(config)
            except GradguideError as e:
                field = e.field or ""
                if field in combo:
                    field = f"sweep.{field}"
                elif field in own:
                    field = f"method_base.{method}.{field}"
                elif field in for_model:
                    field = f"model_base.{model}.{field}"
                elif field in spec.base:
                    field = f"base.{field}"
                elif field in AXES:
                    field = AXES[field]
                raise GradguideError(e.message, file=spec.source, field=field or None) from None
            key = run_key(config)
            if key in seen:
                continue
            seen.add(key)
            runs.append(GridRun(len(runs), key, config, dict(combo)))
    return runs


@dataclasses.dataclass(frozen=True)
class DataCheck:
    """What checking the data found: evaluation-set sizes per task and any problems."""

    eval_sizes: dict[str, int]
    problems: list[str]
    #: mean characters of a (prompt + longest answer) per task: (training pool, evaluation set)
    chars: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)


def _data_signature(config: TrainConfig) -> str:
    return json.dumps(
        [
            config.task,
            config.template,
            config.verbalizer,
            to_dict(config.user_task),
            config.data_dir,
            config.eval_split,
            config.eval_limit,
        ],
        sort_keys=True,
    )


def check_data(runs: Sequence[GridRun], source: str = "<grid>") -> DataCheck:
    """Load each task's data once: is it there, are there enough examples for every ``shots``."""
    groups: dict[str, list[GridRun]] = {}
    for r in runs:
        groups.setdefault(_data_signature(r.config), []).append(r)
    sizes: dict[str, int] = {}
    chars: dict[str, tuple[float, float]] = {}
    problems: list[str] = []
    for group in groups.values():
        c = group[0].config
        try:
            root = resolve_data_root(c.data_dir)
            task = resolve_task(as_eval_config(c))
            pool = task.load(task.train_split, root)
            evals = limit_instances(task.load(c.eval_split or task.eval_split, root), c.eval_limit)
            sizes[c.task] = len(evals)
            chars[c.task] = (_mean_chars(pool), _mean_chars(evals))
            most = max(r.config.shots for r in group)
            sample_k_shot(pool, most, 0)
        except GradguideError as e:
            problems.append(f"{source}: task {c.task}: {e}")
    return DataCheck(sizes, problems, chars)


def _mean_chars(instances: Sequence[Any]) -> float:
    """Mean length of what a model reads per instance: the prompt and its longest answer."""
    if not instances:
        return 0.0
    return sum(len(i.prompt) + max(map(len, i.candidates)) for i in instances) / len(instances)


def check_models(runs: Sequence[GridRun], source: str = "<grid>") -> list[str]:
    """Registered models that are not installed here (each a line saying how to install it)."""
    from gradguide.models import list_models

    wanted = {r.config.model for r in runs}
    return [
        f"{source}: model {m.name} is not available here: {m.where}"
        for m in list_models()
        if m.name in wanted and not m.available
    ]
