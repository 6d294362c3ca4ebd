"""Turn (prompt, completion) candidates into scores.

Decoder LMs score a candidate by the log-likelihood of its tokens after the prompt (optionally
divided by their number). When every candidate is a single token, one forward pass over the prompt
scores all of them at once (the fast path). Sequences are left-padded so that every row ends at the
same position: only the last ``max completion length + 1`` logits are ever materialised, which keeps
memory flat for 49k-word vocabularies. Encoder models score a candidate by the scaled cosine between
the mean-pooled encodings of prompt and completion (the sentence-transformers reading of MiniLM).

Truncation policy: a sequence longer than ``max_length`` tokens loses tokens from the *start* of
the prompt (for in-context learning the oldest demonstrations go first); completions are never cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from gradguide.errors import GradguideError
from gradguide.tasks.base import Instance

ENCODER_SCALE = 20.0
TRUNCATION_POLICY = (
    "decoder: prompt tokens dropped from the start so that prompt + completion fit max_length; "
    "completions never cut. encoder: prompt and completion each cut at the end to max_length."
)


@dataclass(frozen=True)
class ScoringOptions:
    """How candidates are scored; every field is written into the run record."""

    batch_size: int = 16
    max_length: int = 1024
    length_normalize: bool = False
    fast_path: bool = True
    demo_separator: str = "\n\n"


@dataclass
class Encoded:
    """Token rows for a list of instances: one row per instance (fast path) or per candidate."""

    rows: list[list[int]]
    completion_lens: list[int]
    owner: list[tuple[int, int]]
    n_candidates: list[int]
    fast: bool
    fast_targets: list[list[int]] = field(default_factory=list)
    truncated: int = 0


def build_prefix(demonstrations: Sequence[Instance], separator: str = "\n\n") -> str:
    """The in-context prefix: each demonstration's prompt and gold completion, then a separator."""
    return "".join(d.demonstration + separator for d in demonstrations)


