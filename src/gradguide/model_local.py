"""Local transformers model directories: loading one (safetensors only), telling its kind
(causal or encoder) from its config, and its weights' sha256.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gradguide.atomic import sha256_file
from gradguide.errors import GradguideError
from gradguide.model_cache import load_model_dir
from gradguide.model_errors import one_line
from gradguide.model_registry import ModelKind

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _weights_sha256(folder: Path) -> str | None:
    """sha256 of a directory's single weights file (None when it is sharded or absent)."""
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            return sha256_file(path)
    return None


def kind_from_config(config: Any) -> ModelKind:
    """Causal when any architecture in the config ends in ForCausalLM, else encoder."""
    return kind_of_architectures(getattr(config, "architectures", None) or [])


def kind_of_architectures(architectures: list[Any]) -> ModelKind:
    return "causal" if any(str(a).endswith("ForCausalLM") for a in architectures) else "encoder"


def load_local_dir(
    folder: Path, dtype: torch.dtype, attn_implementation: str | None
) -> tuple[torch.nn.Module, Any, ModelKind, dict[str, Any]]:
    """Load a local transformers model directory (config.json + weights + tokenizer)."""
    from transformers import AutoConfig

    if not list(folder.glob("*.safetensors")) and list(folder.glob("*.bin")):
        raise GradguideError(
            "gradguide loads safetensors weights only, and this directory holds pickled *.bin "
            "weights (loading them can run code); re-save the model with save_pretrained, which "
            "writes model.safetensors",
            file=folder,
        )
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        kind = kind_from_config(config)
        model, tokenizer = load_model_dir(folder, kind, dtype, attn_implementation)
    except (OSError, ValueError, KeyError, ImportError) as err:
        raise GradguideError(
            f"cannot load the model in {folder}: {one_line(err)}", file=folder
        ) from err
    info = {"source": str(folder), "sha256": _weights_sha256(folder), "cache": "none"}
    return model, tokenizer, kind, info
