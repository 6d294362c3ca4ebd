"""Turn (prompt, completion) candidates into scores.

Decoder LMs score a candidate by the log-likelihood of its tokens after the prompt (optionally
divided by their number). When every candidate is a single token, one forward pass over the prompt
scores all of them at once (the fast path). Sequences are left-padded so that every row ends at the
same position: only the last ``max completion length + 1`` logits are ever materialised, which keeps
memory flat for 49k-word vocabularies. Encoder models score a candidate by the scaled cosine between
the mean-pooled encodings of prompt and completion (the sentence-transformers reading of MiniLM).

Evaluation encodes a prefix shared by several rows once (``prefix_cache``): in-context
demonstrations, a MultiRC passage under its answer options, a premise under its candidates. The
shared prefixes are found on the rows' own token ids (gradguide.prefix_tree), their keys and values
are cached, and the rest of each row continues that cache; the scores equal full scoring.

Truncation policy: a sequence longer than ``max_length`` tokens loses tokens from the *start* of
the prompt (for in-context learning the oldest demonstrations go first); completions are never cut.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from gradguide.errors import GradguideError
from gradguide.prefix_tree import PrefixNode, shared_prefix_tree
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
    prefix_cache: bool = True
    prefix_min_tokens: int = 16
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


def completion_ids(tokenizer: Any, completion: str) -> list[int]:
    """A candidate completion's token ids as a decoder scores them (no special tokens): when
    every candidate is one token, a prompt is scored in one pass."""
    return _token_ids(tokenizer, completion, special=False)


def encode_causal(
    tokenizer: Any,
    instances: Sequence[Instance],
    prefix: str | list[int],
    options: ScoringOptions,
) -> Encoded:
    """Tokenise prefix, prompts and completions separately; choose the fast or the slow path.

    The prefix (in-context demonstrations) is tokenised on its own, so a row is always
    ``prefix ids + prompt ids + completion ids`` (its start cut when it exceeds ``max_length``).
    """
    cand_ids = [[completion_ids(tokenizer, c) for c in x.candidates] for x in instances]
    for x, ids in zip(instances, cand_ids, strict=True):
        if any(len(c) == 0 for c in ids):
            raise GradguideError(f"instance {x.id}: a candidate completion tokenises to nothing")
    fast = options.fast_path and all(len(c) == 1 for ids in cand_ids for c in ids)
    enc = Encoded(rows=[], completion_lens=[], owner=[], n_candidates=[], fast=fast)
    prefix_ids = prefix if isinstance(prefix, list) else prefix_token_ids(tokenizer, prefix)
    budget = options.max_length
    for i, (x, ids) in enumerate(zip(instances, cand_ids, strict=True)):
        prompt = prefix_ids + _token_ids(tokenizer, x.prompt, special=not prefix_ids)
        enc.n_candidates.append(len(ids))
        if fast:
            room = budget - 1
            if len(prompt) > room:
                prompt, enc.truncated = prompt[-room:], enc.truncated + 1
            enc.rows.append(prompt)
            enc.completion_lens.append(0)
            enc.owner.append((i, -1))
            enc.fast_targets.append([c[0] for c in ids])
            continue
        for j, c in enumerate(ids):
            room = budget - len(c)
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


def prefix_token_ids(tokenizer: Any, prefix: str) -> list[int]:
    """Token ids of an in-context prefix (with the tokenizer's special start tokens, if any)."""
    return _token_ids(tokenizer, prefix, special=True) if prefix else []


def _pad_left(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[k, width - len(r) :] = 1
    return ids, mask


def extend_cache(model: torch.nn.Module, parent: Any, parent_len: int, ids: list[int]) -> Any:
    """Keys and values of a prefix: ``parent``'s ``parent_len`` tokens (none when ``parent`` is
    None) followed by ``ids``, as a batch-1 cache (no grad). ``parent`` is copied, never changed:
    its siblings still need it. None when the model returns no cache."""
    device = next(model.parameters()).device
    total = parent_len + len(ids)
    extra: dict[str, Any] = {}
    if parent is not None:
        extra[_cache_kwarg(model)] = copy.deepcopy(parent)
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor([ids], device=device),
            attention_mask=torch.ones(1, total, dtype=torch.long, device=device),
            position_ids=torch.arange(parent_len, total, device=device)[None],
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _cache_kwarg(model: torch.nn.Module) -> str:
    """Name of the forward argument taking a KV cache (transformers renamed it in 5.x), read
    through a PEFT wrapper, whose forward takes ``**kwargs`` and passes them on."""
    params = inspect.signature(model.forward).parameters
    if "cache" in params:
        return "cache"
    base = getattr(model, "get_base_model", None)
    if "past_key_values" not in params and callable(base) and base() is not model:
        return _cache_kwarg(base())
    return "past_key_values"


def causal_row_logprobs(
    model: torch.nn.Module,
    rows: Sequence[list[int]],
    completion_lens: Sequence[int],
    pad_id: int,
    cache: Any = None,
    cache_len: int = 0,
) -> torch.Tensor:
    """Log-probabilities of the last tokens of each row: [rows, max(len)+1] for the window kept.

    Returns the log-softmax over the vocabulary at the last ``K = max(completion_lens) + 1``
    positions, shape [rows, K, vocab] (differentiable). With ``cache`` (a prefix's keys and
    values, ``cache_len`` tokens) the rows continue that prefix: it is attended to by every row
    and positions start after it, so the result equals scoring ``prefix + row`` in full.
    """
    ids, mask = _pad_left(rows, pad_id)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0) + cache_len
    keep = max(completion_lens) + 1
    device = next(model.parameters()).device
    extra: dict[str, Any] = {"use_cache": False}
    if cache is not None:
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(len(rows))
        mask = torch.cat([torch.ones(len(rows), cache_len, dtype=mask.dtype), mask], dim=1)
        extra = {"use_cache": True, _cache_kwarg(model): past}
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=position_ids.to(device),
        logits_to_keep=keep,
        **extra,
    )
    logits = out.logits[:, -keep:, :].float()
    return F.log_softmax(logits, dim=-1)


