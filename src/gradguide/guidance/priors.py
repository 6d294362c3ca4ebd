"""Reference directions d_prior for the direction penalty and the alignment measure.

* ``pretrain``: the normalised mean gradient of the language-modelling loss over a reference
  corpus at the initial parameters, in the trainable space (default corpus: the passages of
  SuperGLUE BoolQ's ``train32`` split in the data root, Wikipedia text from a training split, so
  that no evaluation split gradguide ships shares text with it (tested); or a text file, one
  passage per line). The corpus (file and passage ids) is recorded with the prior;
* ``task:RUN_DIR``: the mean gradient direction an earlier run recorded
  (``RUN_DIR/mean_gradient.safetensors``, written by every training run);
* ``ema:β``: a running average of past gradients (the prior at step t excludes g_t);
* ``file:PATH`` (or just ``PATH``): a prior saved by an earlier run (``prior.safetensors``).

Priors are stored as safetensors, one tensor per trainable parameter name, so a prior can only be
used in the same parameter space (same names and shapes), which is checked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save

from gradguide.atomic import write_bytes_atomic
from gradguide.errors import GradguideError
from gradguide.guidance.hvp import flat, unflat

PRIOR_FILE = "prior.safetensors"
MEAN_GRADIENT_FILE = "mean_gradient.safetensors"
#: the default pretrain-prior corpus: a training split, never an evaluation split
CORPUS_FILE = "superglue/BoolQ/train32.jsonl"
#: BoolQ's evaluation split, which asks questions of some of the same passages: those are skipped
CORPUS_EXCLUDE = "superglue/BoolQ/val.jsonl"


class Prior(Protocol):
    """A source of d_prior; ``observe`` lets adaptive priors learn from each step's gradient."""

    name: str

    def direction(self) -> torch.Tensor | None:
        """The current unit prior direction (None when not yet defined)."""
        ...

    def observe(self, g: torch.Tensor) -> None:
        """See the step's task gradient (after the step's direction was used)."""
        ...


def unit(v: torch.Tensor) -> torch.Tensor:
    """v / ‖v‖ (a zero vector stays zero)."""
    n = torch.linalg.vector_norm(v)
    return v / n if float(n) > 0 else v


@dataclass
class FixedPrior:
    """A constant direction (pretrain, task:RUN_DIR, file:PATH); ``info`` says how it was made."""

    vector: torch.Tensor
    name: str
    info: dict[str, Any] | None = None

    def direction(self) -> torch.Tensor | None:
        return self.vector

    def observe(self, g: torch.Tensor) -> None:
        return None


