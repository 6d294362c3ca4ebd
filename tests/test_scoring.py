"""Scoring: the fast path equals the slow path, batching and padding change nothing, truncation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradguide.models import load_model
from gradguide.scoring import (
    ENCODER_SCALE,
    ScoringOptions,
    candidate_scores,
    encode_causal,
    score_dataset,
)
from gradguide.tasks.base import Instance


@pytest.fixture(scope="module")
def lm():
    return load_model("tiny-llama", seed=0)


@pytest.fixture(scope="module")
def enc_lm():
    return load_model("tiny-bert", seed=0)


def single_token_words(tok, n: int) -> list[str]:
    """Words with a leading space that the tokenizer keeps as one token."""
    words = []
    for token, idx in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
        text = tok.convert_tokens_to_string([token])
        plain_word = text.startswith(" ") and text[1:].isalpha() and len(text) > 3
        if plain_word and tok(text, add_special_tokens=False)["input_ids"] == [idx]:
            words.append(text)
        if len(words) == n:
            break
    assert len(words) == n, "tiny tokenizer has too few single-token words"
    return words


def make_instances(words: list[str]) -> list[Instance]:
    prompts = [
        "Review: a fine film.\nSentiment:",
        "Review: it was long, slow and very dull indeed, a waste of an evening.\nSentiment:",
        "Question: is this right?\nAnswer:",
        "x",
    ]
    return [
        Instance(
            id=f"t:{i}",
            prompt=p,
            candidates=tuple(words),
            gold=i % len(words),
            label=str(i % len(words)),
        )
        for i, p in enumerate(prompts)
    ]


def manual_logprob(lm, prompt: str, completion: str) -> float:
    tok = lm.tokenizer
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0]
    logp = F.log_softmax(logits.float(), -1)
    return float(sum(logp[len(p) - 1 + k, t] for k, t in enumerate(c)))


def test_fast_path_equals_slow_path(lm):
    words = single_token_words(lm.tokenizer, 3)
    xs = make_instances(words)
    fast_opts, slow_opts = ScoringOptions(), ScoringOptions(fast_path=False)
    assert encode_causal(lm.tokenizer, xs, "", fast_opts).fast
    assert not encode_causal(lm.tokenizer, xs, "", slow_opts).fast
    with torch.no_grad():
        fast = candidate_scores(lm, xs, options=fast_opts)
        slow = candidate_scores(lm, xs, options=slow_opts)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)


def test_slow_path_matches_unpadded_forward(lm):
    xs = make_instances([" positive review", " negative", " it is neither"])
    with torch.no_grad():
        s = candidate_scores(lm, xs, options=ScoringOptions(batch_size=64))
    for i, x in enumerate(xs):
        for j, c in enumerate(x.candidates):
            assert float(s[i, j]) == pytest.approx(manual_logprob(lm, x.prompt, c), abs=1e-4)


def test_length_normalisation_divides_by_token_count(lm):
    xs = make_instances([" positive review", " no"])[:2]
    with torch.no_grad():
        total = candidate_scores(lm, xs, options=ScoringOptions())
        mean = candidate_scores(lm, xs, options=ScoringOptions(length_normalize=True))
    for j, c in enumerate(xs[0].candidates):
        n = len(lm.tokenizer(c, add_special_tokens=False)["input_ids"])
        assert float(mean[0, j]) == pytest.approx(float(total[0, j]) / n, abs=1e-5)


def test_score_dataset_batching_and_prefix_do_not_change_scores(lm):
    words = single_token_words(lm.tokenizer, 2)
    xs = make_instances(words)
    one = score_dataset(
        lm, xs, "Review: good.\nSentiment:" + words[1] + "\n\n", ScoringOptions(batch_size=1)
    )
    many = score_dataset(
        lm, xs, "Review: good.\nSentiment:" + words[1] + "\n\n", ScoringOptions(batch_size=8)
    )
    assert one.predictions == many.predictions
    for a, b in zip(one.scores, many.scores, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    plain = score_dataset(lm, xs, "", ScoringOptions(batch_size=8))
    assert plain.scores != many.scores  # the demonstrations are really prepended


def test_truncation_cuts_the_prompt_start_only(lm):
    x = Instance(
        id="t:long",
        prompt="word " * 400 + "end:",
        candidates=(" positive", " no"),
        gold=0,
        label="0",
    )
    opts = ScoringOptions(max_length=64, fast_path=False)
    enc = encode_causal(lm.tokenizer, [x], "", opts)
    assert enc.truncated == 2 and all(len(r) <= 64 for r in enc.rows)
    for row, c in zip(enc.rows, x.candidates, strict=True):
        ids = lm.tokenizer(c, add_special_tokens=False)["input_ids"]
        assert row[-len(ids) :] == ids
    scored = score_dataset(lm, [x], "", opts)
    assert scored.truncated == 2 and all(v > float("-inf") for v in scored.scores[0])


def test_scores_are_differentiable(lm):
    xs = make_instances([" positive", " negative review"])
    s = candidate_scores(lm, xs)
    loss = F.cross_entropy(s, torch.tensor([x.gold for x in xs]))
    loss.backward()
    grads = [p.grad for p in lm.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    lm.model.zero_grad(set_to_none=True)


def test_encoder_scores_are_scaled_cosines(enc_lm):
    xs = make_instances([" positive", " negative"])
    with torch.no_grad():
        s = candidate_scores(enc_lm, xs)
    tok, model = enc_lm.tokenizer, enc_lm.model

    def embed(text: str) -> torch.Tensor:
        b = tok([text], return_tensors="pt")
        with torch.no_grad():
            h = model(**b).last_hidden_state[0]
        return F.normalize(h.mean(0), dim=-1)

    expected = ENCODER_SCALE * torch.dot(embed(xs[1].prompt), embed("negative"))
    assert float(s[1, 1]) == pytest.approx(float(expected), abs=1e-4)
    assert s.abs().max() <= ENCODER_SCALE + 1e-4


@pytest.mark.parametrize("fast_path", [True, False])
def test_prefix_cache_equals_full_scoring(lm, fast_path):
    words = single_token_words(lm.tokenizer, 2) if fast_path else [" positive review", " no"]
    xs = make_instances(words)
    prefix = (
        "Review: good.\nSentiment:"
        + words[0]
        + "\n\nReview: bad, dull.\nSentiment:"
        + words[1]
        + "\n\n"
    )
    cached = score_dataset(lm, xs, prefix, ScoringOptions(batch_size=3, fast_path=fast_path))
    full = score_dataset(
        lm, xs, prefix, ScoringOptions(batch_size=3, fast_path=fast_path, prefix_cache=False)
    )
    assert cached.predictions == full.predictions
    for a, b in zip(cached.scores, full.scores, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    # and both equal scoring each instance with its prefix written into the prompt
    for x, row in zip(xs, full.scores, strict=True):
        for c, value in zip(x.candidates, row, strict=True):
            assert value == pytest.approx(manual_logprob(lm, prefix + x.prompt, c), abs=1e-4)


def test_prefix_cache_falls_back_when_rows_do_not_fit(lm):
    words = single_token_words(lm.tokenizer, 2)
    xs = make_instances(words)
    prefix = "Review: fine.\nSentiment:" + words[0] + "\n\n" + "filler words " * 20
    n_prefix = len(lm.tokenizer(prefix)["input_ids"])
    opts = ScoringOptions(batch_size=2, max_length=n_prefix + 12)  # the long prompts overflow
    cached = score_dataset(lm, xs, prefix, opts)
    full = score_dataset(
        lm, xs, prefix, ScoringOptions(batch_size=2, max_length=n_prefix + 12, prefix_cache=False)
    )
    assert cached.truncated == full.truncated > 0
    for a, b in zip(cached.scores, full.scores, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
