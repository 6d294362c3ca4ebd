"""SetFit as a method: setfit's pairs and head, gradguide's records, and guidance on its body.

Tiny-bert and the demo task (seconds); the real minilm-l6 run is in test_integration.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gradguide.bench.compare import compare, recipe
from gradguide.bench.grid import expand_grid, load_grid, parse_grid, run_key
from gradguide.bench.store import arm_name
from gradguide.cli import main
from gradguide.errors import GradguideError
from gradguide.guidance.engine import GuidedGradient
from gradguide.guidance.hvp import flat
from gradguide.guidance.priors import FixedPrior
from gradguide.guidance.sgg import AlignmentPenalty, DirectionPenalty, MagnitudePenalty
from gradguide.methods import MethodOptions, get_method
from gradguide.methods.setfit import (
    BODY_NAME,
    HEAD_NAME,
    SetFitAdapted,
    balanced_counts,
    head_tensors,
    pair_count,
    set_head,
)
from gradguide.models import load_model
from gradguide.predict import predict
from gradguide.tasks import get_task
from gradguide.tasks.base import Instance
from gradguide.train import TrainConfig, load_trained, reevaluate, train, validate

setfit = pytest.importorskip("setfit", reason="the setfit extra is not installed")

TASK = "demo-sentiment"


@pytest.fixture(scope="module")
def demo() -> list[Instance]:
    return get_task(TASK).load("train")


def tiny_setfit(
    seed: int = 0, attn: str | None = None, model: str = "tiny-bert", **options
) -> tuple[SetFitAdapted, object]:
    lm = load_model(model, seed=seed, attn_implementation=attn)
    method = get_method("setfit")
    adapted = method.apply(lm, MethodOptions(**options))
    assert isinstance(adapted, SetFitAdapted)
    return adapted, method.objective(adapted)


def config(tmp_path, **kw) -> TrainConfig:
    base = {"model": "tiny-bert", "task": TASK, "shots": 8, "method": "setfit", "seed": 1}
    return TrainConfig(**{**base, "out": str(tmp_path), **kw})


#: an encoder, and a decoder whose base model's hidden states SetFit pools
MODELS = ["tiny-bert", "tiny-llama"]


@pytest.mark.parametrize("model", MODELS)
def test_setfit_trains_saves_reloads_and_predicts(tmp_path, model):
    result = train(config(tmp_path, model=model), show_progress=False)
    rec = result.record
    pairs = pair_count(balanced_counts(8, 2), MethodOptions())
    assert rec["objective"]["name"] == "setfit-contrastive"
    assert rec["objective"]["items"] == pairs == 40  # 20 positive (4·5/2 ·2), 16 → oversampled
    assert rec["steps"] == math.ceil(pairs / 16) == len(rec["curves"]["loss"])
    assert rec["objective"]["classes"] == [0, 1]
    assert rec["config"]["method_options"]["setfit_batch_size"] == 16  # settings recorded
    # the body really trained: its weights moved away from the fresh model's
    fresh = load_model(model, seed=1)
    moved = [
        n
        for n, p in fresh.model.named_parameters()
        if n in result.adapted.trainable
        and not torch.equal(p, result.adapted.trainable[n].detach())
    ]
    assert moved
    adapter = result.run_dir / "adapter"
    assert {p.name for p in adapter.iterdir()} == {BODY_NAME, HEAD_NAME, "adapter_meta.json"}
    # reloaded from disk, the run scores every evaluation example exactly as it did in training
    run = load_trained(result.run_dir)
    evals = get_task(TASK).load("test")
    before = result.adapted.predictor(evals)
    after = run.lm.predictor(evals)
    assert torch.equal(before, after)
    assert reevaluate(result.run_dir, show_progress=False) == result.metrics
    path = tmp_path / "new.jsonl"
    path.write_text("".join(json.dumps({"text": x.text}) + "\n" for x in evals[:3]))
    rows = predict(result.run_dir, path)
    labels = get_task(TASK).labels
    assert [r["prediction"] for r in rows] == [labels[int(i)] for i in before[:3].argmax(1)]


def test_head_round_trip_is_exact():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    for n_classes in (2, 3):
        x, y = rng.normal(size=(30, 5)), np.arange(30) % n_classes
        fitted = LogisticRegression().fit(x, y)
        restored = LogisticRegression()
        set_head(restored, head_tensors(fitted), path=None)  # type: ignore[arg-type]
        assert np.array_equal(fitted.predict_proba(x), restored.predict_proba(x))
    with pytest.raises(GradguideError, match="never fitted"):
        head_tensors(LogisticRegression())


def test_pairs_are_setfits_sampler_and_counted():
    from setfit.sampler import ContrastiveDataset

    cases = [([4, 4], MethodOptions()), ([3, 5], MethodOptions()), ([2, 3, 4], MethodOptions())]
    cases += [([3, 5], MethodOptions(setfit_sampling=s)) for s in ("undersampling", "unique")]
    cases += [([2, 3, 4], MethodOptions(setfit_iterations=3))]
    for counts, o in cases:
        labels = [c for c, n in enumerate(counts) for _ in range(n)]
        texts = [f"t{i}" for i in range(len(labels))]
        made = ContrastiveDataset(
            texts, labels, False, o.setfit_iterations or None, o.setfit_sampling
        )
        assert len(list(made)) == pair_count(counts, o), (counts, o)


def test_objective_items_are_the_samplers_pairs(demo):
    from setfit.sampler import ContrastiveDataset

    _, objective = tiny_setfit()
    sample = demo[:6]
    made = ContrastiveDataset([x.text for x in sample], [x.gold for x in sample], False)
    expected = [(p["sentence_1"], p["sentence_2"], p["label"]) for p in made]
    assert objective.items(sample) == expected
    assert all(x.text and x.text in x.prompt and x.text != x.prompt for x in sample)
    prompts = get_method("setfit").apply(
        load_model("tiny-bert"), MethodOptions(setfit_input="prompt")
    )
    assert get_method("setfit").objective(prompts).items(sample)[0][0] == sample[0].prompt


def test_predictor_scores_are_the_heads_log_probabilities(demo):
    adapted, _ = tiny_setfit()
    three = [
        Instance(x.id, x.prompt, (*x.candidates, " meh"), x.gold, x.label, None, x.text)
        for x in demo
    ]
    adapted.setfit.fit([x.text for x in demo], [x.gold for x in demo], num_epochs=1)
    scores = adapted.predictor(three[:5])
    probs = adapted.setfit.predict_proba([x.text for x in demo[:5]], as_numpy=True)
    assert torch.allclose(scores[:, :2], torch.from_numpy(np.log(probs)).float())
    assert torch.isinf(scores[:, 2]).all()  # a class the head never saw scores −inf
    predicted = adapted.setfit.predict([x.text for x in demo[:5]], as_numpy=True)
    assert scores.argmax(1).tolist() == [int(p) for p in predicted]
    with pytest.raises(GradguideError, match="demonstrations"):
        adapted.predictor(demo[:2], "Review: x\nSentiment: positive\n\n")


def test_refusals(tmp_path, capsys):
    validate(config(tmp_path, model="tiny-llama"))  # a decoder serves SetFit as well
    with pytest.raises(GradguideError) as err:
        validate(config(tmp_path, method_options=MethodOptions(setfit_pooling="median")))
    assert err.value.field == "method_options.setfit_pooling"
    bad = config(tmp_path, method_options=MethodOptions(setfit_sampling="most"))
    with pytest.raises(GradguideError) as err:
        validate(bad)
    assert err.value.field == "method_options.setfit_sampling"
    with pytest.raises(GradguideError, match="two labels"):
        tiny_setfit()[1].items([x for x in get_task(TASK).load("train") if x.gold == 0][:4])
    flags = ["--method", "setfit", "--model", "tiny-bert", "--task", TASK, "--epochs", "3"]
    code = main(["train", *flags])
    assert code == 2 and "setfit_epochs" in capsys.readouterr().err


def test_other_methods_run_keys_ignore_setfit_options(tmp_path):
    lora = config(tmp_path, method="lora")
    lora5 = config(tmp_path, method="lora", method_options=MethodOptions(setfit_epochs=5))
    assert run_key(lora) == run_key(lora5)
    own5 = config(tmp_path, method_options=MethodOptions(setfit_epochs=5))
    assert run_key(config(tmp_path)) != run_key(own5)
    mean = config(tmp_path, method_options=MethodOptions(setfit_pooling="mean"))
    assert run_key(config(tmp_path)) != run_key(mean)  # the default stays out of stored keys


def test_compare_setfit_with_and_without_sgg_on_the_same_samples(tmp_path):
    base = config(tmp_path, eval_limit=8)
    base.guidance.prior = "ema:0.9"  # an encoder has no language-modelling prior
    assert recipe(base, "setfit+sgg").guidance.use == "sgg"
    assert recipe(base, "sgg+setfit").method == "setfit"
    summaries = compare(base, ["setfit", "setfit+sgg"], [1])
    assert [s.method for s in summaries] == ["setfit", "setfit+sgg"]
    plain, guided = (
        json.loads((tmp_path / s.runs[0].split("/")[-1] / "record.json").read_text())
        for s in summaries
    )
    assert plain["data"]["train_ids"] == guided["data"]["train_ids"]
    assert plain["data"]["eval_ids"] == guided["data"]["eval_ids"]
    assert (arm_name(plain["config"]), arm_name(guided["config"])) == ("setfit", "sgg+setfit")
    # the guided run's gradient dynamics are recorded like any guided run's
    curves = guided["curves"]
    assert all(v is not None for v in curves["penalty_mag"][1:])
    assert any(v is not None for v in curves["cos_prior"])
    assert curves["guided_norm"] != curves["grad_norm"]
    assert plain["curves"]["guided_norm"] == plain["curves"]["grad_norm"]


def test_grid_accepts_setfit_arms(tmp_path):
    grid = {
        "name": "g",
        "models": ["tiny-bert"],
        "tasks": [TASK],
        "methods": ["setfit", "setfit+sgg", "lora"],
        "shots": [8],
        "seeds": [1],
    }
    spec = parse_grid({**grid, "method_base": {"setfit+sgg": {"guidance.prior": "ema:0.9"}}})
    runs = expand_grid(spec)
    assert [r.arm for r in runs] == ["setfit", "sgg+setfit", "lora"]
    assert runs[1].config.guidance.prior == "ema:0.9"
    with pytest.raises(GradguideError) as err:
        parse_grid({**grid, "methods": ["setfit", "setfit+nope"]})
    assert err.value.field == "methods[1]"
    preset = expand_grid(load_grid("setfit"))
    assert {r.arm for r in preset} == {"setfit", "sgg+setfit", "lora", "full", "adapter"}


def test_spectral_terms_apply_to_setfits_body(tmp_path):
    c = config(tmp_path)
    c.guidance.use = "spectral"
    rec = train(c, show_progress=False).record
    summary = rec["guidance"]["term_summaries"]["spectral-reg"]
    assert summary["graphs"] > 0 and summary["delta_norm"] > 0


# --------------------------------------------------------------------------------------------
# The guided gradient of SetFit's contrastive loss against autograd's double backward

LAM = {"dir": 0.7, "mag": 0.3, "align": 0.5}
TAU = 0.05


def reference(loss_fn, source_fn, params, prior):
    """∇θ[L + R_dir + R_mag + R_align] by double backward (g_source a constant)."""
    loss = loss_fn()
    g = flat(torch.autograd.grad(loss, params, create_graph=True), params)
    gs = flat(torch.autograd.grad(source_fn(), params), params).detach()
    d = prior / prior.norm()
    total = loss + LAM["dir"] * (g / g.norm() - d).pow(2).sum()
    total = total + LAM["mag"] * (g.norm() - TAU) ** 2
    total = total + LAM["align"] * (1 - torch.dot(g, gs) / (g.norm() * gs.norm()))
    return flat(torch.autograd.grad(total, params), params)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_guided_contrastive_gradient_matches_autograd(demo, mode, model):
    adapted, objective = tiny_setfit(attn="eager", model=model)
    adapted.model.train(mode == "train")
    pairs = objective.items(demo[:6])
    target, source = pairs[:8], pairs[8:16]
    loss_fn = lambda: objective.loss(target)  # noqa: E731
    source_fn = lambda: objective.loss(source)  # noqa: E731
    every = list(adapted.trainable.values())
    used = torch.autograd.grad(loss_fn(), every, allow_unused=True)
    params = [p for p, g in zip(every, used, strict=True) if g is not None]  # not the pooler
    gen = torch.Generator().manual_seed(1)
    prior_vec = torch.randn(sum(p.numel() for p in params), generator=gen)
    torch.manual_seed(5)
    expected = reference(loss_fn, source_fn, params, prior_vec)
    torch.manual_seed(5)
    plain = flat(torch.autograd.grad(loss_fn(), params), params)
    assert (expected - plain).norm() > 1e-3 * expected.norm()  # the penalties matter
    for hvp, tol in (("exact", 1e-5), ("fd", 2e-2)):
        penalties = [
            DirectionPenalty(LAM["dir"]),
            MagnitudePenalty(LAM["mag"], TAU),
            AlignmentPenalty(LAM["align"]),
        ]
        prior = FixedPrior(prior_vec / prior_vec.norm(), "test")
        engine = GuidedGradient(penalties, hvp=hvp, prior=prior)
        torch.manual_seed(5)  # the same dropout masks as the reference's forward passes
        stats = engine.backward(loss_fn, params, 0, source_fn)
        got = flat([p.grad for p in params], params)
        err = float((got - expected).norm() / expected.norm())
        assert err < tol, f"{mode}/{hvp}: relative error {err:.2e}"
        assert stats.penalty_applied and set(stats.penalties) == {"dir", "mag", "align"}


def test_interrupted_setfit_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    from gradguide.methods.setfit import SetFitObjective
    from gradguide.train import load_run_config

    c = config(tmp_path / "whole", checkpoint_every=1)
    whole = train(c, show_progress=False)
    original = SetFitObjective.loss
    calls = {"n": 0}

    def failing(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return original(self, batch)

    monkeypatch.setattr(SetFitObjective, "loss", failing)
    with pytest.raises(RuntimeError, match="killed"):
        train(config(tmp_path / "cut", checkpoint_every=1), show_progress=False)
    monkeypatch.setattr(SetFitObjective, "loss", original)
    (run_dir,) = (tmp_path / "cut").iterdir()
    resumed = train(load_run_config(run_dir), resume=run_dir, show_progress=False)
    assert resumed.record["timings"]["resumed_at_step"] == 2
    assert resumed.record["curves"]["loss"] == whole.record["curves"]["loss"]
    assert resumed.metrics == whole.metrics
    for name, p in whole.adapted.trainable.items():
        assert torch.equal(p, resumed.adapted.trainable[name]), name


def test_alignment_with_a_source_task_trains_on_its_pairs(tmp_path):
    c = config(tmp_path)
    c.guidance.use = "sgg-align"
    c.guidance.source_task = TASK  # the demo task is the only one without a data root
    rec = train(c, show_progress=False).record
    assert rec["guidance"]["terms"] == ["align"]
    assert len(rec["guidance"]["source"]["ids"]) == 8
    assert all(v is not None for v in rec["curves"]["cos_source"])
    assert all(v is not None for v in rec["curves"]["penalty_align"])


def test_the_sentence_encoder_is_built_on_the_models_device(monkeypatch):
    """SentenceTransformer is told the device of gradguide's model (its own default would pick
    CUDA whenever one is visible), and the pair loss feeds the model on that device."""
    import sentence_transformers

    from gradguide.methods.setfit_body import sentence_encoder

    seen: list[object] = []
    real = sentence_transformers.SentenceTransformer

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get("device"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Spy)
    lm = load_model("tiny-bert")
    body = sentence_encoder(lm, MethodOptions())
    assert seen == [str(next(lm.model.parameters()).device)]
    assert body.device == next(lm.model.parameters()).device


@pytest.mark.parametrize("pooling", ["default", "mean"])
def test_a_decoders_embedding_pools_its_base_models_token_states(demo, pooling):
    """The body embeds with the decoder's own weights: its base model's last hidden states,
    pooled as asked (ST's default for Llama: the last real token), no LM head."""
    adapted, _ = tiny_setfit(model="tiny-llama", setfit_pooling=pooling)
    lm = adapted.model
    texts = [x.text for x in demo[:3]]
    tok = adapted.body[0].tokenizer
    got = adapted.body.encode(texts, convert_to_tensor=True, normalize_embeddings=False)
    with torch.no_grad():
        lm.eval()
        for text, row in zip(texts, got, strict=True):
            ids = tok(text, return_tensors="pt")
            states = lm.model(**ids).last_hidden_state[0]
            want = states[-1] if pooling == "default" else states.mean(0)
            if adapted.body[-1].__class__.__name__ == "Normalize":
                want = want / want.norm()
            assert torch.allclose(row, want, atol=1e-5), pooling
    assert not any("lm_head" in n for n in adapted.trainable)
    head = dict(lm.named_parameters()).get("lm_head.weight")
    assert head is None or not head.requires_grad  # tied (not listed) or frozen
