"""Per-layer diagnostics (the OFA paper's Figures 1–3): logit-lens probes, sharpness, step ratio.

For a decoder model (base model with in-context demonstrations, LayerNorm-tuned, OFA-tuned) and
some evaluation examples, one forward pass per batch records every block's input and output
(gradguide.guidance.ofa_blocks.BlockCapture) and gives, per layer:

* probe accuracy and loss: the hidden state after block l (index 0: the embeddings; the last
  index: the model's own output) read out through the final normalisation and the output head
  ("logit lens", [choice] of ../shared/papers/ofa-notes.md), its candidates scored exactly as
  gradguide.scoring scores the model's own output (same encoding, same candidate log-likelihoods),
  then accuracy and cross entropy over the candidates, as in training;
* sharpness of block t: Hutchinson's tr(P_t H_t P_tᵀ) per token, the same estimator as the
  ``ofa-sharp`` term (same probes, JVP mode and fd step from ``guidance.ofa``), signed: the term
  penalises max(S_t, 0), this reports S_t itself (negative where the block expands);
* step ratio of block t: s_{t+1}/(s_t + eps), and the step norm s_t itself, as in ``ofa-step``.

Sharpness and step ratio are means over the non-padding tokens of the scored sequences
(demonstrations included for in-context learning). Probes come from a generator seeded from the
run seed alone (step -1 of gradguide.guidance.ofa.probe_seed), on the model's device like the
term's, so the numbers are repeatable (on one kind of device: CPU and CUDA generators differ).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from gradguide.errors import GradguideError
from gradguide.guidance.ofa import OfaOptions, probe_seed
from gradguide.guidance.ofa_blocks import BlockCapture
from gradguide.guidance.ofa_measures import masked, sharpness_sums, step_norms, step_ratio_sums
from gradguide.models import LoadedModel
from gradguide.scoring import (
    ScoringOptions,
    build_prefix,
    causal_row_logprobs,
    encode_causal,
    prefix_token_ids,
    scores_from_logprobs,
)
from gradguide.tasks.base import Instance

NOTES = (
    "probe_accuracy/probe_loss[l]: hidden state after block l-1 (l=0: embeddings) through the "
    "final norm and output head, candidates scored as in gradguide.scoring; sharpness[t]: "
    "Hutchinson tr(P_t H_t P_t^T) per token of block t (P_t = diag of its input norm gain), "
    "signed (ofa-sharp penalises max(sharpness[t], 0)); "
    "step_ratio[t]: s_(t+1)/(s_t+eps); step_norm[t]: s_t = ||Z_(t+1) - Z_t||; token means over "
    "non-padding tokens, demonstrations included"
)


def readout_modules(lm: LoadedModel, capture: BlockCapture) -> tuple[torch.nn.Module, Any]:
    """The final normalisation (a norm that is a direct child of the blocks' parent) and head."""
    norms = [m for _, m in capture.stack.parent.named_children() if "Norm" in type(m).__name__]
    get_head = getattr(lm.model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not norms or head is None:
        raise GradguideError(
            "the logit-lens read-out needs a final normalisation beside the blocks and an output "
            f"head; {lm.name} has {'no final norm' if not norms else 'no output head'}",
            field="layer_diagnostics",
        )
    return norms[-1], head


def layer_diagnostics(
    lm: LoadedModel,
    instances: Sequence[Instance],
    demonstrations: Sequence[Instance] = (),
    options: ScoringOptions | None = None,
    ofa: OfaOptions | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-layer probe accuracy and loss, sharpness, step ratio and step norm (JSON-ready)."""
    started = time.perf_counter()
    options = options or ScoringOptions()
    ofa = ofa or OfaOptions()
    if lm.kind != "causal":
        raise GradguideError(
            f"layer diagnostics read hidden states out through an LM head: {lm.name} is an "
            f"{lm.kind} model",
            field="layer_diagnostics",
        )
    if not instances:
        raise GradguideError("no evaluation examples to diagnose", field="layer_diagnostics")
    capture = BlockCapture(lm.model)
    try:
        norm, head = readout_modules(lm, capture)
        stack = capture.stack
        n_blocks = len(stack.blocks)
        prefix_ids = prefix_token_ids(
            lm.tokenizer, build_prefix(demonstrations, options.demo_separator)
        )
        # on the model's device, as the ofa-sharp term draws them: no copy per probe
        device = next(lm.model.parameters()).device
        generator = torch.Generator(device).manual_seed(probe_seed(seed, -1))
        correct = torch.zeros(n_blocks + 1, dtype=torch.float64)
        losses = torch.zeros(n_blocks + 1, dtype=torch.float64)
        ratio = torch.zeros(max(n_blocks - 1, 0), dtype=torch.float64)
        sharp = torch.zeros(n_blocks, dtype=torch.float64)
        steps = torch.zeros(n_blocks, dtype=torch.float64)
        tokens = 0.0
        with torch.no_grad():
            for start in range(0, len(instances), options.batch_size):
                batch = instances[start : start + options.batch_size]
                enc = encode_causal(lm.tokenizer, batch, prefix_ids, options)
                logp = causal_row_logprobs(
                    lm.model, enc.rows, enc.completion_lens, lm.tokenizer.pad_token_id
                )
                (p,) = capture.take()
                keep = logp.shape[1]
                gold = torch.tensor([x.gold for x in batch], device=logp.device)
                for layer, h in enumerate([p.inputs[0], *p.outputs]):
                    logits = head(norm(h[:, -keep:, :])).float()
                    scores = scores_from_logprobs(
                        enc, F.log_softmax(logits, dim=-1), options.length_normalize
                    )
                    losses[layer] += float(F.cross_entropy(scores, gold, reduction="sum"))
                    correct[layer] += float((scores.argmax(-1) == gold).sum())
                if n_blocks > 1:
                    pairs = list(range(n_blocks - 1))
                    ratio += step_ratio_sums(p, pairs, ofa.eps, ofa.squared).double().cpu()
                sharp += (
                    sharpness_sums(
                        p, stack, range(n_blocks), generator, ofa.probes, ofa.jvp, ofa.fd_eps
                    )
                    .double()
                    .cpu()
                )
                norms = [masked(s, p.mask).sum() for s in step_norms(p)]
                steps += torch.stack(norms).double().cpu()
                tokens += float(p.tokens())
    finally:
        capture.remove()
    n = len(instances)
    tok = max(tokens, 1.0)
    return {
        "n_examples": n,
        "blocks": n_blocks,
        "demonstrations": len(demonstrations),
        "tokens": int(tokens),
        "probe_accuracy": (correct / n).tolist(),
        "probe_loss": (losses / n).tolist(),
        "sharpness": (sharp / tok).tolist(),
        "step_ratio": (ratio / tok).tolist(),
        "step_norm": (steps / tok).tolist(),
        "estimator": {
            "probes": ofa.probes,
            "probe": "rademacher",
            "jvp": ofa.jvp,
            "fd_eps": ofa.fd_eps if ofa.jvp == "fd" else None,
            "squared": ofa.squared,
            "eps": ofa.eps,
            "preconditioner": f"gain of each block's {stack.preconditioner_name}",
            "seed": seed,
        },
        "notes": NOTES,
        "seconds": time.perf_counter() - started,
    }
