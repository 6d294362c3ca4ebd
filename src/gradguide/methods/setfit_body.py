"""SetFit's body: a SentenceTransformer built around gradguide's own model (one set of weights),
with the pooling a run chooses, and the quiet import of setfit and sentence-transformers."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gradguide.errors import GradguideError
from gradguide.methods.base import MethodOptions
from gradguide.models import LoadedModel


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence setfit's and sentence-transformers' info logs and their deprecation warnings."""
    from transformers.utils import logging as hf_logging

    loggers = [logging.getLogger(n) for n in ("setfit", "sentence_transformers")]
    levels = [lg.level for lg in loggers]
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar on every body built
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def import_setfit() -> Any:
    """The setfit package, or a GradguideError saying how to install it."""
    try:
        with quiet():
            import setfit
    except ImportError as err:
        raise GradguideError(
            f"the setfit method needs the setfit package ({err}); install gradguide's extra: "
            "pip install 'gradguide[setfit]'"
        ) from err
    return setfit


def sentence_encoder(lm: LoadedModel, options: MethodOptions) -> Any:
    """A SentenceTransformer whose transformer is ``lm.model`` itself (its weights are trained).

    The modules (pooling, normalisation, maximum length) come from the model's directory when it
    is a sentence-transformers one (minilm-l6's has mean pooling and normalisation), else
    sentence-transformers' default for a plain encoder: mean pooling. Nothing is downloaded: a
    model without a local directory (tiny-bert) is written to a temporary one first.
    """
    import_setfit()
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.transformer import Transformer

    device = str(next(lm.model.parameters()).device)
    source = str(lm.info.get("source") or "")
    with tempfile.TemporaryDirectory(prefix="gradguide-setfit-") as tmp, quiet():
        if source and (Path(source) / "config.json").is_file():
            path, local = source, True
        elif source.startswith("hub:"):
            path, local = source.removeprefix("hub:"), bool(lm.info.get("hub_offline"))
        else:
            lm.model.save_pretrained(tmp)  # type: ignore[operator]
            lm.tokenizer.save_pretrained(tmp)
            path, local = tmp, True
        try:
            body = SentenceTransformer(path, device=device, local_files_only=local)
        except (OSError, ValueError) as err:
            raise GradguideError(f"cannot build a sentence encoder from {path}: {err}") from err
    first = body[0]
    if not isinstance(first, Transformer):
        raise GradguideError(
            f"the sentence-transformers model in {path} does not start with a Transformer module"
        )
    # one set of weights: gradguide's model (a decoder's base model) is the body's transformer
    first.model = embedding_model(lm)
    tokenizer = first.tokenizer
    if tokenizer.pad_token is None:  # a decoder's tokenizer often has none; batches need one
        if tokenizer.eos_token is None:
            raise GradguideError(
                f"{lm.name}'s tokenizer has neither a pad nor an end-of-sequence token to pad "
                "SetFit's batches with",
                field="model",
            )
        tokenizer.pad_token = tokenizer.eos_token
    set_pooling(body, options.setfit_pooling)
    return body


def embedding_model(lm: LoadedModel) -> torch.nn.Module:
    """The module whose token states SetFit pools: an encoder itself, a decoder's base model."""
    if lm.kind == "causal":
        base: torch.nn.Module = lm.model.base_model  # type: ignore[assignment]
        return base
    return lm.model


def set_pooling(body: Any, mode: str) -> None:
    """Replace the body's pooling module by one of ``mode`` ("default" keeps the body's own)."""
    if mode == "default":
        return
    from sentence_transformers.sentence_transformer.modules import Pooling

    for i, module in enumerate(body):
        if isinstance(module, Pooling):
            dim = module.get_embedding_dimension()
            body[i] = Pooling(dim, pooling_mode=mode, include_prompt=module.include_prompt)
            return
    raise GradguideError(f"this sentence encoder has no pooling module to set to {mode!r}")