class EmaPrior:
    """d_prior = normalised exponential moving average of the gradients seen so far."""

    def __init__(self, beta: float) -> None:
        if not 0.0 <= beta < 1.0:
            raise GradguideError(f"ema prior needs 0 <= beta < 1, got {beta}", field="prior")
        self.beta = beta
        self.name = f"ema:{beta}"
        self.mean: torch.Tensor | None = None

    def direction(self) -> torch.Tensor | None:
        return unit(self.mean) if self.mean is not None else None

    def observe(self, g: torch.Tensor) -> None:
        g = g.detach()
        self.mean = g.clone() if self.mean is None else self.beta * self.mean + (1 - self.beta) * g

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The running mean an exact resume needs (``ema`` in the checkpoint's tensors)."""
        return {"ema": self.mean} if self.mean is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (a checkpoint without a mean leaves none)."""
        if state.get("ema") is not None:
            self.mean = state["ema"]


@dataclass
class Corpus:
    """The passages a pretrain prior is measured on, with where they come from (for the record)."""

    texts: list[str]
    source: str
    ids: list[str]

    def info(self) -> dict[str, Any]:
        """What the run record keeps of the corpus."""
        return {"file": self.source, "ids": self.ids}


def reference_corpus(data_root: Path | None, path: str | None = None, n: int = 32) -> Corpus:
    """The passages the pretrain prior is measured on (a text file, or BoolQ train32 passages)."""
    if path is not None:
        file = Path(path)
        try:
            lines = [x.strip() for x in file.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            raise GradguideError(f"cannot read the prior corpus: {e}", file=file) from None
        numbered = [(f"line:{i}", x) for i, x in enumerate(lines, start=1) if x][:n]
        if not numbered:
            raise GradguideError("the prior corpus has no text", file=file)
        return Corpus([x for _, x in numbered], str(file), [i for i, _ in numbered])
    if data_root is None or not (data_root / CORPUS_FILE).is_file():
        raise GradguideError(
            "the pretrain prior needs a reference corpus: the BoolQ train32 passages under the "
            "data root (--data-dir / GRADGUIDE_DATA) or a text file (guidance.prior_corpus)"
        )
    texts: list[str] = []
    ids: list[str] = []
    evaluated = _passages(data_root / CORPUS_EXCLUDE)
    with (data_root / CORPUS_FILE).open(encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            passage = json.loads(line)["passage"]
            if passage in texts or passage in evaluated:  # one passage, several questions
                continue
            texts.append(passage)
            ids.append(f"train32:{i}")
            if len(texts) == n:
                break
    return Corpus(texts, CORPUS_FILE, ids)


def _passages(file: Path) -> set[str]:
    """The passages of a BoolQ-format file (empty when the file is absent)."""
    if not file.is_file():
        return set()
    with file.open(encoding="utf-8") as handle:
        return {json.loads(line)["passage"] for line in handle if line.strip()}


def check_prior_fits(spec: str, model: str, kind: str | None) -> None:
    """Refuse the pretrain prior for an encoder: it is the gradient of a language-modelling loss,
    which only a causal model has (``kind`` None: not known yet, nothing to refuse)."""
    if spec == "pretrain" and kind == "encoder":
        raise GradguideError(
            f"the pretrain prior is the gradient of a language-modelling loss, and {model} is an "
            "encoder without one; give this arm another prior (guidance.prior: ema:0.9, "
            "task:RUN_DIR or a saved prior file)",
            field="guidance.prior",
        )


def lm_loss(lm: Any, texts: Sequence[str], max_tokens: int = 128) -> torch.Tensor:
    """Mean next-token cross entropy of ``texts`` under a causal model (right-padded batch)."""
    check_prior_fits("pretrain", lm.name, lm.kind)
    batch = lm.tokenizer(
        list(texts), truncation=True, max_length=max_tokens, padding=True, return_tensors="pt"
    )
    device = next(lm.model.parameters()).device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    if lm.tokenizer.padding_side == "left":
        raise GradguideError("lm_loss expects a right-padding tokenizer")
    logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[
        :, -ids.shape[1] :
    ]
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1)
    )


def pretrain_prior(
    lm: Any, params: Sequence[torch.nn.Parameter], texts: Sequence[str], batch_size: int = 4
) -> torch.Tensor:
    """Normalised mean gradient of the LM loss over ``texts`` at the current parameters."""
    total = None
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    for chunk in batches:
        loss = lm_loss(lm, chunk)
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
        g = flat(grads, params).detach()
        total = g if total is None else total + g
    assert total is not None
    return unit(total / len(batches))


def save_vector(
    path: Path, vector: torch.Tensor, names: Sequence[str], params: Sequence[torch.Tensor]
) -> None:
    """Store a flat vector as named tensors (the parameter space travels with it)."""
    tensors = {
        n: t.detach().to("cpu", copy=True).contiguous()
        for n, t in zip(names, unflat(vector, params), strict=True)
    }
    write_bytes_atomic(path, save(tensors))


def load_vector(path: Path, names: Sequence[str], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Load a vector saved by ``save_vector``; its names and shapes must match ``params``."""
    if not path.is_file():
        raise GradguideError("prior file not found", file=path)
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise GradguideError(f"not a readable safetensors file: {e}", file=path) from None
    missing = [n for n in names if n not in tensors]
    if missing or len(tensors) != len(names):
        raise GradguideError(
            f"prior is for another parameter space (e.g. missing {missing[:1]}); a prior must come "
            "from a run with the same model and method",
            file=path,
        )
    for n, p in zip(names, params, strict=True):
        if tensors[n].shape != p.shape:
            raise GradguideError(f"prior tensor {n} has shape {tuple(tensors[n].shape)}", file=path)
    parts = [tensors[n].to(p.device, p.dtype) for n, p in zip(names, params, strict=True)]
    return flat(parts, params)  # on the parameters' device


def build_prior(
    spec: str,
    lm: Any,
    trainable: dict[str, torch.nn.Parameter],
    data_root: Path | None,
    corpus: str | None = None,
) -> Prior | None:
    """The prior named by ``spec`` ("pretrain", "task:RUN_DIR", "ema:β", "file:PATH", "none")."""
    names, params = list(trainable), list(trainable.values())
    if spec in ("", "none"):
        return None
    if Path(spec).is_file():  # --prior FILE: a prior.safetensors saved by an earlier run
        return FixedPrior(unit(load_vector(Path(spec), names, params)), f"file:{spec}")
    if spec == "pretrain":
        check_prior_fits(spec, lm.name, lm.kind)  # before reading the corpus
        texts = reference_corpus(data_root, corpus)
        vector = pretrain_prior(lm, params, texts.texts)
        return FixedPrior(vector, "pretrain", {"corpus": texts.info()})
    kind, _, arg = spec.partition(":")
    if kind == "ema":
        try:
            return EmaPrior(float(arg))
        except ValueError:
            raise GradguideError(f"ema prior needs a number, got {arg!r}", field="prior") from None
    if kind == "task":
        vector = load_vector(Path(arg) / MEAN_GRADIENT_FILE, names, params)
        return FixedPrior(unit(vector), spec)
    if kind == "file":
        return FixedPrior(unit(load_vector(Path(arg), names, params)), spec)
    raise GradguideError(
        f"unknown prior {spec!r}; use pretrain, task:RUN_DIR, ema:BETA, file:PATH or none",
        field="prior",
    )
