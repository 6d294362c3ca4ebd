"""Shared-prefix caching in evaluation: cached scores equal full scores for every task shape."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from test_scoring import manual_logprob, single_token_words

from gradguide.errors import GradguideError
from gradguide.models import load_model
from gradguide.prefix_tree import common_prefix, shared_prefix_tree
from gradguide.scoring import (
    ScoringOptions,
    candidate_scores,
    causal_row_logprobs,
    extend_cache,
    score_dataset,
)
from gradguide.tasks.base import Instance
from gradguide.train import TrainConfig, validate

PASSAGES = (
    "The river ran past the old mill, and the children watched the boats go by every "
    "morning before school. In winter the water froze and nobody could sail at all.",
    "A small shop sold bread.",
    "Every year the town held a fair in the field behind the church. Farmers brought their "
    "best animals, the baker made pies for the whole village, and in the evening there was "
    "music and dancing until late. One year it rained so hard that the fair was moved into "
    "the school hall, which was far too small for the crowds.",
)
QUESTIONS = (
    ("What did the children watch?", ("boats", "the mill", "fish in the river")),
    ("When did it freeze?", ("in winter", "every morning")),
)


@pytest.fixture(scope="module")
def lm():
    """tiny-llama with sharpened attention, so that a wrong position or key shows in the scores."""
    lm = load_model("tiny-llama", seed=0)
    with torch.no_grad():
        for name, param in lm.model.named_parameters():
            if "q_proj." in name or "k_proj." in name:
                param.mul_(10.0)
    return lm


def multirc_like(candidates: tuple[str, ...]) -> list[Instance]:
    """One instance per answer option, grouped by question, several questions per passage."""
    out = []
    for p, passage in enumerate(PASSAGES):
        for q, (question, answers) in enumerate(QUESTIONS):
            for a, answer in enumerate(answers):
                out.append(
                    Instance(
                        id=f"val:{p}/{q}/{a}",
                        prompt=f"{passage}\nQuestion: {question}\nAnswer: {answer}\nIs the "
                        "answer correct?",
                        candidates=candidates,
                        gold=(p + a) % 2,
                        label=str((p + a) % 2),
                        group=f"{p}/{q}",
                    )
                )
    return out


def assert_same(cached: Any, full: Any) -> None:
    assert cached.predictions == full.predictions
    torch.testing.assert_close(
        torch.tensor(cached.scores), torch.tensor(full.scores), rtol=0, atol=1e-4
    )


def both(lm: Any, xs: list[Instance], prefix: str = "", **opts: Any) -> tuple[Any, Any]:
    cached = score_dataset(lm, xs, prefix, ScoringOptions(prefix_cache=True, **opts))
    full = score_dataset(lm, xs, prefix, ScoringOptions(prefix_cache=False, **opts))
    return cached, full


def test_tree_nests_shared_prefixes_and_respects_limits() -> None:
    demo = list(range(100, 120))
    rows = [
        [*demo, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        [*demo, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12],
        [*demo, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7],
        [5, 6, 7],
        [*demo, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13],
    ]
    limits = [len(r) - 1 for r in rows]
    tree = shared_prefix_tree(rows, limits, min_tokens=4)
    assert tree.length == 0 and tree.rows == [3]
    (icl,) = tree.children
    assert icl.length == 20 and icl.rows == [2]
    (passage,) = icl.children
    assert passage.length == 30 and sorted(passage.rows) == [0, 1, 4]
    assert rows[passage.example][:30] == rows[0][:30]
    assert sorted(tree.all_rows()) == [0, 1, 2, 3, 4]
    # a limit caps what a row may share; too short a shared part makes no group
    capped = shared_prefix_tree(rows, [10, *limits[1:]], min_tokens=4)
    assert 0 in capped.children[0].rows
    assert shared_prefix_tree(rows, limits, min_tokens=40).children == []
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    with pytest.raises(ValueError):
        shared_prefix_tree(rows, limits, min_tokens=0)


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("batch_size", [2, 5, 64])
def test_multirc_groups_score_like_full_rows(lm, fast_path: bool, batch_size: int) -> None:
    """Passages of different lengths, ragged rests (left padding), groups spanning batches."""
    words = single_token_words(lm.tokenizer, 2)
    xs = multirc_like(tuple(words) if fast_path else (" no way", " yes it is"))
    cached, full = both(lm, xs, batch_size=batch_size, fast_path=fast_path, prefix_min_tokens=4)
    assert cached.shared_prefixes >= len(PASSAGES)
    assert cached.fast_path is fast_path and cached.sequences == full.sequences
    assert_same(cached, full)
    for x, row in list(zip(xs, cached.scores, strict=True))[::4]:
        for c, value in zip(x.candidates, row, strict=True):
            assert value == pytest.approx(manual_logprob(lm, x.prompt, c), abs=1e-4)


def test_multirc_groups_under_an_in_context_prefix(lm) -> None:
    """Demonstrations, then a passage within them: the nested caches extend their parent."""
    words = single_token_words(lm.tokenizer, 2)
    xs = multirc_like(tuple(words))
    demos = multirc_like(tuple(words))[:2]
    prefix = "".join(d.demonstration + "\n\n" for d in demos)
    cached, full = both(lm, xs, prefix, batch_size=3, prefix_min_tokens=4)
    assert cached.shared_prefixes >= 1 + len(PASSAGES)
    assert_same(cached, full)


def test_boolq_shape_some_passages_shared(lm) -> None:
    """BoolQ: most passages have one question, some several; singletons are scored in full."""
    words = single_token_words(lm.tokenizer, 2)
    pairs = [(0, "did it freeze"), (1, "was bread sold"), (0, "did boats go by"), (2, "was it dry")]
    pairs += [(2, "was the hall big enough for the crowds")]
    xs = [
        Instance(f"val:{k}", f"{PASSAGES[p]}\nQuestion: {q}?\nAnswer:", tuple(words), k % 2, "")
        for k, (p, q) in enumerate(pairs)
    ]
    cached, full = both(lm, xs, batch_size=2, prefix_min_tokens=4)
    assert cached.shared_prefixes == 2  # passages 0 and 2; passage 1 stands alone
    assert_same(cached, full)


def test_copa_shape_candidates_share_the_premise(lm) -> None:
    """COPA: multi-token candidates (the slow path) share their premise; some share tokens."""
    premises = ("The man broke his toe because", "The girl was hungry so", "It rained all day so")
    choices = (" he dropped a hammer on his foot.", " he got a hole in his sock.")
    xs = [Instance(f"val:{k}", p, choices, k % 2, "") for k, p in enumerate(premises)]
    cached, full = both(lm, xs, batch_size=4, prefix_min_tokens=2)
    assert cached.shared_prefixes >= len(premises) and not cached.fast_path
    assert_same(cached, full)
    for x, row in zip(xs, cached.scores, strict=True):
        for c, value in zip(x.candidates, row, strict=True):
            assert value == pytest.approx(manual_logprob(lm, x.prompt, c), abs=1e-4)


def test_prefix_merging_across_the_boundary_is_not_cached_whole(lm) -> None:
    """Shared text ending inside a word (" sa" + "i"/"y"): the cache stops at a token boundary."""
    tok = lm.tokenizer
    head, w1, w2 = PASSAGES[0] + " They", " sai", " say"
    for a, b in ((" sai", " say"), (" was", " way"), (" nor", " not")):
        if all(tok(w, add_special_tokens=False)["input_ids"].__len__() == 1 for w in (a, b)):
            w1, w2 = a, b
            break
    shared_text = head + w1[:-1]
    prompts = [shared_text + w1[-1] + " nothing.\nTrue?", shared_text + w2[-1] + " it.\nTrue?"]
    text_ids = tok(shared_text, add_special_tokens=False)["input_ids"]
    row_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    # the premise: the shared text, tokenised on its own, is not a token prefix of the prompts
    assert all(r[: len(text_ids)] != text_ids for r in row_ids)
    words = single_token_words(tok, 2)
    xs = [Instance(f"t:{k}", p, tuple(words), 0, "") for k, p in enumerate(prompts)]
    cached, full = both(lm, xs, prefix_min_tokens=4)
    assert cached.shared_prefixes == 1
    tree = shared_prefix_tree(row_ids, [len(r) - 1 for r in row_ids], 4)
    assert tree.children[0].length == common_prefix(*row_ids) < len(text_ids)
    assert_same(cached, full)
    for x, row in zip(xs, cached.scores, strict=True):
        for c, value in zip(x.candidates, row, strict=True):
            assert value == pytest.approx(manual_logprob(lm, x.prompt, c), abs=1e-4)


def test_a_cache_is_never_changed_by_what_continues_it(lm) -> None:
    """Extending a parent and scoring rows against a cache leave that cache as it was."""
    ids = lm.tokenizer(PASSAGES[2], add_special_tokens=False)["input_ids"]
    parent = extend_cache(lm.model, None, 0, ids[:20])
    snapshot = [(k.clone(), v.clone()) for k, v, *_ in parent]
    child_a = extend_cache(lm.model, parent, 20, ids[20:40])
    child_b = extend_cache(lm.model, parent, 20, ids[20:30])
    rests = [ids[40:50], ids[40:45]]
    with torch.inference_mode():
        first = causal_row_logprobs(lm.model, rests, [1, 1], 0, child_a, 40)
        again = causal_row_logprobs(lm.model, rests, [1, 1], 0, child_a, 40)
        full = causal_row_logprobs(lm.model, [ids[:50], ids[:45]], [1, 1], 0)
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(first, full, rtol=0, atol=1e-4)
    assert parent.get_seq_length() == 20 and child_b.get_seq_length() == 30
    for (k, v, *_), (k0, v0) in zip(parent, snapshot, strict=True):
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_sibling_groups_under_one_parent_see_the_parent_unchanged(lm) -> None:
    """Two passages below one in-context prefix, each over several batches (batch size 1)."""
    words = single_token_words(lm.tokenizer, 2)
    xs = [x for x in multirc_like(tuple(words)) if not x.id.startswith("val:1/")]
    prefix = PASSAGES[1] + "\n\n"
    cached, full = both(lm, xs, prefix, batch_size=1, prefix_min_tokens=2)
    assert cached.shared_prefixes >= 3
    assert_same(cached, full)


def test_truncated_rows_share_only_what_they_really_share(lm) -> None:
    """Rows cut at the start to max_length: each row keeps its own window; scores still agree."""
    words = single_token_words(lm.tokenizer, 2)
    xs = multirc_like(tuple(words))
    cached, full = both(lm, xs, max_length=48, batch_size=4, prefix_min_tokens=4)
    assert cached.truncated == full.truncated > 0
    assert_same(cached, full)


@pytest.mark.parametrize("side", ["left", "right"])
def test_tokenizer_padding_side_changes_nothing(lm, side: str) -> None:
    words = single_token_words(lm.tokenizer, 2)
    xs = multirc_like(tuple(words))[:6]
    reference = score_dataset(lm, xs, "", ScoringOptions(batch_size=1, prefix_cache=False))
    old = lm.tokenizer.padding_side
    lm.tokenizer.padding_side = side
    try:
        cached, full = both(lm, xs, batch_size=4, prefix_min_tokens=4)
    finally:
        lm.tokenizer.padding_side = old
    assert cached.shared_prefixes
    assert_same(cached, reference)
    assert_same(full, reference)


@pytest.mark.parametrize("side", ["left", "right"])
def test_encoders_are_scored_in_full(side: str) -> None:
    enc_lm = load_model("tiny-bert", seed=0)
    enc_lm.tokenizer.padding_side = side
    xs = multirc_like((" no", " yes"))[:5]
    cached, full = both(enc_lm, xs, batch_size=2)
    assert cached.shared_prefixes == 0 and cached.scores == full.scores
    with torch.no_grad():
        direct = candidate_scores(enc_lm, xs)
    torch.testing.assert_close(torch.tensor(cached.scores), direct, rtol=0, atol=1e-5)


class NoCache(torch.nn.Module):
    """A decoder that never returns a cache: the scorer must fall back to full rows."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **kwargs: Any) -> Any:
        out = self.model(**kwargs)
        out["cache"] = None
        return out


