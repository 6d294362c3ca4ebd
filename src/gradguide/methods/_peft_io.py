"""Save and load PEFT-format adapters with gradguide's verified adapter_meta.json beside them."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gradguide.errors import GradguideError
from gradguide.methods.base import Adapted, publish_files, write_meta


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence the deprecation warning PEFT triggers inside transformers 5 (not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield


def save_peft(peft_model: Any, adapted: Adapted, out_dir: Path, base_model: str) -> None:
    """``save_pretrained`` into ``out_dir`` (safetensors), then write adapter_meta.json last."""
    config = peft_model.peft_config["default"]
    config.base_model_name_or_path = base_model

    def build(tmp: Path) -> None:
        # Our methods never change the embedding matrix. Saying so skips PEFT's "auto" check,
        # which would look the base model's name up on the Hugging Face hub (no network here).
        peft_model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)

    files = publish_files(out_dir, build)
    write_meta(out_dir, adapted, base_model, files, extra={"format_kind": "peft"})


def load_peft(base: torch.nn.Module, out_dir: Path, *, trainable: bool) -> Any:
    """``PeftModel.from_pretrained(base, out_dir)``; its errors become one-line GradguideErrors."""
    from peft import PeftModel

    try:
        with quiet_peft():
            return PeftModel.from_pretrained(base, str(out_dir), is_trainable=trainable)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        raise GradguideError(f"cannot load the PEFT adapter: {message}", file=out_dir) from err
