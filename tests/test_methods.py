"""Methods train exactly what they should, start where they should, save and load faithfully."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gradguide.errors import GradguideError
from gradguide.methods import (
    Adapted,
    MethodOptions,
    PromptTuned,
    build_registry,
    get_method,
    list_methods,
)
from gradguide.methods.adapter import Bottleneck
from gradguide.methods.base import META_NAME, ROLES, TENSORS_NAME, OwnObjective
from gradguide.methods.prompt import insertion_index
from gradguide.methods.untrained import NoTraining
from gradguide.models import LoadedModel, load_model
from gradguide.scoring import ScoringOptions, build_prefix, candidate_scores, score_dataset
from gradguide.tasks import get_task
from gradguide.tasks.base import Instance

LLAMA, BERT = "tiny-llama", "tiny-bert"
EXACT = {"rtol": 0.0, "atol": 1e-6}
# Methods trained by rank classification (setfit brings its own objective: tests/test_setfit.py).
TRAINING = tuple(m.name for m in list_methods() if m.trains and not isinstance(m, OwnObjective))
CASES = [(m, LLAMA) for m in TRAINING if m != "bitfit"] + [(m, BERT) for m in TRAINING]

# Which trainable parameter names each method may produce.
PATTERNS: dict[str, Callable[[str], bool]] = {
    "full": lambda n: True,
    "lora": lambda n: ".lora_A." in n or ".lora_B." in n,
    "prompt": lambda n: n == "peft_model.prompt_encoder.default.embedding.weight",
    "adapter": lambda n: ".adapter.down." in n or ".adapter.up." in n,
    "layernorm": lambda n: "norm" in n.rsplit(".", 2)[-2].lower(),
    "ofa": lambda n: "norm" in n.rsplit(".", 2)[-2].lower(),  # layernorm + its default guidance
    "bitfit": lambda n: n.endswith(".bias"),
}


@pytest.fixture(scope="module")
def instances() -> list[Instance]:
    return get_task("demo-sentiment").load("train")[:6]


def fresh(name: str) -> LoadedModel:
    return load_model(name, seed=0)


def sharpen_attention(lm: LoadedModel, factor: float = 10.0) -> LoadedModel:
    """Scale query/key weights so that attention, hence position, matters in a tiny random model."""
    with torch.no_grad():
        for name, param in lm.model.named_parameters():
            if any(k in name for k in ("q_proj.", "k_proj.", "query.", "key.")):
                param.mul_(factor)
    return lm


def scores_of(lm: LoadedModel, xs: list[Instance]) -> torch.Tensor:
    with torch.no_grad():
        return candidate_scores(lm, xs)


def loss_of(lm: LoadedModel, xs: list[Instance]) -> torch.Tensor:
    gold = torch.tensor([x.gold for x in xs])
    return F.cross_entropy(candidate_scores(lm, xs), gold)


def train(
    adapted: Adapted, lm: LoadedModel, xs: list[Instance], steps: int, lr: float | None = None
) -> tuple[list[float], set[str]]:
    """AdamW (no weight decay) on every requires_grad parameter; losses and who got a gradient."""
    params = [p for p in adapted.model.parameters() if p.requires_grad]
    rate = get_method(adapted.method).default_lr if lr is None else lr
    opt = torch.optim.AdamW(params, lr=rate, weight_decay=0.0)
    alm = adapted.as_lm(lm)
    losses: list[float] = []
    got_grad: set[str] = set()
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of(alm, xs)
        loss.backward()
        losses.append(loss.item())
        for name, p in adapted.model.named_parameters():
            if p.grad is not None and bool(p.grad.abs().sum() > 0):
                got_grad.add(name)
        opt.step()
    return losses, got_grad


# --------------------------------------------------------------------------------------------
# Registry


def test_registry_lists_every_method_with_sensible_defaults() -> None:
    names = [m.name for m in list_methods()]
    # setfit trains on an objective of its own (tests/test_setfit.py)
    assert names == [
        *("full", "lora", "prompt", "adapter", "layernorm", "ofa", "bitfit"),
        *("setfit", "zero-shot", "icl"),
    ]
    assert tuple(names[:7]) == TRAINING
    for m in list_methods():
        assert m.description
        assert m.trains == (m.name in (*TRAINING, "setfit"))
        assert (m.default_lr > 0) == m.trains
    assert get_method("full").default_lr == 1e-5
    assert get_method("lora").default_lr == 5e-4
    assert get_method("prompt").default_lr == 3e-2


def test_report_and_cost_lists_derive_from_what_each_method_declares() -> None:
    # Catches a wrong role, rank or cost: the report's order and comparisons and the run-time
    # estimate stay what they were when they were hand-kept lists.
    from gradguide.bench.estimate import EVAL_FACTOR, STEP_FACTOR
    from gradguide.report.analysis import BASELINES, METHOD_ORDER, method_rank

    assert {m.role for m in list_methods()} <= set(ROLES)
    assert (
        *("zero-shot", "icl", "full", "adapter", "lora", "prompt", "layernorm", "bitfit"),
        "setfit",
    ) == BASELINES
    assert (
        *BASELINES,
        *("sgg", "sgg-dir", "sgg-mag", "sgg-align", "sgg+setfit", "ofa", "spectral"),
    ) == METHOD_ORDER
    assert [m.name for m in list_methods() if m.role == "proposed"] == ["ofa"]
    assert sorted(["spectral", "nope", "ofa", "icl", "sgg"], key=method_rank) == [
        *("icl", "sgg", "ofa", "spectral", "nope"),
    ]
    assert STEP_FACTOR == {"full": 1.5, "setfit": 4.3}
    assert EVAL_FACTOR == {"icl": 3.0, "setfit": 0.6}


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"role": "baselin"}, r"role 'baselin'; expected one of baseline, proposed"),
        ({"step_factor": 0.0}, r"step_factor 0.0; it must be positive"),
        ({"eval_factor": float("nan")}, r"eval_factor nan; it must be positive"),
        ({"reads": "texts"}, r"reads 'texts'; expected one of prompts, text"),
        ({"report_rank": 10}, r"'zero-shot' and 'new' share report_rank 10"),
        ({"name": "zero-shot"}, r"'zero-shot' is registered twice"),
    ],
)
def test_a_method_with_metadata_that_cannot_be_right_is_refused(
    change: dict[str, object], error: str
) -> None:
    base = NoTraining("zero-shot", "first", report_rank=10)
    new = NoTraining("new", "second", report_rank=11)
    for key, value in change.items():
        setattr(new, key, value)
    assert list(build_registry((base, NoTraining("new", "ok", report_rank=11)))) == [
        "zero-shot",
        "new",
    ]
    with pytest.raises(GradguideError, match=error):
        build_registry((base, new))


def test_unknown_method_lists_known_ones() -> None:
    with pytest.raises(GradguideError, match=r"unknown method 'lorra'.*full, lora, prompt"):
        get_method("lorra")


def test_bitfit_refuses_a_model_without_biases() -> None:
    with pytest.raises(
        GradguideError, match="bitfit needs a model with bias terms; tiny-llama has none"
    ):
        get_method("bitfit").apply(fresh(LLAMA), MethodOptions())


@pytest.mark.parametrize("name", ["zero-shot", "icl"])
def test_untrained_methods_return_the_model_untouched(name: str, tmp_path: Path) -> None:
    lm = fresh(LLAMA)
    method = get_method(name)
    adapted = method.apply(lm, MethodOptions())
    assert adapted.model is lm.model and adapted.trainable == {} and adapted.n_trainable() == 0
    assert not any(p.requires_grad for p in lm.model.parameters())
    method.save(adapted, tmp_path, LLAMA)
    assert json.loads((tmp_path / META_NAME).read_text())["method"] == name
    assert method.load(fresh(LLAMA), tmp_path, MethodOptions()).trainable == {}


# --------------------------------------------------------------------------------------------
# Only the intended parameters train


@pytest.mark.parametrize(("method", "model"), CASES)
def test_only_intended_parameters_change(
    method: str, model: str, instances: list[Instance]
) -> None:
    lm = fresh(model)
    before_apply = {id(p): p.detach().clone() for p in lm.model.parameters()}
    adapted = get_method(method).apply(lm, MethodOptions())
    named = dict(adapted.model.named_parameters())
    requires = [n for n, p in named.items() if p.requires_grad]
    assert requires == list(adapted.trainable), "trainable must be exactly the requires_grad set"
    assert all(adapted.trainable[n] is named[n] for n in requires)
    assert all(PATTERNS[method](n) for n in adapted.trainable), list(adapted.trainable)[:5]
    if method != "full":
        assert all(not PATTERNS[method](n) for n in named if n not in adapted.trainable)

    snapshot = {n: p.detach().clone() for n, p in named.items()}
    buffers = {n: b.detach().clone() for n, b in adapted.model.named_buffers()}
    _, got_grad = train(adapted, lm, instances, steps=3)

    assert got_grad and got_grad <= set(adapted.trainable)
    for name, param in adapted.model.named_parameters():
        changed = not torch.equal(param.detach(), snapshot[name])
        if name in got_grad:
            assert changed, f"{name} had a gradient but did not move"
        else:
            assert not changed, f"{name} is not trained but changed"
    for name, buf in adapted.model.named_buffers():
        assert torch.equal(buf, buffers[name]), name
    trained_ids = {id(p) for p in adapted.trainable.values()}
    for param in adapted.model.parameters():
        if id(param) in before_apply and id(param) not in trained_ids:
            assert torch.equal(param.detach(), before_apply[id(param)]), "a base weight moved"
    if method == "full":  # only parameters the scores do not use (BERT's pooler) get no gradient
        assert all(n.startswith("pooler.") for n in set(adapted.trainable) - got_grad)


@pytest.mark.parametrize(("method", "model"), CASES)
def test_loss_falls_with_the_default_learning_rate(
    method: str, model: str, instances: list[Instance]
) -> None:
    torch.manual_seed(0)
    lm = fresh(model)
    adapted = get_method(method).apply(lm, MethodOptions())
    losses, _ = train(adapted, lm, instances, steps=10)
    assert losses[-1] < losses[0], losses


def test_trainable_counts() -> None:
    opts = MethodOptions()
    r, hidden, layers = opts.lora_r, 32, 2
    kv = 2 * (hidden // 4)  # tiny-llama: 2 key/value heads of head_dim 8
    counts = {
        ("lora", LLAMA): layers * (r * (hidden + hidden) + r * (hidden + kv)),
        ("lora", BERT): layers * 2 * r * (hidden + hidden),
        ("prompt", LLAMA): opts.prompt_tokens * hidden,
        ("prompt", BERT): opts.prompt_tokens * hidden,
        ("adapter", LLAMA): layers
        * 2
        * (2 * hidden * opts.adapter_size + opts.adapter_size + hidden),
        ("layernorm", LLAMA): (2 * layers + 1) * hidden,  # RMSNorm gains, no biases
        ("layernorm", BERT): (2 * layers + 1) * 2 * hidden,  # LayerNorm gains and biases
    }
    for (method, model), expected in counts.items():
        assert get_method(method).apply(fresh(model), opts).n_trainable() == expected, method
    bert = fresh(BERT)
    total = sum(p.numel() for p in bert.model.parameters())
    biases = sum(
        m.bias.numel()
        for m in bert.model.modules()
        if isinstance(getattr(m, "bias", None), torch.Tensor)
    )
    assert get_method("bitfit").apply(bert, opts).n_trainable() == biases
    assert get_method("full").apply(fresh(BERT), opts).n_trainable() == total


def test_lora_targets_map_to_encoder_names_and_unknown_targets_fail() -> None:
    assert get_method("lora").apply(fresh(BERT), MethodOptions()).info["lora_targets"] == [
        "query",
        "value",
    ]
    assert get_method("lora").apply(fresh(LLAMA), MethodOptions()).info["lora_targets"] == [
        "q_proj",
        "v_proj",
    ]
    with pytest.raises(GradguideError, match="LoRA target 'nope' is not a linear layer"):
        get_method("lora").apply(fresh(LLAMA), MethodOptions(lora_targets="q_proj,nope"))


# --------------------------------------------------------------------------------------------
# Where training starts


@pytest.mark.parametrize(("method", "model"), [c for c in CASES if c[0] != "prompt"])
def test_adapted_model_starts_equal_to_the_base(
    method: str, model: str, instances: list[Instance]
) -> None:
    lm = fresh(model)
    base = scores_of(lm, instances)
    adapted = get_method(method).apply(lm, MethodOptions())
    torch.testing.assert_close(scores_of(adapted.as_lm(lm), instances), base, **EXACT)


@pytest.mark.parametrize("model", [LLAMA, BERT])
def test_adapters_sit_in_the_forward_path(model: str, instances: list[Instance]) -> None:
    lm = fresh(model)
    base = scores_of(lm, instances)
    adapted = get_method("adapter").apply(lm, MethodOptions())
    bottlenecks = [m for m in adapted.model.modules() if isinstance(m, Bottleneck)]
    assert len(bottlenecks) == 4 and adapted.info["adapters"] == 4
    with torch.no_grad():
        for b in bottlenecks:
            b.up.weight.normal_(std=0.5)
    assert not torch.allclose(scores_of(adapted.as_lm(lm), instances), base, atol=1e-3)


def test_prompt_init_text_uses_the_tokenizer_and_random_differs() -> None:
    lm = fresh(LLAMA)
    text = get_method("prompt").apply(lm, MethodOptions(prompt_tokens=4))
    ids = lm.tokenizer(MethodOptions().prompt_init_text)["input_ids"][:4]
    expected = lm.model.get_input_embeddings().weight[ids]
    torch.testing.assert_close(next(iter(text.trainable.values())).detach(), expected.detach())
    rand = get_method("prompt").apply(
        fresh(LLAMA), MethodOptions(prompt_tokens=4, prompt_init="random")
    )
    assert not torch.allclose(next(iter(rand.trainable.values())), expected)
    with pytest.raises(GradguideError, match="prompt_init"):
        get_method("prompt").apply(fresh(LLAMA), MethodOptions(prompt_init="vocab"))


# --------------------------------------------------------------------------------------------
# Prompt tuning and left padding


def test_insertion_index_places_virtual_tokens_before_the_first_real_token() -> None:
    index = insertion_index(torch.tensor([0, 2]), length=4, n_virtual=2)
    # row 0 unpadded: virtual (4, 5) first; row 1 has two pads: pads, virtual, then real tokens
    assert index.tolist() == [[4, 5, 0, 1, 2, 3], [0, 1, 4, 5, 2, 3]]


@pytest.mark.parametrize("model", [LLAMA, BERT])
def test_prompt_scores_do_not_depend_on_padding(model: str, instances: list[Instance]) -> None:
    lm = sharpen_attention(fresh(model))
    adapted = get_method("prompt").apply(lm, MethodOptions(prompt_tokens=8))
    train(adapted, lm, instances, steps=5)  # a trained prompt, not just the text init
    alm = adapted.as_lm(lm)
    lengths = {len(lm.tokenizer(x.prompt)["input_ids"]) for x in instances}
    assert len(lengths) > 2, "the batch must mix lengths for padding to matter"
    batch = scores_of(alm, instances)
    single = torch.cat([scores_of(alm, [x]) for x in instances])
    torch.testing.assert_close(batch, single, rtol=0, atol=1e-4)


def test_raw_peft_prompt_tuning_depends_on_left_padding(instances: list[Instance]) -> None:
    """Why PromptTuned exists: PEFT drops position_ids, so padding shifts a row's positions."""
    lm = sharpen_attention(fresh(LLAMA))
    adapted = get_method("prompt").apply(lm, MethodOptions(prompt_tokens=8))
    train(adapted, lm, instances, steps=5)
    assert isinstance(adapted.model, PromptTuned)
    raw = adapted.model.peft_model
    rlm = adapted.as_lm(lm)
    rlm.model = raw
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = scores_of(rlm, instances)
        single = torch.cat([scores_of(rlm, [x]) for x in instances])
    assert any("Position ids are not supported" in str(w.message) for w in caught)
    assert (batch - single).abs().max() > 1e-2
    # on unpadded rows PEFT is right, and the wrapper computes exactly the same thing
    torch.testing.assert_close(
        single, torch.cat([scores_of(adapted.as_lm(lm), [x]) for x in instances])
    )