def test_a_model_without_a_cache_is_scored_in_full(lm) -> None:
    words = single_token_words(lm.tokenizer, 2)
    xs = multirc_like(tuple(words))
    plain = dataclasses.replace(lm, model=NoCache(lm.model))
    cached = score_dataset(plain, xs, "", ScoringOptions(batch_size=3, prefix_min_tokens=4))
    full = score_dataset(lm, xs, "", ScoringOptions(batch_size=3, prefix_cache=False))
    assert_same(cached, full)


def test_bad_min_tokens_is_refused(lm) -> None:
    """At scoring time, and before a training run starts (not after it has trained)."""
    xs = multirc_like((" no", " yes"))[:2]
    with pytest.raises(GradguideError, match="at least 1") as err:
        score_dataset(lm, xs, "", ScoringOptions(prefix_min_tokens=0))
    assert err.value.field == "scoring.prefix_min_tokens"
    config = TrainConfig(task="rte", scoring=ScoringOptions(prefix_min_tokens=0))
    with pytest.raises(GradguideError, match="at least 1"):
        validate(config)


def test_default_threshold_leaves_short_shared_parts_alone(lm) -> None:
    words = single_token_words(lm.tokenizer, 2)
    xs = [Instance(f"t:{k}", f"It rained so {k}", tuple(words), 0, "") for k in range(3)]
    cached = score_dataset(lm, xs, "", ScoringOptions())
    assert cached.shared_prefixes == 0
    assert score_dataset(lm, xs, "", ScoringOptions(prefix_min_tokens=2)).shared_prefixes == 1


def test_a_peft_wrapped_model_gets_its_cache_under_the_current_name(lm) -> None:
    """PEFT's forward takes ``**kwargs``: the cache must still go in as ``cache`` (transformers
    5.x), not as the deprecated ``past_key_values``, which warns on every call of a LoRA run's
    evaluation and goes away in 5.40; the scores still equal full scoring."""
    import warnings

    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model("tiny-llama", seed=0).model, LoraConfig(r=2))
    ids = lm.tokenizer(PASSAGES[0], add_special_tokens=False)["input_ids"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        parent = extend_cache(model, None, 0, ids[:12])
        child = extend_cache(model, parent, 12, ids[12:20])
        with torch.inference_mode():
            cached = causal_row_logprobs(model, [ids[20:28]], [1], 0, child, 20)
            full = causal_row_logprobs(model, [ids[:28]], [1], 0)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-4)
