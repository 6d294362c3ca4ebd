"""Tiny randomly initialised models for unit tests (seconds, no files): a small byte-level BPE
tokenizer trained in code on an embedded corpus, and tiny Llama / BERT models built from a config
with seeded weights.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gradguide.model_registry import ModelKind, ModelLoader

_TINY_CORPUS = """\
This review is positive. That review is negative. The sentiment of the review is positive.
The sentiment of this review is negative. Is the answer yes or no? The answer is yes.
The answer is no. Is it true or false? It is true. It is false. It is neither true nor false.
Question: does the premise entail the hypothesis? Answer: yes. Answer: no. Answer: neither.
The movie was great and the actors were wonderful; I loved every minute of it.
The film was boring, too long, and the story made no sense at all. I would not watch it again.
A question has an answer, and every answer should follow from the question and the passage.
Read the passage, then answer the question with true or false. The label is positive.
The label is negative. The label is neutral. Contradiction, entailment, or neutral?
The food at this restaurant was excellent, the service was friendly, and the prices were fair.
The hotel room was dirty and the staff were rude, so the review gives it one star out of five.
Sports, business, world, science and technology are the topics of the news articles.
What is the capital of France? The capital of France is Paris. London is in England.
She said that the book was good, but he thought it was bad. They both agreed it was long.
Premise: the cat sat on the mat. Hypothesis: an animal was on the mat. Entailment: yes.
Premise: a man is playing a guitar. Hypothesis: nobody is playing music. Contradiction: yes.
Choose the better alternative. The first choice is correct. The second choice is wrong.
Numbers like one, two, three, four, five, six, seven, eight, nine and ten appear in text.
We train a model on a few labelled examples and measure how well it does on new examples.
The gradient of the loss tells the optimiser which way to move the parameters of the model.
Positive reviews say good things; negative reviews say bad things; some reviews are mixed.
Was the product worth the money? Yes, it was. No, it was not. Maybe, it is hard to say.
"""


_TINY_VOCAB_SIZE = 600
_TINY_PAD, _TINY_BOS, _TINY_EOS, _TINY_UNK = "<pad>", "<s>", "</s>", "<unk>"


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Train the tiny byte-level BPE once on the embedded corpus and return it serialised (JSON)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=_TINY_UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=[_TINY_PAD, _TINY_BOS, _TINY_EOS, _TINY_UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TINY_CORPUS.splitlines(keepends=True), trainer=trainer)
    return str(tokenizer.to_str())


def tiny_tokenizer(kind: ModelKind = "causal") -> Any:
    """A fresh tiny byte-level BPE tokenizer (~600 tokens); the encoder flavour adds <s> … </s>.

    Both flavours share one vocabulary; the causal one adds no special tokens (like SmolLM2), the
    encoder one adds ``<s>``/``</s>`` and token types so pairs stay separable.
    """
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_tiny_tokenizer_json())
    input_names = ["input_ids", "attention_mask"]
    if kind == "encoder":
        bos, eos = backend.token_to_id(_TINY_BOS), backend.token_to_id(_TINY_EOS)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{_TINY_BOS} $A {_TINY_EOS}",
            pair=f"{_TINY_BOS} $A {_TINY_EOS} $B:1 {_TINY_EOS}:1",
            special_tokens=[(_TINY_BOS, bos), (_TINY_EOS, eos)],
        )
        input_names = ["input_ids", "token_type_ids", "attention_mask"]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=_TINY_BOS,
        eos_token=_TINY_EOS,
        pad_token=_TINY_PAD,
        unk_token=_TINY_UNK,
        model_input_names=input_names,
        model_max_length=512,
    )


def _seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Run ``build`` seeded with ``seed`` in a forked RNG, so the global RNG is left untouched."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return build()


def tiny_loader(kind: ModelKind, **config: Any) -> ModelLoader:
    """A loader of a tiny random Llama (causal) or BERT (encoder) on the tiny tokenizer; ``config``
    overrides its sizes (hidden 32, 2 layers, 4 heads unless given)."""

    def load(
        *,
        cache_dir: str | Path | None,
        dtype: torch.dtype,
        attn_implementation: str | None,
        seed: int,
    ) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
        model, tokenizer = _build_tiny(kind, seed, dtype, attn_implementation, config)
        return (
            model,
            tokenizer,
            {"source": "random init", "seed": seed, "sha256": None, "cache": "none"},
        )

    return load


def _build_tiny(
    kind: ModelKind,
    seed: int,
    dtype: torch.dtype,
    attn_implementation: str | None,
    overrides: dict[str, Any],
) -> tuple[torch.nn.Module, Any]:
    """Build a tiny causal Llama or BERT encoder from a config with seeded random weights."""
    from transformers import AutoModel, AutoModelForCausalLM, BertConfig, LlamaConfig

    tokenizer = tiny_tokenizer(kind)
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **overrides,
    }
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if kind == "causal":
        llama = LlamaConfig(**{"num_key_value_heads": 2, "tie_word_embeddings": True, **common})
        model = _seeded(seed, lambda: AutoModelForCausalLM.from_config(llama, **kwargs))
    else:
        bert = BertConfig(**{"type_vocab_size": 2, **common})
        model = _seeded(seed, lambda: AutoModel.from_config(bert, **kwargs))
    return model, tokenizer