def _token_ids(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode_causal(
    tokenizer: Any, instances: Sequence[Instance], prefix: str, options: ScoringOptions
) -> Encoded:
    """Tokenise prompts and completions separately and decide between fast and slow path."""
    cand_ids = [[_token_ids(tokenizer, c, special=False) for c in x.candidates] for x in instances]
    for x, ids in zip(instances, cand_ids, strict=True):
        if any(len(c) == 0 for c in ids):
            raise GradguideError(f"instance {x.id}: a candidate completion tokenises to nothing")
    fast = options.fast_path and all(len(c) == 1 for ids in cand_ids for c in ids)
    enc = Encoded(rows=[], completion_lens=[], owner=[], n_candidates=[], fast=fast)
    for i, (x, ids) in enumerate(zip(instances, cand_ids, strict=True)):
        prompt = _token_ids(tokenizer, prefix + x.prompt, special=True)
        enc.n_candidates.append(len(ids))
        if fast:
            room = options.max_length - 1
            if len(prompt) > room:
                prompt, enc.truncated = prompt[-room:], enc.truncated + 1
            enc.rows.append(prompt)
            enc.completion_lens.append(0)
            enc.owner.append((i, -1))
            enc.fast_targets.append([c[0] for c in ids])
            continue
        for j, c in enumerate(ids):
            room = options.max_length - len(c)
            if room < 1:
                raise GradguideError(
                    f"instance {x.id}: completion {j} has {len(c)} tokens, over max_length "
                    f"{options.max_length}"
                )
            p = prompt
            if len(p) > room:
                p, enc.truncated = p[-room:], enc.truncated + 1
            enc.rows.append(p + c)
            enc.completion_lens.append(len(c))
            enc.owner.append((i, j))
    return enc


def _pad_left(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[k, width - len(r) :] = 1
    return ids, mask


def causal_row_logprobs(
    model: torch.nn.Module, rows: Sequence[list[int]], completion_lens: Sequence[int], pad_id: int
) -> torch.Tensor:
    """Log-probabilities of the last tokens of each row: [rows, max(len)+1] for the window kept.

    Returns the log-softmax over the vocabulary at the last ``K = max(completion_lens) + 1``
    positions, shape [rows, K, vocab] (differentiable).
    """
    ids, mask = _pad_left(rows, pad_id)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = max(completion_lens) + 1
    device = next(model.parameters()).device
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=position_ids.to(device),
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits[:, -keep:, :].float()
    return F.log_softmax(logits, dim=-1)


def causal_scores(
    model: torch.nn.Module, enc: Encoded, pad_id: int, normalize: bool
) -> torch.Tensor:
    """Scores [instances, max candidates] (−inf where an instance has fewer candidates)."""
    n = len(enc.n_candidates)
    width = max(enc.n_candidates)
    logp = causal_row_logprobs(model, enc.rows, enc.completion_lens, pad_id)
    keep = logp.shape[1]
    device = logp.device
    if enc.fast:
        scores = torch.full((n, width), float("-inf"), device=device)
        for k, (i, _) in enumerate(enc.owner):
            targets = torch.tensor(enc.fast_targets[k], device=device)
            scores[i, : len(targets)] = logp[k, -1, targets]
        return scores
    per_row = []
    for k, c in enumerate(enc.completion_lens):
        targets = torch.tensor(enc.rows[k][-c:], device=device)
        tok = logp[k, keep - 1 - c : keep - 1, :].gather(-1, targets[:, None]).squeeze(-1)
        per_row.append(tok.mean() if normalize else tok.sum())
    scores = torch.full((n, width), float("-inf"), device=device)
    index = torch.tensor(enc.owner, device=device)
    return scores.index_put((index[:, 0], index[:, 1]), torch.stack(per_row))


def _mean_pool(
    model: torch.nn.Module, tokenizer: Any, texts: list[str], max_length: int
) -> torch.Tensor:
    batch = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return F.normalize(pooled.float(), dim=-1)


def encoder_scores(
    model: torch.nn.Module,
    tokenizer: Any,
    instances: Sequence[Instance],
    prefix: str,
    options: ScoringOptions,
) -> torch.Tensor:
    """Scaled cosine between pooled prompt and pooled completion encodings (differentiable)."""
    limit = min(options.max_length, int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
    prompts = _mean_pool(model, tokenizer, [prefix + x.prompt for x in instances], limit)
    flat = [c.strip() for x in instances for c in x.candidates]
    completions = _mean_pool(model, tokenizer, flat, limit)
    width = max(len(x.candidates) for x in instances)
    scores = torch.full((len(instances), width), float("-inf"), device=prompts.device)
    k = 0
    for i, x in enumerate(instances):
        m = len(x.candidates)
        scores[i, :m] = ENCODER_SCALE * completions[k : k + m] @ prompts[i]
        k += m
    return scores


def candidate_scores(
    lm: Any, instances: Sequence[Instance], prefix: str = "", options: ScoringOptions | None = None
) -> torch.Tensor:
    """Scores of every candidate of every instance, as one differentiable tensor [n, max C].

    This is the function training differentiates; ``score_dataset`` wraps it for evaluation.
    """
    options = options or ScoringOptions()
    if lm.kind == "encoder":
        return encoder_scores(lm.model, lm.tokenizer, instances, prefix, options)
    enc = encode_causal(lm.tokenizer, instances, prefix, options)
    return causal_scores(lm.model, enc, lm.tokenizer.pad_token_id, options.length_normalize)


@dataclass
class ScoredSet:
    """Scores of a whole evaluation set, with what the run record needs to know about them."""

    scores: list[list[float]]
    predictions: list[int]
    fast_path: bool
    truncated: int
    sequences: int


def score_dataset(
    lm: Any,
    instances: Sequence[Instance],
    prefix: str = "",
    options: ScoringOptions | None = None,
    progress: Any = None,
) -> ScoredSet:
    """Score a whole set in length-sorted batches (no gradients) and take the arg-max candidate.

    ``progress`` is an optional callable receiving the number of instances just scored.
    """
    options = options or ScoringOptions()
    order = sorted(range(len(instances)), key=lambda i: len(instances[i].prompt))
    scores: list[list[float]] = [[] for _ in instances]
    fast, truncated, sequences = True, 0, 0
    with torch.inference_mode():
        for start in range(0, len(order), options.batch_size):
            chunk = order[start : start + options.batch_size]
            batch = [instances[i] for i in chunk]
            if lm.kind == "encoder":
                s = encoder_scores(lm.model, lm.tokenizer, batch, prefix, options)
                sequences += len(batch) + sum(len(x.candidates) for x in batch)
                fast = False
            else:
                enc = encode_causal(lm.tokenizer, batch, prefix, options)
                s = causal_scores(
                    lm.model, enc, lm.tokenizer.pad_token_id, options.length_normalize
                )
                fast, truncated = fast and enc.fast, truncated + enc.truncated
                sequences += len(enc.rows)
            for i, row, x in zip(chunk, s.tolist(), batch, strict=True):
                scores[i] = row[: len(x.candidates)]
            if progress is not None:
                progress(len(chunk))
    predictions = [max(range(len(r)), key=r.__getitem__) for r in scores]
    return ScoredSet(scores, predictions, fast, truncated, sequences)