def test_prompt_encoder_outputs_keep_the_input_length() -> None:
    lm = fresh(BERT)
    adapted = get_method("prompt").apply(lm, MethodOptions(prompt_tokens=5))
    batch = lm.tokenizer(
        ["a short one", "a somewhat longer text here"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = adapted.model(**batch)
    assert out.last_hidden_state.shape[:2] == batch["input_ids"].shape


# --------------------------------------------------------------------------------------------
# Save and load


@pytest.mark.parametrize(("method", "model"), CASES)
def test_save_load_round_trip_gives_identical_scores(
    method: str, model: str, instances: list[Instance], tmp_path: Path
) -> None:
    lm = fresh(model)
    m = get_method(method)
    adapted = m.apply(lm, MethodOptions())
    train(adapted, lm, instances, steps=3)
    expected = scores_of(adapted.as_lm(lm), instances)
    m.save(adapted, tmp_path, model)

    meta = json.loads((tmp_path / META_NAME).read_text())
    assert meta["method"] == method and meta["base_model"] == model
    assert meta["options"] == MethodOptions().to_dict()
    assert list(meta["tensors"]) == list(adapted.trainable)
    assert meta["n_trainable"] == adapted.n_trainable()
    weights = "adapter_model.safetensors" if method in ("lora", "prompt") else TENSORS_NAME
    assert weights in meta["files"] and len(meta["files"][weights]) == 64
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files left behind"

    lm2 = fresh(model)
    loaded = m.load(lm2, tmp_path, MethodOptions())
    assert list(loaded.trainable) == list(adapted.trainable)
    assert all(p.requires_grad for p in loaded.trainable.values())
    torch.testing.assert_close(scores_of(loaded.as_lm(lm2), instances), expected, **EXACT)


@pytest.mark.parametrize("model", [LLAMA, BERT])
@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_peft_saves_load_with_peft_itself(
    method: str, model: str, instances: list[Instance], tmp_path: Path
) -> None:
    from peft import PeftModel

    lm = fresh(model)
    adapted = get_method(method).apply(lm, MethodOptions())
    train(adapted, lm, instances, steps=3)
    alm = adapted.as_lm(lm)
    get_method(method).save(adapted, tmp_path, model)
    assert (tmp_path / "adapter_config.json").is_file()

    base = fresh(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PEFT calls a deprecated transformers API
        peft_model = PeftModel.from_pretrained(base.model, str(tmp_path))
    plm = adapted.as_lm(base)
    plm.model = peft_model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that it ignores position ids
        if method == "lora":
            torch.testing.assert_close(
                scores_of(plm, instances), scores_of(alm, instances), **EXACT
            )
        elif model == LLAMA:  # PEFT's own prompt tuning is right on unpadded rows
            got = torch.cat([scores_of(plm, [x]) for x in instances])
            want = torch.cat([scores_of(alm, [x]) for x in instances])
            torch.testing.assert_close(got, want, **EXACT)
        else:  # PEFT returns the virtual positions too; BERT pads on the right, so drop them
            batch = lm.tokenizer([x.prompt for x in instances], padding=True, return_tensors="pt")
            with torch.no_grad():
                got = peft_model(**batch).last_hidden_state[:, adapted.model.n_virtual :]
                want = adapted.model(**batch).last_hidden_state
            torch.testing.assert_close(got, want, **EXACT)
    if method == "prompt":  # the wrapper around PEFT's own loaded model agrees in batches too
        plm.model = PromptTuned(peft_model)
        torch.testing.assert_close(scores_of(plm, instances), scores_of(alm, instances), **EXACT)


def test_load_refuses_damaged_or_mismatched_adapters(
    instances: list[Instance], tmp_path: Path
) -> None:
    lm = fresh(LLAMA)
    adapter = get_method("adapter")
    adapter.save(adapter.apply(lm, MethodOptions()), tmp_path, LLAMA)
    with pytest.raises(GradguideError, match="saved by method 'adapter', not 'layernorm'"):
        get_method("layernorm").load(fresh(LLAMA), tmp_path, MethodOptions())
    with pytest.raises(GradguideError, match="trained on base model 'tiny-llama', not 'tiny-bert'"):
        adapter.load(fresh(BERT), tmp_path, MethodOptions())
    data = bytearray((tmp_path / TENSORS_NAME).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / TENSORS_NAME).write_bytes(bytes(data))
    with pytest.raises(GradguideError, match="does not match its sha256"):
        adapter.load(fresh(LLAMA), tmp_path, MethodOptions())
    (tmp_path / META_NAME).unlink()
    with pytest.raises(GradguideError, match=r"no adapter_meta\.json"):
        adapter.load(fresh(LLAMA), tmp_path, MethodOptions())


def test_load_uses_the_saved_shapes(tmp_path: Path) -> None:
    method = get_method("adapter")
    method.save(method.apply(fresh(LLAMA), MethodOptions(adapter_size=4)), tmp_path, LLAMA)
    loaded = method.load(fresh(LLAMA), tmp_path, MethodOptions())  # default size 16 is overridden
    assert loaded.options.adapter_size == 4


@pytest.mark.parametrize("method", ["prompt", "lora", "adapter"])
def test_cached_in_context_prefix_scores_like_the_full_rows(
    method: str, instances: list[Instance]
) -> None:
    """score_dataset caches shared prefixes (the demonstrations, then a passage shared by some
    queries, extending that cache); adapted models must agree with full scoring."""
    lm = sharpen_attention(fresh(LLAMA))
    adapted = get_method(method).apply(lm, MethodOptions(prompt_tokens=8))
    train(adapted, lm, instances, steps=3)
    alm = adapted.as_lm(lm)
    demos, queries = instances[:2], instances[2:]
    passage = "A passage shared by several questions, about a film, its cast and its music.\n"
    queries += [dataclasses.replace(x, id=f"{x.id}+p", prompt=passage + x.prompt) for x in queries]
    prefix = build_prefix(demos)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # past_key_values -> cache rename
        cached = score_dataset(
            alm, queries, prefix, ScoringOptions(prefix_cache=True, batch_size=3)
        )
        full = score_dataset(alm, queries, prefix, ScoringOptions(prefix_cache=False, batch_size=3))
    assert cached.shared_prefixes >= 2
    torch.testing.assert_close(
        torch.tensor(cached.scores), torch.tensor(full.scores), rtol=0, atol=1e-4
    )
