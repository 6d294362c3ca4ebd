"""What every method shares: its options, the adapted model it returns, and verified saving.

A *method* decides which parameters are trained (DESIGN.md, "methods/: what is trained"). It
adapts a loaded model in place (no copy: real models are large), freezes everything else, and
returns an :class:`Adapted` whose ``trainable`` dict is exactly the set of parameters with
``requires_grad=True``: the guidance terms and the optimiser see nothing else.

Saved adapters are directories holding the method's weight files plus ``adapter_meta.json``
(method, base model, options, tensor names and shapes, sha256 of every file). The meta file is
written last and atomically, and the weight files are moved into place one by one with an atomic
rename, so a directory whose meta file is present and whose hashes match was saved completely;
anything else is reported as a :class:`GradguideError` rather than loaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from gradguide.atomic import fsync_dir, sha256_file, write_json_atomic
from gradguide.config import rebuild_dataclass, remember_core_fields
from gradguide.errors import GradguideError
from gradguide.models import LoadedModel
from gradguide.tasks.base import Instance

META_NAME = "adapter_meta.json"
TENSORS_NAME = "trainable.safetensors"
META_FORMAT = 1


@dataclass
class MethodOptions:
    """How a method builds its trainable parameters; every field goes into the run record.

    The fields are the registered methods' own: a method with settings declares an options
    dataclass in its module (``Method.options``: ``LoRAOptions`` in methods/lora.py, …) whose
    fields, registered with the method (:func:`install_method_options`), become fields of this
    class, flat and in registration order (``method_options.lora_r``, ``setfit_epochs``), so they
    read, validate, record and hash like any other setting. Field names must be unique across
    methods (prefix them with the method's name).
    """

    def to_dict(self) -> dict[str, Any]:
        """The options as a plain dict (for run records and adapter_meta.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodOptions:
        """Options from a saved dict, ignoring keys this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def __getattr__(self, name: str) -> Any:
        """A method's option on options built before that method registered: its default."""
        declared = _OPTIONS.get(name)
        if declared is None:
            raise AttributeError(name)
        f = declared.spec
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass(frozen=True)
class _DeclaredOption:
    """One field of MethodOptions: the method that declared it and how it is keyed."""

    method: str
    type: Any
    spec: dataclasses.Field[Any]
    #: left out of the run key of other methods' runs (Method.options_scoped)
    scoped: bool


#: option name → its declaration, in registration order (what MethodOptions's fields are)
_OPTIONS: dict[str, _DeclaredOption] = {}
remember_core_fields(MethodOptions)


def install_method_options(method: Method) -> None:
    """Add the fields of ``method``'s options dataclass (``method.options``) to MethodOptions.

    Called when a method registers (gradguide.methods.register_method); a field name another
    method already declared is refused. A method without ``options`` adds nothing.
    """
    options = getattr(method, "options", None)
    if options is None:
        return
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise GradguideError(f"options of method {method.name!r} must be a dataclass")
    hints = typing.get_type_hints(options)
    fields = dataclasses.fields(options)
    for f in fields:
        if f.name in _OPTIONS:
            raise GradguideError(
                f"method {method.name!r} declares option {f.name!r}, already declared by "
                f"method {_OPTIONS[f.name].method!r}",
                field=f"method_options.{f.name}",
            )
    scoped = bool(getattr(method, "options_scoped", True))
    for f in fields:
        _OPTIONS[f.name] = _DeclaredOption(method.name, hints[f.name], f, scoped)
    _rebuild_options()


def uninstall_method_options(method: str) -> None:
    """Remove the options method ``method`` declared (tests that register a toy method)."""
    for name in [n for n, d in _OPTIONS.items() if d.method == method]:
        del _OPTIONS[name]
    _rebuild_options()


def _rebuild_options() -> None:
    rebuild_dataclass(MethodOptions, [(n, d.type, d.spec) for n, d in _OPTIONS.items()])


def options_scoped_out(method: str) -> list[str]:
    """The options a run of ``method`` leaves out of its run key (gradguide.bench.keys.run_key).

    Those another method declared with ``options_scoped`` (the default): they change nothing in
    this run, and adding such a method re-keys no stored run. LoRA, prompt tuning and the
    bottleneck adapters declare ``options_scoped = False``: their options were hashed into every
    run's key before options were scoped, and stay so, so stored runs keep their keys.
    """
    return [n for n, d in _OPTIONS.items() if d.scoped and d.method != method]


#: What a method can be in the report (Method.role).
ROLES = ("baseline", "proposed")
#: What a method's runs can read per example (the optional Method.reads).
READS = ("prompts", "text")


def check_method(method: Method) -> None:
    """Refuse a method whose declared metadata cannot be right (checked when it is registered)."""
    if method.role not in ROLES:
        raise GradguideError(
            f"method {method.name!r} declares role {method.role!r}; expected one of "
            + ", ".join(ROLES)
        )
    for field_name in ("step_factor", "eval_factor"):
        value = getattr(method, field_name)
        if not (isinstance(value, (int, float)) and 0 < value < math.inf):
            raise GradguideError(
                f"method {method.name!r} declares {field_name} {value!r}; it must be positive"
            )
    reads = getattr(method, "reads", "prompts")
    if reads not in READS:
        raise GradguideError(
            f"method {method.name!r} declares reads {reads!r}; expected one of " + ", ".join(READS)
        )


@dataclass
class Adapted:
    """A model prepared for training by one method, and exactly the parameters it trains.

    ``predictor`` is the method's own predictor where it has one (SetFit's head): ``as_lm``
    hands it to the scorer (gradguide.models.LoadedModel.predictor).
    """

    model: torch.nn.Module
    method: str
    trainable: dict[str, torch.nn.Parameter]
    options: MethodOptions = field(default_factory=MethodOptions)
    info: dict[str, Any] = field(default_factory=dict)
    predictor: Callable[..., torch.Tensor] | None = None

    def n_trainable(self) -> int:
        """Number of trained scalars (what the run record reports as the method's size)."""
        return sum(p.numel() for p in self.trainable.values())

    def as_lm(self, lm: LoadedModel) -> LoadedModel:
        """``lm`` with its model replaced by the adapted one, ready for ``candidate_scores``."""
        return dataclasses.replace(lm, model=self.model, predictor=self.predictor)


class Objective(Protocol):
    """What a run minimises and over which items: rank classification unless a method brings
    its own (``OwnObjective``; SetFit trains its body on pairs of the k shots).

    ``items`` makes the units the loop batches from a k-shot sample (the source task's too),
    ``batch_size`` / ``epochs`` / ``weight_decay`` say how they are trained, ``loss`` is one
    batch's differentiable loss (the guidance engine may call it more than once per step),
    ``chunks`` splits a batch into micro-batches when one pass would not fit in memory, and
    ``finish`` completes the method after the loop (SetFit fits its head), returning facts for
    the run record.
    """

    name: str
    batch_size: int
    epochs: int
    weight_decay: float

    def items(self, instances: Sequence[Instance]) -> list[Any]:
        """The training units of a k-shot sample."""
        ...

    def loss(self, batch: Sequence[Any]) -> torch.Tensor:
        """The differentiable loss of one batch of units."""
        ...

    def chunks(self, batch: Sequence[Any]) -> list[list[Any]]:
        """The batch as micro-batches whose mean losses, weighted by size, make its loss (one
        chunk unless one pass would not fit in memory)."""
        ...

    def finish(self, instances: Sequence[Instance]) -> dict[str, Any]:
        """Work after the optimisation (on the k-shot sample); facts for the run record."""
        ...


@runtime_checkable
class OwnObjective(Protocol):
    """A method that trains on an objective of its own rather than rank classification."""

    def objective(self, adapted: Adapted) -> Objective:
        """The objective that trains ``adapted``."""
        ...


class Method(Protocol):
    """One way to choose what is trained; a module plus a registry entry (methods/__init__.py).

    A method declares what the rest of gradguide needs to know about it, so that adding one
    touches no list elsewhere: its role and place in the report (gradguide.report.analysis
    derives ``BASELINES`` and ``METHOD_ORDER``) and its cost (gradguide.bench.estimate derives
    ``STEP_FACTOR`` and ``EVAL_FACTOR``).
    """

    name: str
    trains: bool
    default_lr: float
    description: str
    #: guidance switched on when the run names none (OFA is layernorm tuning + its penalties)
    default_guidance: str
    #: one of ROLES: a baseline is compared against; a proposed method with every baseline
    role: str
    #: place in the report's method order, lower first (baselines 10–99; guidance arms such as
    #: sgg sit at 100–199 in gradguide.report.analysis.GUIDANCE_ARM_RANKS)
    report_rank: int
    #: cost of one training step relative to a LoRA step of as many items
    step_factor: float
    #: cost of evaluation relative to scoring each example's candidates once
    eval_factor: float
    # Optional, read with getattr (a method without settings declares neither):
    #   reads: str (default "prompts") -- what its runs read per example, for run-time estimates:
    #     "prompts", each example's prompt and candidates on the model's scoring path
    #     (gradguide.bench.workload), or "text", the example's own text once (SetFit)
    #   options: type | None -- its options dataclass; its fields become MethodOptions fields
    #     (``method_options.<name>``) when the method registers (install_method_options)
    #   options_scoped: bool (default True) -- whether its options are left out of the run keys
    #     of other methods' runs (options_scoped_out)

    def apply(self, lm: LoadedModel, options: MethodOptions) -> Adapted:
        """Adapt ``lm.model`` in place, freeze everything not trained, return the result."""
        ...

    def save(self, adapted: Adapted, out_dir: Path, base_model: str) -> None:
        """Write the trained parameters and adapter_meta.json into ``out_dir``."""
        ...

    def load(self, lm: LoadedModel, out_dir: Path, options: MethodOptions) -> Adapted:
        """Rebuild the adaptation on a fresh ``lm`` and load the saved parameters into it."""
        ...


# --------------------------------------------------------------------------------------------
# Trainable parameters


def freeze_all(model: torch.nn.Module) -> None:
    """Turn off gradients for every parameter of ``model``."""
    for param in model.parameters():
        param.requires_grad_(False)


def collect_trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Every parameter with requires_grad=True, by name, in ``named_parameters`` order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def adapted_from(
    model: torch.nn.Module,
    method: str,
    options: MethodOptions,
    info: dict[str, Any] | None = None,
) -> Adapted:
    """An :class:`Adapted` for ``model``, refusing one that trains nothing."""
    trainable = collect_trainable(model)
    if not trainable:
        raise GradguideError(f"method {method} found no parameter to train in this model")
    return Adapted(
        model=model, method=method, trainable=trainable, options=options, info=info or {}
    )


def model_dtype_device(model: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    """dtype and device of the first floating-point parameter (new modules are created to match)."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype, param.device
    return torch.float32, torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Saving and loading


def _fsync_file(path: Path) -> None:
    """Flush one file to disk before it is renamed into place."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def publish_files(out_dir: Path, build: Callable[[Path], None]) -> dict[str, str]:
    """Build files with ``build(tmp)`` and move each into ``out_dir`` atomically; return sha256s.

    Any adapter_meta.json already in ``out_dir`` is removed first, so a save interrupted half-way
    leaves a directory without meta (reported on load) rather than old meta over new weights.
    Other files in ``out_dir`` are left alone.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_NAME).unlink(missing_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-save-", dir=out_dir))
    try:
        build(tmp)
        digests: dict[str, str] = {}
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        for path in files:
            rel = path.relative_to(tmp).as_posix()
            if rel == META_NAME:
                continue
            _fsync_file(path)
            digests[rel] = sha256_file(path)
        for rel in digests:
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, dest)
        fsync_dir(out_dir)
        return digests
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_meta(
    out_dir: Path,
    adapted: Adapted,
    base_model: str,
    files: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write adapter_meta.json (last, atomically): what was trained, on what, and file hashes."""
    meta = {
        "format": META_FORMAT,
        "method": adapted.method,
        "base_model": base_model,
        "options": adapted.options.to_dict(),
        "n_trainable": adapted.n_trainable(),
        "tensors": {name: list(p.shape) for name, p in adapted.trainable.items()},
        "files": files,
        "versions": _versions(),
        **(extra or {}),
    }
    write_json_atomic(out_dir / META_NAME, meta)


def _versions() -> dict[str, str]:
    """Library versions that shape a saved adapter (torch, transformers, peft, safetensors)."""
    import peft
    import safetensors
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
    }


def read_meta(out_dir: Path, method: str, lm: LoadedModel) -> dict[str, Any]:
    """Read and verify adapter_meta.json: right method, right base model, every file intact."""
    path = out_dir / META_NAME
    if not path.is_file():
        raise GradguideError(
            f"no {META_NAME} here: not a saved gradguide adapter, or its save was interrupted",
            file=out_dir,
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise GradguideError(f"cannot read adapter metadata: {err}", file=path) from err
    if not isinstance(meta, dict):
        raise GradguideError("adapter metadata is not a JSON object", file=path)
    if meta.get("method") != method:
        raise GradguideError(
            f"this adapter was saved by method {meta.get('method')!r}, not {method!r}", file=path
        )
    if meta.get("base_model") != lm.name:
        raise GradguideError(
            f"this adapter was trained on base model {meta.get('base_model')!r}, not {lm.name!r}",
            file=path,
        )
    files = meta.get("files")
    if not isinstance(files, dict):
        raise GradguideError("adapter metadata lists no files", file=path)
    for rel, digest in files.items():
        target = out_dir / rel
        if not target.is_file():
            raise GradguideError(f"adapter file {rel} is missing", file=out_dir)
        if sha256_file(target) != digest:
            raise GradguideError(
                f"adapter file {rel} does not match its sha256 in {META_NAME} (corrupted)",
                file=out_dir,
            )
    return meta


def saved_options(meta: dict[str, Any], options: MethodOptions) -> MethodOptions:
    """The options an adapter was saved with (they fix its shapes); ``options`` where absent."""
    saved = meta.get("options")
    if not isinstance(saved, dict):
        return options
    return MethodOptions.from_dict({**options.to_dict(), **saved})


def save_tensors(adapted: Adapted, out_dir: Path, base_model: str) -> None:
    """Save the trainable tensors as trainable.safetensors plus adapter_meta.json."""
    from safetensors.torch import save_file

    tensors = {n: p.detach().to("cpu").contiguous().clone() for n, p in adapted.trainable.items()}

    def build(tmp: Path) -> None:
        save_file(tensors, str(tmp / TENSORS_NAME), metadata={"method": adapted.method})

    files = publish_files(out_dir, build)
    write_meta(out_dir, adapted, base_model, files)


def load_tensors(adapted: Adapted, out_dir: Path) -> None:
    """Copy trainable.safetensors into ``adapted.trainable`` (names and shapes must match)."""
    from safetensors.torch import load_file

    path = out_dir / TENSORS_NAME
    try:
        tensors = load_file(str(path))
    except (OSError, ValueError, RuntimeError) as err:
        raise GradguideError(f"cannot read saved tensors: {err}", file=path) from err
    _check_names(tensors.keys(), adapted.trainable.keys(), path)
    with torch.no_grad():
        for name, param in adapted.trainable.items():
            value = tensors[name]
            if tuple(value.shape) != tuple(param.shape):
                raise GradguideError(
                    f"saved tensor {name} has shape {tuple(value.shape)}, the model expects "
                    f"{tuple(param.shape)}",
                    file=path,
                )
            param.copy_(value.to(dtype=param.dtype, device=param.device))


class SavedAsTensors:
    """Save/load shared by methods whose trained state is plain tensors (full, bitfit, …).

    ``load`` re-applies the method to a fresh model with the saved options (they fix shapes),
    then copies the saved tensors in; the class using it provides ``name`` and ``apply``.
    """

    def save(self, adapted: Adapted, out_dir: Path, base_model: str) -> None:
        """Save the trained tensors (safetensors) with adapter_meta.json."""
        save_tensors(adapted, out_dir, base_model)

    def load(self: Method, lm: LoadedModel, out_dir: Path, options: MethodOptions) -> Adapted:
        """Apply the method to a fresh ``lm`` with the saved options and load the tensors."""
        meta = read_meta(out_dir, self.name, lm)
        adapted = self.apply(lm, saved_options(meta, options))
        load_tensors(adapted, out_dir)
        return adapted


def _check_names(saved: Iterable[str], expected: Iterable[str], path: Path) -> None:
    """Raise when the saved tensor names differ from the ones the rebuilt model trains."""
    saved_set, expected_set = set(saved), set(expected)
    if saved_set != expected_set:
        missing = sorted(expected_set - saved_set)[:3]
        extra = sorted(saved_set - expected_set)[:3]
        raise GradguideError(
            f"saved tensors do not match the model (missing {missing}, unexpected {extra})",
            file=path,
        )
