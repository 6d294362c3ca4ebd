"""What the run-time estimate reads per instance: the scoring paths of gradguide.bench.workload."""

from __future__ import annotations

import dataclasses

import pytest

from gradguide.bench.checks import DataCheck, check_data
from gradguide.bench.estimate import estimate_config_seconds
from gradguide.bench.spec import GridRun
from gradguide.bench.workload import ROW_CHARS, TaskText, read_chars, single_token, trie_chars
from gradguide.models import load_tokenizer
from gradguide.scoring import ScoringOptions, encode_causal
from gradguide.tasks.base import Instance
from gradguide.train_config import TrainConfig

#: Label words the tiny tokenizer reads as one token each, and as several.
ONE_TOKEN = {"negative": " negative", "positive": " positive"}
SEVERAL = {"negative": " terrible", "positive": " great"}
MIXED = {"negative": " negative", "positive": " great"}  # one token, and two


def _instance(i: int, prompt: str, candidates: list[str]) -> Instance:
    return Instance(id=str(i), prompt=prompt, candidates=tuple(candidates), gold=0, label="a")


def test_a_trie_counts_each_shared_prefix_once():
    """Exact counts: "abc" and "abd" share "ab"; nothing shared is counted once per text."""
    assert trie_chars(["abd", "x", "abc"]) == 3 + 1 + 1
    assert trie_chars(["abc", "abc"]) == 3 and trie_chars([]) == 0
    assert trie_chars(["a", "b", "c"]) == 3


def test_a_passage_under_several_options_is_read_once_with_the_cache():
    """A MultiRC-like set: 2 questions on one 100-character passage, 3 options each."""
    passage = "p" * 100
    xs = [_instance(q, f"{passage} Q{q}?", [" yes A", " no B", " no C"]) for q in range(2)]
    text = TaskText.of(xs)
    prompt = len(passage) + 4
    assert text.longest == prompt + 6
    assert text.rows == 3 * prompt + 6 + 5 + 5  # every option carries its prompt
    assert text.pairs == prompt + 16
    assert text.candidates == 3
    # the passage once; " Q0?", then "1?" (the questions share " Q"); per question its options'
    # trie: " no B", "C" (sharing " no "), "yes A" (sharing the space)
    assert text.cached * 2 == 100 + 4 + 2 + 2 * (5 + 1 + 5)
    assert text.shared * 2 == 100 + 4 + 2 + 2 * 6  # the prompts' trie, each longest option


def test_one_pass_reads_a_passage_once_for_every_option_of_its_questions():
    """MultiRC as gradguide reads it: each answer option an instance of " yes"/" no" after a
    prompt holding passage, question and option; the cache reads the passage once."""
    passage = "p" * 1000
    xs = [
        _instance(q * 4 + o, f"{passage} Q{q}? A{o}. Answer:", [" yes", " no"])
        for q in range(3)
        for o in range(4)
    ]
    text = TaskText.of(xs)
    assert text.longest == 1000 + 16 + 4
    # the passage and " Q0? A0. Answer:" once; then "1. Answer:" for each further option and
    # "1? A0. Answer:" for each further question; and each prompt's " yes"
    assert text.shared * 12 == 1016 + 9 * 10 + 2 * 14 + 12 * 4
    assert text.shared < text.longest / 10  # 12 instances: the passage read once, not 12 times


def test_each_model_kind_reads_its_own_path():
    text = TaskText(longest=10.0, shared=8.0, rows=40.0, cached=15.0, pairs=20.0, candidates=4.0)
    assert read_chars(text, "causal", True, cache=True) == 8.0
    assert read_chars(text, "causal", True, cache=False) == 10.0
    assert read_chars(text, "causal", False, cache=False) == 40.0
    assert read_chars(text, "causal", False, cache=True) == 15.0 + 3 * ROW_CHARS
    assert read_chars(text, "encoder", None, cache=True) == 20.0
    assert read_chars(text, None, None, cache=False) == 10.0  # unknown: the plain reading
    assert read_chars(text, "causal", None, cache=False) == 10.0  # no tokenizer here


def test_the_estimate_tells_one_pass_exactly_as_the_scorer_does():
    """The estimate's single-token test and the scorer's fast-path choice agree, both ways."""
    tokenizer = load_tokenizer("tiny-llama")
    assert tokenizer is not None and load_tokenizer("no-such-model-here") is None
    for words, fast in ((ONE_TOKEN, True), (SEVERAL, False), (MIXED, False)):
        xs = [_instance(0, "Review: fine\nSentiment:", list(words.values()))]
        assert single_token(tokenizer, words.values()) is fast
        assert encode_causal(tokenizer, xs, "", ScoringOptions()).fast is fast


def _lora(**kw) -> GridRun:
    config = TrainConfig(model="tiny-llama", task="demo-sentiment", method="lora", shots=8, **kw)
    return GridRun(0, "k", config, {})


def test_check_data_reads_each_decoders_path_from_its_tokenizer():
    one = check_data([_lora(verbalizer=ONE_TOKEN)], tokenizers=True)
    several = check_data([_lora(verbalizer=SEVERAL)], tokenizers=True)
    assert one.one_pass == {("tiny-llama", "demo-sentiment"): True}
    assert several.one_pass == {("tiny-llama", "demo-sentiment"): False}
    assert check_data([_lora(verbalizer=SEVERAL)]).one_pass == {}  # tokenizers only if asked
    assert one.texts["demo-sentiment"][1].candidates == 2


def test_candidates_of_several_tokens_cost_a_row_each():
    """LegalBench on smollm2: 9 clause types of several tokens make 9 training rows per shot."""
    text = TaskText(100.0, 100.0, rows=900.0, cached=150.0, pairs=180.0, candidates=9.0)
    base = DataCheck({"demo-sentiment": 300}, [], {"demo-sentiment": (text, text)})
    one, several = (
        dataclasses.replace(base, one_pass={("tiny-llama", "demo-sentiment"): fast})
        for fast in (True, False)
    )
    lora = _lora().config
    zero = dataclasses.replace(lora, method="zero-shot")
    cost = estimate_config_seconds
    train_one = cost(lora, one) - cost(zero, one)
    train_several = cost(lora, several) - cost(zero, several)
    assert train_several == pytest.approx(9 * train_one)
    eval_one, eval_several = cost(zero, one), cost(zero, several)
    assert eval_several > eval_one
    slow = dataclasses.replace(zero, scoring=ScoringOptions(fast_path=False))
    assert cost(slow, one) == pytest.approx(eval_several)  # fast path off: the rows path
    uncached = dataclasses.replace(zero, scoring=ScoringOptions(prefix_cache=False))
    assert cost(uncached, several) > eval_several  # every row's prompt again
    assert cost(zero, base) == pytest.approx(eval_one)  # no tokenizer: the one-pass reading


def test_setfit_reads_the_text_not_the_candidates():
    """Banking77's 77 intent names lengthen an encoder's pairs 14x but not SetFit's reading."""
    few, many = (TaskText(100.0, 100.0, 200.0, 100.0, pairs, 2.0) for pairs in (110.0, 1700.0))
    cost = estimate_config_seconds
    for method, grows in (("setfit", False), ("lora", True)):
        config = TrainConfig(model="minilm-l6", task="banking77", method=method, shots=8)
        seconds = [
            cost(config, DataCheck({"banking77": 300}, [], {"banking77": (t, t)}))
            for t in (few, many)
        ]
        assert (seconds[1] > 2 * seconds[0]) is grows, method
