"""SetFit (the ``setfit`` package): contrastive tuning of a sentence encoder, then a head.

SetFit 1.x trains in two phases, and so does this method, with SetFit's own pieces:

1. **Body.** Pairs of the k shots (``setfit.sampler.ContrastiveDataset``: same label → 1, other
   label → 0) train every weight of the sentence-transformers body (a
   ``sentence_transformers.SentenceTransformer`` around the encoder gradguide loaded) with
   SetFit's default loss, ``CosineSimilarityLoss`` (MSE between the pair's cosine and its
   label). SetFit runs this phase through the sentence-transformers trainer (a Hugging Face
   Trainer: AdamW, linear warm-up and decay, gradient clipping at 1); here gradguide's own loop
   runs it (AdamW, linear warm-up and decay, clipping at ``optim.grad_clip``), so the same data
   order, checkpoints, curves and gradient guidance (``--guidance sgg``: the guided-gradient
   engine drives the contrastive loss) serve it as every other method.
2. **Head.** ``SetFitModel.fit`` fits SetFit's default head, scikit-learn's
   ``LogisticRegression``, on the tuned body's embeddings of the k shots.

Prediction is the head's: the log-probability of each class is the candidate's score, so the
evaluation set, metrics, predictions, ``gradguide predict`` and the run record are those of every
other method. Settings (``method_options.setfit_*``) default to SetFit 1.x's: ``num_iterations``
unset (``setfit_iterations = 0``: its "oversampling" of the unique pairs), 16 pairs per batch, one
epoch over the pairs, body learning rate 2e-5 (``optim.lr``), weight decay 0.01, warm-up 10%
(``optim.warmup_ratio``). ``setfit_input`` chooses what is embedded: ``text`` (the example's own
fields, as a SetFit user passes them) or ``prompt`` (gradguide's prompt template around them).

Saved as the body's weights (``trainable.safetensors``, as full fine-tuning) plus the head's
coefficients (``head.safetensors``); no pickle is written or read (SetFit's own
``save_pretrained`` pickles the head with joblib).

A decoder LM serves SetFit too: its base model (the transformer without the LM head) is the body's
transformer and its hidden states are pooled (``setfit_pooling``: sentence-transformers' choice for
the architecture by default, last-token for Llama; or mean, cls, ...). Measured in docs/setfit.md.

The gap to gradguide's own encoder recipe (scoring by the cosine between the prompt and each
label word) is documented in docs/setfit.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradguide.errors import GradguideError
from gradguide.methods.base import (
    Adapted,
    MethodOptions,
    publish_files,
    read_meta,
    saved_options,
    write_meta,
)
from gradguide.methods.setfit_body import embedding_model, import_setfit, quiet, sentence_encoder
from gradguide.models import LoadedModel
from gradguide.scoring import ScoringOptions
from gradguide.tasks.base import Instance

HEAD_NAME = "head.safetensors"
BODY_NAME = "trainable.safetensors"
SAMPLINGS = ("oversampling", "undersampling", "unique")
HEADS = ("logistic",)
INPUTS = ("text", "prompt")
#: "default": the model directory's pooling, else sentence-transformers' choice for the architecture
POOLINGS = ("default", "mean", "lasttoken", "cls", "max", "weightedmean", "mean_sqrt_len_tokens")
#: SetFit 1.x's body learning rate (TrainingArguments.body_learning_rate[0])
SETFIT_LR = 2e-5


@dataclass
class SetFitOptions:
    """SetFit's settings (``method_options.setfit_*``), SetFit 1.x's defaults: pairs per example
    and polarity (0 = its "oversampling"), pair batches, passes over the pairs, weight decay, the
    head, the encoder's input, how token states are pooled into the embedding."""

    setfit_iterations: int = 0
    setfit_sampling: str = "oversampling"
    setfit_batch_size: int = 16
    setfit_epochs: int = 1
    setfit_weight_decay: float = 0.01
    setfit_head: str = "logistic"
    setfit_input: str = "text"
    setfit_pooling: str = "default"