def causal_scores(
    model: torch.nn.Module,
    enc: Encoded,
    pad_id: int,
    normalize: bool,
    cache: Any = None,
    cache_len: int = 0,
) -> torch.Tensor:
    """Scores [instances, max candidates] (−inf where an instance has fewer candidates)."""
    logp = causal_row_logprobs(model, enc.rows, enc.completion_lens, pad_id, cache, cache_len)
    return scores_from_logprobs(enc, logp, normalize)


def scores_from_logprobs(enc: Encoded, logp: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Candidate scores [instances, max candidates] from the kept window of log-probabilities.

    ``logp`` is what :func:`causal_row_logprobs` returns ([rows, K, vocab]); the per-layer
    read-outs of gradguide.layerwise score their log-probabilities with this same function.
    """
    n = len(enc.n_candidates)
    width = max(enc.n_candidates)
    values = row_scores(enc, range(len(enc.rows)), logp, normalize)
    scores = torch.full((n, width), float("-inf"), device=logp.device)
    if enc.fast:
        for k, (i, _) in enumerate(enc.owner):
            scores[i, : len(values[k])] = values[k]
        return scores
    index = torch.tensor(enc.owner, device=logp.device)
    return scores.index_put((index[:, 0], index[:, 1]), torch.stack(values))


def row_scores(
    enc: Encoded, rows: Sequence[int], logp: torch.Tensor, normalize: bool
) -> list[torch.Tensor]:
    """The scores read from each row of ``logp`` (``logp[b]`` belongs to ``enc`` row ``rows[b]``):
    one per candidate on the fast path, the row's one candidate otherwise."""
    keep = logp.shape[1]
    out = []
    for b, k in enumerate(rows):
        if enc.fast:
            out.append(logp[b, -1, torch.tensor(enc.fast_targets[k], device=logp.device)])
            continue
        c = enc.completion_lens[k]
        targets = torch.tensor(enc.rows[k][-c:], device=logp.device)
        tok = logp[b, keep - 1 - c : keep - 1, :].gather(-1, targets[:, None]).squeeze(-1)
        out.append(tok.mean() if normalize else tok.sum())
    return out


def _mean_pool(
    model: torch.nn.Module, tokenizer: Any, texts: list[str], max_length: int
) -> torch.Tensor:
    # Right padding whatever the tokenizer's default: absolute positions count from the left.
    batch = tokenizer(
        texts,
        padding=True,
        padding_side="right",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return F.normalize(pooled.float(), dim=-1)


def _encoder_limit(tokenizer: Any, options: ScoringOptions) -> int:
    """Tokens an encoder pass keeps of a text: the option, the tokenizer's and BERT's 512."""
    return min(options.max_length, int(getattr(tokenizer, "model_max_length", 512) or 512), 512)


def encoder_scores(
    model: torch.nn.Module,
    tokenizer: Any,
    instances: Sequence[Instance],
    prefix: str,
    options: ScoringOptions,
) -> torch.Tensor:
    """Scaled cosine between pooled prompt and pooled completion encodings (differentiable)."""
    limit = _encoder_limit(tokenizer, options)
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
    if lm.predictor is not None:
        return lm.predictor(instances, prefix, options)
    if lm.kind == "encoder":
        return encoder_scores(lm.model, lm.tokenizer, instances, prefix, options)
    enc = encode_causal(lm.tokenizer, instances, prefix, options)
    return causal_scores(lm.model, enc, lm.tokenizer.pad_token_id, options.length_normalize)


def pass_size(lm: Any, instance: Instance, options: ScoringOptions) -> tuple[int, int]:
    """(rows, longest row in tokens) that scoring ``instance`` puts through the model: its
    candidate rows (one on the fast path) for a decoder; its prompt and candidates for an
    encoder (which pads them apart: rows × longest is then an upper bound)."""
    if lm.kind == "encoder":
        texts = [instance.prompt, *(c.strip() for c in instance.candidates)]
        longest = max(len(_token_ids(lm.tokenizer, t, special=True)) for t in texts)
        return len(texts), min(longest, _encoder_limit(lm.tokenizer, options))
    enc = encode_causal(lm.tokenizer, [instance], "", options)
    return len(enc.rows), max(len(r) for r in enc.rows)


@dataclass
class ScoredSet:
    """Scores of a whole evaluation set, with what the run record needs to know about them."""

    scores: list[list[float]]
    predictions: list[int]
    fast_path: bool
    truncated: int
    sequences: int
    shared_prefixes: int = 0


def check_options(options: ScoringOptions) -> None:
    """Refuse scoring settings that cannot work, before anything is loaded or trained."""
    if options.prefix_min_tokens < 1:
        raise GradguideError(
            f"must be at least 1, got {options.prefix_min_tokens}",
            field="scoring.prefix_min_tokens",
        )


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
    check_options(options)
    causal = lm.kind != "encoder" and lm.predictor is None  # a method's own head: no prompts
    if causal and options.prefix_cache and instances:
        return _score_shared_prefixes(lm, instances, prefix, options, progress)
    order = sorted(range(len(instances)), key=lambda i: len(instances[i].prompt))
    scores: list[list[float]] = [[] for _ in instances]
    fast, truncated, sequences = True, 0, 0
    prefix_ids = prefix_token_ids(lm.tokenizer, prefix) if causal else []
    pad = lm.tokenizer.pad_token_id
    with torch.inference_mode():
        for start in range(0, len(order), options.batch_size):
            chunk = order[start : start + options.batch_size]
            batch = [instances[i] for i in chunk]
            if lm.predictor is not None:  # a method's own head (SetFit): one sequence each
                s = lm.predictor(batch, prefix, options)
                sequences += len(batch)
                fast = False
            elif not causal:
                s = encoder_scores(lm.model, lm.tokenizer, batch, prefix, options)
                sequences += len(batch) + sum(len(x.candidates) for x in batch)
                fast = False
            else:
                enc = encode_causal(lm.tokenizer, batch, prefix_ids, options)
                s = causal_scores(lm.model, enc, pad, options.length_normalize)
                fast, truncated = fast and enc.fast, truncated + enc.truncated
                sequences += len(enc.rows)
            for i, row, x in zip(chunk, s.tolist(), batch, strict=True):
                scores[i] = row[: len(x.candidates)]
            if progress is not None:
                progress(len(chunk))
    predictions = [max(range(len(r)), key=r.__getitem__) for r in scores]
    return ScoredSet(scores, predictions, fast, truncated, sequences)


def _score_shared_prefixes(
    lm: Any,
    instances: Sequence[Instance],
    prefix: str,
    options: ScoringOptions,
    progress: Any,
) -> ScoredSet:
    """``score_dataset`` for a decoder: every shared prefix is encoded once, then continued.

    Rows are grouped by the token prefixes they share (gradguide.prefix_tree); a group's prefix
    extends its parent's cache, and its rows are scored in batches (shortest rest first) against
    it. Rows sharing nothing are scored in full, as are all of a group's rows should the model
    return no cache.
    """
    model, pad = lm.model, lm.tokenizer.pad_token_id
    enc = encode_causal(lm.tokenizer, instances, prefix_token_ids(lm.tokenizer, prefix), options)
    limits = [len(r) - c - 1 for r, c in zip(enc.rows, enc.completion_lens, strict=True)]
    tree = shared_prefix_tree(enc.rows, limits, options.prefix_min_tokens)
    scores = [[float("-inf")] * n for n in enc.n_candidates]
    pending = [0] * len(instances)
    for i, _ in enc.owner:
        pending[i] += 1
    shared = 0
    stack: list[tuple[PrefixNode, Any, int]] = [(tree, None, 0)]
    with torch.inference_mode():
        while stack:
            node, cache, cached = stack.pop()
            rows = node.rows
            if node.length > cached:
                ids = enc.rows[node.example][cached : node.length]
                cache, cached = extend_cache(model, cache, cached, ids), node.length
                shared += 1
                if cache is None:
                    rows, cached = node.all_rows(), 0
            if cache is not None or not node.length:
                stack.extend((child, cache, cached) for child in reversed(node.children))
            rows = sorted(rows, key=lambda k: len(enc.rows[k]))
            for start in range(0, len(rows), options.batch_size):
                chunk = rows[start : start + options.batch_size]
                logp = causal_row_logprobs(
                    model,
                    [enc.rows[k][cached:] for k in chunk],
                    [enc.completion_lens[k] for k in chunk],
                    pad,
                    cache if cached else None,
                    cached,
                )
                done = 0
                for k, value in zip(
                    chunk, row_scores(enc, chunk, logp, options.length_normalize), strict=True
                ):
                    i, j = enc.owner[k]
                    if enc.fast:
                        scores[i] = value.tolist()
                    else:
                        scores[i][j] = float(value)
                    pending[i] -= 1
                    done += pending[i] == 0
                if progress is not None and done:
                    progress(done)
    predictions = [max(range(len(r)), key=r.__getitem__) for r in scores]
    return ScoredSet(scores, predictions, enc.fast, enc.truncated, len(enc.rows), shared)
