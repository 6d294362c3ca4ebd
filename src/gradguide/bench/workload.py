"""What a run's model reads per instance of a task, in characters, on each scoring path.

The run-time estimator (gradguide.bench.estimate) scales its per-model constants, measured on
SST-2, by this. How much text a model reads depends on how gradguide.scoring scores the task:

- a decoder whose candidates are all single tokens reads each prompt once (the fast path):
  ``longest``, the prompt and its longest candidate, in training; in evaluation the prefix cache
  reads a prefix that prompts share once (``shared``: a MultiRC passage under the answer options
  of all its questions, each option an instance);
- a decoder otherwise reads one row per candidate, prompt and candidate, in training (``rows``)
  and, with the evaluation's prefix cache, each prefix that rows share once (``cached``: the
  characters of a trie over the evaluation set's rows), plus ``ROW_CHARS`` for each row beyond
  the first (the pass that continues the cache for each candidate);
- an encoder reads the prompt and each candidate apart (``pairs``).

Whether a decoder's candidates are single tokens needs its tokenizer
(gradguide.models.load_tokenizer); without one the estimate keeps ``longest``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any

from gradguide.prefix_tree import common_prefix
from gradguide.scoring import completion_ids
from gradguide.tasks.base import Instance

#: What continuing the prefix cache costs per candidate row beyond its characters, as characters
#: of a decoder's one-pass reading: about 30 ms a row for smollm2-135m, fitted on its archived
#: zero-shot runs of banking77 (77 rows per example: 1102 s measured, 250 s from characters
#: alone) and legal_unfair_tos (9 rows: 134 s against 61 s); benchmarks/estimate_accuracy.py.
ROW_CHARS = 50.0


@dataclasses.dataclass(frozen=True)
class TaskText:
    """Mean characters per instance of a set of instances, by how they are read."""

    longest: float  # prompt + its longest candidate (one pass)
    shared: float  # one pass, with a prefix that prompts share read once
    rows: float  # each candidate as its own row after the prompt
    cached: float  # those rows with every prefix they share read once
    pairs: float  # prompt once, each candidate on its own
    candidates: float = 1.0  # mean candidates per instance

    @classmethod
    def of(cls, instances: Sequence[Instance], *, cache: bool = True) -> TaskText:
        """Measure ``instances`` (all zero when there are none). ``cache``: whether the prefix
        cache reads them (an evaluation set); a training pool is read in full, so its shared and
        cached readings are its full ones, and no trie is built over its rows."""
        n = len(instances)
        if not n:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        prompts = sum(len(x.prompt) for x in instances)
        longest = sum(max(map(len, x.candidates)) for x in instances) + prompts
        completions = sum(len(c) for x in instances for c in x.candidates)
        rows = sum(len(x.prompt) * len(x.candidates) for x in instances) + completions
        shared, cached = longest, rows
        if cache:
            shared = longest - prompts + trie_chars(x.prompt for x in instances)
            cached = trie_chars(x.prompt + c for x in instances for c in x.candidates)
        return cls(
            longest=longest / n,
            shared=shared / n,
            rows=rows / n,
            cached=cached / n,
            pairs=(prompts + completions) / n,
            candidates=sum(len(x.candidates) for x in instances) / n,
        )


def trie_chars(texts: Iterable[str]) -> int:
    """Characters of a trie holding ``texts``: each prefix that several of them share once."""
    ordered = sorted(texts)
    if not ordered:
        return 0
    return len(ordered[0]) + sum(len(b) - common_prefix(a, b) for a, b in pairwise(ordered))


def single_token(tokenizer: Any, candidates: Iterable[str]) -> bool:
    """True when every candidate is one token (decoders then score a prompt in one pass)."""
    return all(len(completion_ids(tokenizer, c)) == 1 for c in set(candidates))


def read_chars(text: TaskText, kind: str | None, one_pass: bool | None, cache: bool) -> float:
    """Characters per instance that scoring ``text`` reads: ``kind`` the model's ("causal" or
    "encoder", None when unknown), ``one_pass`` whether its candidates are single tokens (None
    when unknown), ``cache`` whether shared prefixes are read once (evaluation)."""
    if kind == "encoder":
        return text.pairs
    if kind != "causal" or one_pass is None:
        return text.longest
    if one_pass:
        return text.shared if cache else text.longest
    return text.cached + ROW_CHARS * (text.candidates - 1) if cache else text.rows