def check_options(options: MethodOptions) -> None:
    """Refuse SetFit settings that cannot run (the field named)."""
    o = options
    checks = [
        (o.setfit_iterations >= 0, "setfit_iterations", "must be >= 0 (0 = SetFit's sampling)"),
        (o.setfit_sampling in SAMPLINGS, "setfit_sampling", f"must be one of {SAMPLINGS}"),
        (o.setfit_batch_size >= 1, "setfit_batch_size", "must be >= 1"),
        (o.setfit_epochs >= 1, "setfit_epochs", "must be >= 1"),
        (o.setfit_weight_decay >= 0, "setfit_weight_decay", "must be >= 0"),
        (o.setfit_head in HEADS, "setfit_head", f"must be one of {HEADS}"),
        (o.setfit_input in INPUTS, "setfit_input", f"must be one of {INPUTS}"),
        (o.setfit_pooling in POOLINGS, "setfit_pooling", f"must be one of {POOLINGS}"),
    ]
    for ok, name, message in checks:
        if not ok:
            value = getattr(o, name)
            raise GradguideError(f"{message}, got {value!r}", field=f"method_options.{name}")


def pair_count(class_counts: Sequence[int], options: MethodOptions) -> int:
    """How many pairs SetFit's ContrastiveDataset makes from a sample with these class sizes.

    Pairs are the unordered pairs of the sample with repetition (an example with itself too):
    ``Σ n_c(n_c+1)/2`` positive, ``Σ_{c<c'} n_c n_c'`` negative; the sampling strategy then
    balances the two, or ``setfit_iterations`` fixes each at iterations × examples.
    """
    n = sum(class_counts)
    if options.setfit_iterations > 0:
        return 2 * options.setfit_iterations * n
    positive = sum(c * (c + 1) // 2 for c in class_counts)
    negative = (n * n - sum(c * c for c in class_counts)) // 2
    if options.setfit_sampling == "unique":
        return positive + negative
    side = min if options.setfit_sampling == "undersampling" else max
    return 2 * side(positive, negative)


def balanced_counts(shots: int, n_labels: int) -> list[int]:
    """Class sizes of a label-balanced k-shot sample (as gradguide.tasks.sampling draws it)."""
    base, extra = divmod(shots, max(1, n_labels))
    return [base + (1 if i < extra else 0) for i in range(max(1, n_labels))]


class SetFitPredictor:
    """The scorer of a SetFit model: log-probabilities of the head, one column per candidate."""

    def __init__(self, model: Any, input_kind: str) -> None:
        self.model = model
        self.input_kind = input_kind

    def texts(self, instances: Sequence[Instance]) -> list[str]:
        """What the body embeds for each instance (its fields, or its prompt)."""
        return [embedded_text(x, self.input_kind) for x in instances]

    def fitted(self) -> bool:
        """Whether the head has been fitted (its classes are known)."""
        return hasattr(self.model.model_head, "classes_")

    def __call__(
        self, instances: Sequence[Instance], prefix: str = "", options: ScoringOptions | None = None
    ) -> torch.Tensor:
        """Scores [n, max candidates]: log P(class) for the classes the head knows, else −inf."""
        if prefix:
            raise GradguideError("setfit predicts from the example alone, without demonstrations")
        if not self.fitted():
            raise GradguideError("this SetFit model's head has not been fitted yet")
        batch = (options or ScoringOptions()).batch_size
        with quiet():
            probs = self.model.predict_proba(
                self.texts(instances), batch_size=batch, as_numpy=True, show_progress_bar=False
            )
        classes = [int(c) for c in self.model.model_head.classes_]
        width = max(len(x.candidates) for x in instances)
        if max(classes) >= width:
            raise GradguideError(
                f"the SetFit head knows class {max(classes)}, but these examples have only "
                f"{width} candidates"
            )
        scores = torch.full((len(instances), width), float("-inf"))
        with np.errstate(divide="ignore"):
            scores[:, classes] = torch.from_numpy(np.log(np.asarray(probs, dtype=np.float64))).to(
                scores.dtype
            )
        for i, x in enumerate(instances):
            scores[i, len(x.candidates) :] = float("-inf")
        return scores


def embedded_text(x: Instance, input_kind: str) -> str:
    """The text SetFit embeds for an instance: its own fields, or its prompt."""
    if input_kind == "prompt" or x.text is None:
        return x.prompt
    return x.text


@dataclass
class SetFitAdapted(Adapted):
    """A SetFit model (``setfit.SetFitModel``: body + head) prepared for training."""

    setfit: Any = None

    @property
    def body(self) -> Any:
        """The SentenceTransformer body."""
        return self.setfit.model_body


class SetFitObjective:
    """SetFit's body phase: CosineSimilarityLoss over ContrastiveDataset pairs; then the head."""

    name = "setfit-contrastive"

    def __init__(self, adapted: SetFitAdapted) -> None:
        setfit = import_setfit()
        from setfit.compat import losses

        self.adapted = adapted
        o = adapted.options
        self.batch_size = o.setfit_batch_size
        self.epochs = o.setfit_epochs
        self.weight_decay = o.setfit_weight_decay
        self.loss_module = losses.CosineSimilarityLoss(adapted.body)
        self._sampler = setfit.sampler.ContrastiveDataset

    def items(self, instances: Sequence[Instance]) -> list[tuple[str, str, float]]:
        """SetFit's pairs of the sample: (text, text, 1.0 same label / 0.0 other label)."""
        o = self.adapted.options
        texts = [embedded_text(x, o.setfit_input) for x in instances]
        labels = [x.gold for x in instances]
        if len(set(labels)) < 2:
            raise GradguideError("setfit needs examples of at least two labels to make pairs")
        with quiet():
            pairs = self._sampler(
                texts,
                labels,
                multilabel=False,
                num_iterations=o.setfit_iterations or None,
                sampling_strategy=o.setfit_sampling,
            )
            return [(p["sentence_1"], p["sentence_2"], float(p["label"])) for p in pairs]

    def loss(self, batch: Sequence[tuple[str, str, float]]) -> torch.Tensor:
        """CosineSimilarityLoss of one batch of pairs (MSE of cosine against the pair label)."""
        body = self.adapted.body
        device = next(self.adapted.model.parameters()).device
        firsts, seconds = [p[0] for p in batch], [p[1] for p in batch]
        features = [self._features(body, texts, device) for texts in (firsts, seconds)]
        labels = torch.tensor([p[2] for p in batch], dtype=torch.float32, device=device)
        loss: torch.Tensor = self.loss_module(features, labels)
        return loss

    def chunks(self, batch: Sequence[tuple[str, str, float]]) -> list[list[tuple[str, str, float]]]:
        """One pass: 16 pairs of sentences are far below any memory limit."""
        return [list(batch)]

    @staticmethod
    def _features(body: Any, texts: list[str], device: torch.device) -> dict[str, Any]:
        features = body.preprocess(texts)
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}

    def finish(self, instances: Sequence[Instance]) -> dict[str, Any]:
        """Fit the head on the tuned body's embeddings of the k shots (SetFitModel.fit)."""
        return fit_head(self.adapted, instances)


