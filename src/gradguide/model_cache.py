"""The verified model cache: where it lives, and loading a model from it after checking its
manifest (size + sha256), else building the model and publishing it atomically.

Used by the smollm2 loader (gradguide.model_wheels); tested on tiny models.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gradguide.atomic import publish_dir, read_manifest, verify_manifest, write_manifest
from gradguide.errors import GradguideError
from gradguide.model_errors import one_line
from gradguide.model_registry import ModelKind

logger = logging.getLogger(__name__)
_CACHE_FORMAT = 1


class CacheCorruptedWarning(UserWarning):
    """A cached model failed verification against its manifest and is being rebuilt."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$GRADGUIDE_CACHE``, else ``~/.cache/gradguide``."""
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    env = os.environ.get("GRADGUIDE_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "gradguide"


def _cache_meta(path: Path) -> dict[str, Any]:
    """The gradguide metadata stored in a cache directory's manifest (empty when unreadable)."""
    try:
        extra = read_manifest(path).get("extra")
    except (OSError, ValueError):
        return {}
    return extra if isinstance(extra, dict) else {}


def _save_model_dir(
    model: torch.nn.Module, tokenizer: Any, kind: ModelKind, meta: dict[str, Any]
) -> Callable[[Path], None]:
    """A builder for :func:`publish_dir`: save model (safetensors), tokenizer, then the manifest."""

    def build(tmp: Path) -> None:
        model.save_pretrained(str(tmp))  # type: ignore[operator]
        tokenizer.save_pretrained(str(tmp))
        write_manifest(tmp, extra={"gradguide_cache": _CACHE_FORMAT, "kind": kind, **meta})

    return build


def load_model_dir(
    path: Path, kind: ModelKind, dtype: torch.dtype, attn_implementation: str | None
) -> tuple[torch.nn.Module, Any]:
    """Load a saved model directory (local files only) with the class matching ``kind``."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True, "use_safetensors": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    auto = AutoModelForCausalLM if kind == "causal" else AutoModel
    model = auto.from_pretrained(str(path), **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model, tokenizer


def cached_load(
    target: Path,
    build: Callable[[], tuple[torch.nn.Module, Any]],
    *,
    kind: ModelKind,
    dtype: torch.dtype,
    attn_implementation: str | None,
    meta: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, Any, str, dict[str, Any]]:
    """Load ``target`` after verifying its manifest, else ``build()`` (float32) and publish it.

    Returns (model, tokenizer, status, notes) with status "hit", "miss" or "rebuilt". A cache that
    fails verification is never loaded: it is reported with :class:`CacheCorruptedWarning` and
    rebuilt. Publishing is an atomic rename, so racing builders cannot corrupt it; if another
    process publishes first, its copy is kept and the model built here is still returned.
    """
    notes: dict[str, Any] = {"cache_dir": str(target)}
    status = "miss"
    if target.exists():
        reason = verify_manifest(target)
        if reason is None and _cache_meta(target).get("kind") != kind:
            reason = "its manifest does not describe a " + kind + " model"
        if reason is None:
            model, tokenizer = load_model_dir(target, kind, dtype, attn_implementation)
            return model, tokenizer, "hit", notes
        message = f"model cache {target} is corrupted ({reason}); rebuilding it"
        warnings.warn(message, CacheCorruptedWarning, stacklevel=3)
        logger.warning(message)
        notes["cache_problem"] = reason
        status = "rebuilt"
    model, tokenizer = build()
    try:
        published = publish_dir(
            target,
            _save_model_dir(model, tokenizer, kind, meta or {}),
            replace=status == "rebuilt",
        )
        if not published:
            notes["cache_note"] = "another process published this cache first; kept its copy"
    except OSError as err:
        message = f"could not write model cache {target} ({err}); continuing without it"
        warnings.warn(message, stacklevel=3)
        logger.warning(message)
        notes["cache_error"] = str(err)
    if dtype != dtype_of(model):
        model = model.to(dtype)
    if attn_implementation is not None:
        _set_attention(model, attn_implementation)
    return model, tokenizer, status, notes


def dtype_of(model: torch.nn.Module) -> torch.dtype:
    """The dtype of a model's first floating-point parameter (float32 when it has none)."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def _set_attention(model: torch.nn.Module, attn_implementation: str) -> None:
    """Switch an already built transformers model to ``attn_implementation``."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        raise GradguideError(
            f"cannot set attn_implementation={attn_implementation!r} on this model"
        )
    try:
        setter(attn_implementation)
    except (ValueError, ImportError) as err:
        raise GradguideError(
            f"attn_implementation {attn_implementation!r} is not available: {one_line(err)}"
        ) from err