def fit_head(adapted: SetFitAdapted, instances: Sequence[Instance]) -> dict[str, Any]:
    """``SetFitModel.fit`` on the sample (the logistic-regression head); facts for the record."""
    o = adapted.options
    texts = [embedded_text(x, o.setfit_input) for x in instances]
    labels = [x.gold for x in instances]
    was_training = adapted.model.training
    adapted.model.eval()
    try:
        with quiet(), torch.no_grad():
            adapted.setfit.fit(texts, labels, num_epochs=1, show_progress_bar=False)
    finally:
        adapted.model.train(was_training)
    head = adapted.setfit.model_head
    return {
        "head": o.setfit_head,
        "classes": [int(c) for c in head.classes_],
        "head_iterations": int(np.max(head.n_iter_)),
    }


class SetFit:
    """SetFit through the setfit package: contrastive body tuning, then a head (see module)."""

    name = "setfit"
    trains = True
    default_lr = SETFIT_LR
    default_guidance = ""
    role = "baseline"
    report_rank = 90
    # SetFit's body step on minilm-l6 per 8 pairs (16 sentences, every weight), benchmarks/
    # setfit_cost.py (4 steps on a loaded machine, noisy): x4.3 a LoRA step of 8 instances; with
    # SGG (fd HVP) x12.2, about this times sgg's 3.0. Its steps count pairs: pair_count.
    step_factor = 4.3
    #: one embedding per example: 57 vs 33 SST-2 examples/s for the encoder head's prompt +
    #: label words on minilm-l6 (benchmarks/setfit_cost.py)
    eval_factor = 0.6
    #: SetFit embeds each example's text (pairs of them in training), never a prompt with its
    #: candidates: 77 intent names cost it nothing (gradguide.bench.estimate)
    reads = "text"
    description = (
        "SetFit (setfit package): contrastive tuning of the sentence encoder on pairs of the "
        "k shots, then a logistic-regression head"
    )
    #: read by SetFit alone: left out of other methods' run keys (options_scoped, the default)
    options = SetFitOptions

    def planned_items(
        self, shots: int, n_labels: int, options: MethodOptions
    ) -> tuple[int, int, int]:
        """(pairs, pairs per batch, epochs) a k-shot run will train on (for run-time estimates)."""
        pairs = pair_count(balanced_counts(shots, n_labels), options)
        return pairs, options.setfit_batch_size, options.setfit_epochs

    def validate_run(self, model_kind: str | None, model: str, options: MethodOptions) -> None:
        """Refuse what cannot run before anything loads: bad settings."""
        check_options(options)

    def apply(self, lm: LoadedModel, options: MethodOptions) -> SetFitAdapted:
        """Wrap ``lm.model`` as a SetFit model (body + unfitted head); every weight the body
        uses trains (a decoder's LM head only where it is tied to the embeddings)."""
        check_options(options)
        setfit = import_setfit()
        from sklearn.linear_model import LogisticRegression

        body = sentence_encoder(lm, options)
        with quiet():
            model = setfit.SetFitModel(model_body=body, model_head=LogisticRegression())
        used = {id(p) for p in embedding_model(lm).parameters()}
        for param in lm.model.parameters():
            param.requires_grad_(id(param) in used)
        trainable = {n: p for n, p in lm.model.named_parameters() if p.requires_grad}
        return SetFitAdapted(
            model=lm.model,
            method=self.name,
            trainable=trainable,
            options=options,
            predictor=SetFitPredictor(model, options.setfit_input),
            setfit=model,
        )

    def objective(self, adapted: Adapted) -> SetFitObjective:
        """SetFit's pair objective for a model built by ``apply``."""
        if not isinstance(adapted, SetFitAdapted):
            raise GradguideError("the setfit objective needs a model prepared by the setfit method")
        return SetFitObjective(adapted)

    def save(self, adapted: Adapted, out_dir: Path, base_model: str) -> None:
        """The body's weights and the head's coefficients (safetensors) plus adapter_meta.json."""
        from safetensors.torch import save_file

        if not isinstance(adapted, SetFitAdapted):
            raise GradguideError("the setfit method saves only models it prepared")
        body = {n: p.detach().to("cpu").contiguous().clone() for n, p in adapted.trainable.items()}
        head = head_tensors(adapted.setfit.model_head)

        def build(tmp: Path) -> None:
            save_file(body, str(tmp / BODY_NAME), metadata={"method": self.name})
            save_file(head, str(tmp / HEAD_NAME), metadata={"head": adapted.options.setfit_head})

        files = publish_files(out_dir, build)
        write_meta(out_dir, adapted, base_model, files, extra={"head": adapted.options.setfit_head})

    def load(self, lm: LoadedModel, out_dir: Path, options: MethodOptions) -> SetFitAdapted:
        """Rebuild the SetFit model on a fresh ``lm``; load the body's weights and the head."""
        from safetensors.torch import load_file

        from gradguide.methods.base import load_tensors

        meta = read_meta(out_dir, self.name, lm)
        adapted = self.apply(lm, saved_options(meta, options))
        load_tensors(adapted, out_dir)
        path = out_dir / HEAD_NAME
        try:
            tensors = load_file(str(path))
        except (OSError, ValueError, RuntimeError) as err:
            raise GradguideError(f"cannot read the saved head: {err}", file=path) from err
        set_head(adapted.setfit.model_head, tensors, path)
        return adapted


def head_tensors(head: Any) -> dict[str, torch.Tensor]:
    """A fitted LogisticRegression as tensors: coef, intercept (in their own dtype: restored
    bit for bit), classes."""
    if not hasattr(head, "classes_"):
        raise GradguideError("the SetFit head was never fitted; nothing to save")
    return {
        "coef": torch.from_numpy(np.ascontiguousarray(head.coef_)),
        "intercept": torch.from_numpy(np.ascontiguousarray(head.intercept_)),
        "classes": torch.from_numpy(np.asarray(head.classes_, dtype=np.int64)),
    }


def set_head(head: Any, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Give an unfitted LogisticRegression the saved coefficients (what ``fit`` would set)."""
    missing = [k for k in ("coef", "intercept", "classes") if k not in tensors]
    if missing:
        raise GradguideError(f"the saved head lacks {', '.join(missing)}", file=path)
    coef = tensors["coef"].numpy()
    classes = tensors["classes"].numpy()
    rows = 1 if len(classes) == 2 else len(classes)
    if coef.ndim != 2 or coef.shape[0] != rows or tensors["intercept"].numel() != rows:
        raise GradguideError(
            f"the saved head's shapes do not fit {len(classes)} classes", file=path
        )
    head.coef_ = coef.copy()
    head.intercept_ = tensors["intercept"].numpy().copy()
    head.classes_ = classes.copy()
    head.n_features_in_ = int(coef.shape[1])
    head.n_iter_ = np.zeros(1, dtype=np.int32)
