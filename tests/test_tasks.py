"""Tasks: loaders on the real data (counts from shared/data/MANIFEST.md), candidates, registry."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from gradguide.errors import GradguideError
from gradguide.tasks import (
    TemplateTask,
    get_task,
    list_tasks,
    resolve_data_root,
    user_task,
)
from gradguide.tasks import dataroot as dataroot_module
from gradguide.tasks import generic as generic_module

DATA = resolve_data_root()
needs_data = pytest.mark.skipif(
    DATA is None,
    reason="no data root: set GRADGUIDE_DATA or place the data sets at ../shared/data",
)

# (task, split, number of instances) — every split, as listed in shared/data/MANIFEST.md.
COUNTS = [
    ("boolq", "train32", 32), ("boolq", "dev32", 32), ("boolq", "val", 3270),
    ("cb", "train32", 32), ("cb", "dev32", 32), ("cb", "val", 56), ("cb", "train", 250),
    ("copa", "train32", 32), ("copa", "dev32", 32), ("copa", "val", 100), ("copa", "train", 400),
    ("multirc", "train32", 154), ("multirc", "dev32", 167), ("multirc", "val", 4848),
    ("rte", "train32", 32), ("rte", "dev32", 32), ("rte", "val", 277), ("rte", "train", 2490),
    ("wic", "train32", 32), ("wic", "dev32", 32), ("wic", "val", 638), ("wic", "train", 5000),
    ("wsc", "train32", 32), ("wsc", "dev32", 32), ("wsc", "val", 104),
    ("sst2", "train", 6920), ("sst2", "dev", 872), ("sst2", "test", 1821),
    ("mr", "train", 5000), ("mr", "test", 2000),
    ("cr", "train", 1765), ("cr", "test", 2000),
    ("subj", "train", 5000), ("subj", "test", 2000),
    ("trec", "train", 5452), ("trec", "test", 500),
    ("agnews", "train", 5600), ("agnews", "test", 2000),
    ("emo", "train", 5000), ("emo", "dev", 2000), ("emo", "test", 2000),
    ("financial_phrasebank", "train", 2836), ("financial_phrasebank", "test", 2000),
    ("banking77", "train", 5000), ("banking77", "test", 2000),
    ("legal_unfair_tos", "train", 1822), ("legal_unfair_tos", "test", 2000),
    ("scicite", "train", 916), ("scicite", "test", 1862),
    ("medical_abstracts", "train", 657), ("medical_abstracts", "test", 2000),
    ("pubmedqa", "train", 500), ("pubmedqa", "test", 500),
]  # fmt: skip

# Label counts of some evaluation splits (MANIFEST tables).
LABEL_COUNTS = {
    ("cb", "val"): {"contradiction": 28, "entailment": 23, "neutral": 5},
    ("rte", "val"): {"entailment": 146, "not_entailment": 131},
    ("copa", "val"): {"choice1": 55, "choice2": 45},
    ("multirc", "val"): {"0": 2773, "1": 2075},
    ("sst2", "dev"): {"1": 444, "0": 428},
    ("trec", "test"): {"DESC": 138, "NUM": 113, "ENTY": 94, "LOC": 81, "HUM": 65, "ABBR": 9},
    ("emo", "test"): {"others": 1697, "happy": 109, "angry": 101, "sad": 93},
    ("subj", "test"): {"0": 1011, "1": 989},
    ("financial_phrasebank", "test"): {"neutral": 1197, "positive": 557, "negative": 246},
    ("scicite", "test"): {"background": 997, "method": 606, "result": 259},
    ("medical_abstracts", "train"): {"5": 198, "1": 159, "4": 142, "3": 83, "2": 75},
    ("pubmedqa", "test"): {"yes": 276, "no": 169, "maybe": 55},
    ("wsc", "train32"): {"True": 32},
}

_cache: dict[tuple[str, str], list] = {}


def load(name: str, split: str) -> list:
    """Load a split once per test session (the real files are read a single time)."""
    if (name, split) not in _cache:
        _cache[(name, split)] = get_task(name).load(split, DATA)
    return _cache[(name, split)]


def builtin(name: str) -> TemplateTask:
    """A registered task as its concrete type (for replace() and ``splits``)."""
    task = get_task(name)
    assert isinstance(task, TemplateTask)
    return task


def on_file(task: TemplateTask, tmp_path: Path, lines: list[str], split: str = "val") -> list:
    """Run a built-in task's reader and row builder on a small hand-written file."""
    file = tmp_path / "data.jsonl"
    file.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    files = {task.train_split: "data.jsonl", task.eval_split: "data.jsonl", split: "data.jsonl"}
    return dataclasses.replace(task, split_files=files, base_dir=tmp_path).load(split)


# --- real data -----------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize(("name", "split", "count"), COUNTS)
def test_split_counts_match_manifest(name: str, split: str, count: int) -> None:
    task = get_task(name)
    instances = load(name, split)
    assert len(instances) == count
    assert len({i.id for i in instances}) == count
    assert all(i.id.startswith(f"{split}:") for i in instances)
    for instance in instances:
        assert 0 <= instance.gold < len(instance.candidates)
        assert instance.label in task.labels
        assert instance.prompt and instance.prompt == instance.prompt.strip("\n")
    if name != "copa":
        expected = tuple(task.verbalizer[label] for label in task.labels)
        assert all(i.candidates == expected for i in instances)
        assert all(task.labels[i.gold] == i.label for i in instances)


def test_every_manifest_split_is_listed() -> None:
    listed = {(name, split) for name, split, _ in COUNTS}
    known = {(t.name, s) for t in list_tasks() if t.suite != "demo" for s in t.files(None)}
    assert listed == known


@needs_data
@pytest.mark.parametrize(("key", "expected"), list(LABEL_COUNTS.items()))
def test_label_counts_match_manifest(key: tuple[str, str], expected: dict[str, int]) -> None:
    assert Counter(i.label for i in load(*key)) == expected


@needs_data
def test_multirc_val_groups() -> None:
    instances = load("multirc", "val")
    groups = Counter(i.group for i in instances)
    assert len(groups) == 953
    assert sum(groups.values()) == 4848
    first = instances[0]
    assert (first.id, first.group) == ("val:0/0/0", "0/0")
    assert first.prompt.endswith(
        "\nQuestion: Would the mass of a baseball affect how much force you have to use to pick "
        "it up?\nAnswer: No\nIs the answer correct?"
    )
    assert "<br" not in first.prompt


@needs_data
def test_agnews_partition_is_the_seeded_split_of_test_csv() -> None:
    train, test = load("agnews", "train"), load("agnews", "test")
    train_lines = {int(i.id.split(":")[1]) for i in train}
    test_lines = {int(i.id.split(":")[1]) for i in test}
    assert not train_lines & test_lines
    assert train_lines | test_lines == set(range(2, 7602))  # data rows follow the header line
    order = list(range(7600))
    random.Random(0).shuffle(order)
    assert test_lines == {index + 2 for index in order[:2000]}
    assert Counter(i.label for i in train) + Counter(i.label for i in test) == dict.fromkeys(
        ["1", "2", "3", "4"], 1900
    )
    assert all("\\" not in i.prompt for i in test)


@needs_data
def test_classification_candidates_by_hand() -> None:
    first = load("sst2", "dev")[0]
    assert first.id == "dev:1"
    assert first.prompt == "Review: one long string of cliches .\nSentiment:"
    assert first.candidates == (" negative", " positive")
    assert (first.gold, first.label) == (0, "0")
    assert first.demonstration == "Review: one long string of cliches .\nSentiment: negative"
    trec = load("trec", "test")[0]
    assert trec.prompt == "Question: How far is it from Denver to Aspen ?\nAnswer type:"
    assert (trec.label, trec.candidates[trec.gold]) == ("NUM", " number")
    emo = load("emo", "test")[0]
    assert emo.prompt == "A: Or not\nB: why not?\nA: Tell me u know me\n" + (
        "The emotion of A's last message is"
    )
    assert emo.candidates[emo.gold] == " neutral"


@needs_data
def test_superglue_prompts_by_hand() -> None:
    cb = load("cb", "val")[0]
    assert cb.prompt.endswith("\nQuestion: Valence was helping. True, False, or Neither?\nAnswer:")
    assert (cb.label, cb.candidates[cb.gold]) == ("contradiction", " false")
    wsc = load("wsc", "val")[0]
    assert wsc.prompt.endswith(
        "\nQuestion: In the passage above, does the pronoun 'him' refer to 'anyone'?\nAnswer:"
    )
    assert (wsc.id, wsc.label, wsc.candidates[wsc.gold]) == ("val:0", "False", " no")
    copa = load("copa", "val")[0]
    assert copa.prompt == "The man turned on the faucet so"
    assert copa.candidates == (" the toilet filled with water.", " water flowed from the spout.")
    assert copa.gold == 1


@needs_data
def test_latin1_files_decode_and_pubmedqa_ids() -> None:
    assert any("é" in i.prompt for i in load("mr", "train"))
    assert load("pubmedqa", "test")[0].id == "test:21645374"
    banking = get_task("banking77")
    assert banking.verbalizer["reverted_card_payment?"] == " reverted card payment?"


# --- hand-made records: COPA cause/effect, MultiRC grouping ---------------------------------------


def test_copa_cause_and_effect(tmp_path: Path) -> None:
    cause_record = {"premise": "My body cast a shadow over the grass.", "question": "cause",
                    "choice1": "The sun was rising.", "choice2": "The grass was cut.",
                    "label": 0, "idx": 3}  # fmt: skip
    effect_record = {"premise": "The girl found a bug in her cereal.", "question": "effect",
                     "choice1": "She poured milk in the bowl.", "choice2": "She lost her appetite.",
                     "label": 1, "idx": 4}  # fmt: skip
    records = [cause_record, effect_record]
    cause, effect = on_file(builtin("copa"), tmp_path, [json.dumps(r) for r in records])
    assert cause.id == "val:3"
    assert cause.prompt == "My body cast a shadow over the grass because"
    assert cause.candidates == (" the sun was rising.", " the grass was cut.")
    assert (cause.gold, cause.label) == (0, "choice1")
    assert effect.prompt == "The girl found a bug in her cereal so"
    assert effect.candidates == (" she poured milk in the bowl.", " she lost her appetite.")
    assert (effect.gold, effect.label) == (1, "choice2")
    assert effect.demonstration == "The girl found a bug in her cereal so she lost her appetite."


def test_multirc_one_instance_per_answer_grouped_by_question(tmp_path: Path) -> None:
    record = {
        "idx": 7,
        "version": 1.1,
        "passage": {
            "text": "<b>Sent 1: </b>Ann has a red bike.<br><b>Sent 2: </b>Bob has none.<br>",
            "questions": [
                {"question": "Who has a bike?", "idx": 11, "answers": [
                    {"text": "Ann", "idx": 30, "label": 1},
                    {"text": "Bob", "idx": 31, "label": 0},
                    {"text": "Ann does", "idx": 32, "label": 1}]},
                {"question": "What colour is it?", "idx": 12, "answers": [
                    {"text": "Red", "idx": 33, "label": 1},
                    {"text": "Blue", "idx": 34, "label": 0}]},
            ],
        },
    }  # fmt: skip
    instances = on_file(builtin("multirc"), tmp_path, [json.dumps(record)])
    assert [i.id for i in instances] == [
        "val:7/11/30", "val:7/11/31", "val:7/11/32", "val:7/12/33", "val:7/12/34"
    ]  # fmt: skip
    assert [i.group for i in instances] == ["7/11"] * 3 + ["7/12"] * 2
    assert [i.label for i in instances] == ["1", "0", "1", "1", "0"]
    assert instances[1].prompt == (
        "Ann has a red bike. Bob has none.\nQuestion: Who has a bike?\nAnswer: Bob\n"
        "Is the answer correct?"
    )
    assert instances[1].candidates == (" no", " yes")
    assert instances[1].gold == 0
    assert get_task("multirc").metrics == ("accuracy", "f1a", "em")


# --- user tasks ----------------------------------------------------------------------------------


def test_user_task_jsonl(tmp_path: Path) -> None:
    train = tmp_path / "reviews.jsonl"
    rows = [{"text": "fine", "label": "pos"}, {"text": "bad", "label": "neg"},
            {"text": "great", "label": "pos"}]  # fmt: skip
    train.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    task = user_task(train)
    assert task.name == "reviews"
    assert task.labels == ("neg", "pos")
    assert task.verbalizer == {"neg": " neg", "pos": " pos"}
    assert "defaults to the training file" in task.description
    instances = task.load("eval")
    assert [i.id for i in instances] == ["eval:1", "eval:2", "eval:3"]
    assert instances[0].prompt == "fine\nLabel:"
    assert (instances[0].candidates, instances[0].gold) == ((" neg", " pos"), 1)


def test_user_task_csv_two_fields_label_words_and_eval_file(tmp_path: Path) -> None:
    train = tmp_path / "pairs.csv"
    train.write_text(
        'premise,hypothesis,gold\n"A man,\nsleeping",A man rests,1\nA cat,A dog,0\n',
        encoding="utf-8",
    )
    evaluation = tmp_path / "pairs_eval.tsv"
    evaluation.write_text("premise\thypothesis\tgold\nx\ty\t0\n", encoding="utf-8")
    task = user_task(
        train,
        evaluation,
        text_fields=("premise", "hypothesis"),
        label_field="gold",
        label_words={"0": " no", "1": " yes"},
        name="pairs",
    )
    assert task.template == "{premise}\n{hypothesis}\nLabel:"
    train_instances = task.load("train")
    assert [i.id for i in train_instances] == ["train:2", "train:4"]
    assert train_instances[0].prompt == "A man,\nsleeping\nA man rests\nLabel:"
    assert train_instances[0].candidates[train_instances[0].gold] == " yes"
    evaluated = task.load("eval")
    assert (len(evaluated), evaluated[0].label) == (1, "0")
    assert str(evaluation) in task.description


def test_user_task_custom_template_and_numeric_json_labels(tmp_path: Path) -> None:
    train = tmp_path / "t.json"
    train.write_text('{"q": "Is it?", "label": 1}\n{"q": "Not?", "label": 0}\n', encoding="utf-8")
    task = user_task(train, template="Q: {q}\nA:")
    assert task.labels == ("0", "1")
    assert task.load("train")[0].prompt == "Q: Is it?\nA:"


# --- registry and data root ----------------------------------------------------------------------


def test_registry_names_metrics_and_defaults() -> None:
    tasks = list_tasks()
    names = [t.name for t in tasks]
    assert len(names) == len(set(names)) == 21
    for task in tasks:
        assert "accuracy" in task.metrics
        assert {task.train_split, task.eval_split} <= set(task.files(None))
        assert all(word.startswith(" ") for word in task.verbalizer.values())
    assert get_task("cb").metrics == ("accuracy", "macro_f1")
    assert {t.suite for t in tasks} == {"superglue", "classification", "domain", "demo"}
    assert get_task("BoolQ") is get_task("boolq")
    assert get_task("financial-phrasebank").name == "financial_phrasebank"
    assert get_task("copa").verbalizer == {}
    assert (get_task("rte").train_split, get_task("rte").eval_split) == ("train32", "val")
    assert (get_task("scicite").files(Path("/d"))["train"]) == Path("/d/domain/scicite/dev.jsonl")


def test_get_task_overrides_and_bad_names() -> None:
    task = get_task("sst2", template="Text: {text}\nMood:", verbalizer={"0": " bad", "1": " good"})
    assert (task.template, task.verbalizer["1"]) == ("Text: {text}\nMood:", " good")
    assert get_task("sst2").template == "Review: {text}\nSentiment:"  # the registry is unchanged
    numeric_keys = get_task("sst2", verbalizer={0: " bad", 1: " good"})  # type: ignore[dict-item]
    assert numeric_keys.verbalizer == {"0": " bad", "1": " good"}
    with pytest.raises(GradguideError, match=r"unknown task 'nope'.*boolq"):
        get_task("nope")
    with pytest.raises(GradguideError, match="unknown; available: text"):
        get_task("sst2", template="{sentence}\nSentiment:")
    with pytest.raises(GradguideError, match="no completion for label"):
        get_task("sst2", verbalizer={"0": " bad"})
    with pytest.raises(GradguideError, match="unknown label"):
        get_task("sst2", verbalizer={"0": " bad", "1": " good", "2": " meh"})
    with pytest.raises(GradguideError, match="share the completion"):
        get_task("sst2", verbalizer={"0": " ok", "1": " ok"})
    with pytest.raises(GradguideError, match="no verbalizer"):
        get_task("copa", verbalizer={"choice1": " a", "choice2": " b"})


@pytest.mark.parametrize(
    ("template", "message"),
    [("{}\nLabel:", "positional"), ("{text:>5}", "format spec"), ("no fields", "uses no field"),
     ("{text", "malformed template")],
)  # fmt: skip
def test_bad_templates(template: str, message: str) -> None:
    with pytest.raises(GradguideError, match=message):
        get_task("sst2", template=template)


def test_missing_file_names_file_root_and_how(tmp_path: Path) -> None:
    with pytest.raises(GradguideError) as err:
        get_task("cb").load("val", tmp_path)
    message = str(err.value)
    assert "superglue/CB/val.jsonl" in message and str(tmp_path) in message
    assert "--data-dir" in message and "GRADGUIDE_DATA" in message
    with pytest.raises(GradguideError, match="has no split 'dev'"):
        get_task("cb").load("dev", tmp_path)


def test_no_data_root_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADGUIDE_DATA", raising=False)
    monkeypatch.setattr(dataroot_module, "default_data_roots", lambda: [])
    assert resolve_data_root() is None
    with pytest.raises(GradguideError, match=r"none was found.*--data-dir.*GRADGUIDE_DATA"):
        get_task("rte").load("val")


def test_resolve_data_root_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env = tmp_path / "a", tmp_path / "b"
    explicit.mkdir()
    env.mkdir()
    monkeypatch.setenv("GRADGUIDE_DATA", str(env))
    assert resolve_data_root(explicit) == explicit.resolve()
    assert resolve_data_root() == env.resolve()
    with pytest.raises(GradguideError, match="does not exist"):
        resolve_data_root(tmp_path / "missing")
    monkeypatch.setenv("GRADGUIDE_DATA", str(tmp_path / "gone"))
    with pytest.raises(GradguideError, match="GRADGUIDE_DATA"):
        resolve_data_root()
    monkeypatch.delenv("GRADGUIDE_DATA")
    monkeypatch.chdir(env)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(dataroot_module, "_REPO_ROOT", tmp_path / "nowhere" / "repo")
    assert resolve_data_root() == (tmp_path / "shared" / "data").resolve()  # ../shared/data of cwd


def test_default_root_is_shared_data_next_to_the_repository() -> None:
    repo = Path(__file__).resolve().parents[1]
    assert dataroot_module.default_data_roots()[0] == repo.parent / "shared" / "data"


# --- demo task -----------------------------------------------------------------------------------


def test_demo_task_loads_without_any_data_root(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_root() -> None:
        raise AssertionError("the demo task must not look for a data root")

    monkeypatch.setattr(generic_module, "resolve_data_root", no_root)
    task = get_task("demo-sentiment")
    train, test = task.load("train"), task.load("test")
    assert (len(train), len(test)) == (24, 24)
    assert Counter(i.label for i in train) == Counter(i.label for i in test) == {
        "negative": 12, "positive": 12
    }  # fmt: skip
    assert not {i.prompt for i in train} & {i.prompt for i in test}
    assert task.template == get_task("sst2").template
    assert sorted(task.verbalizer.values()) == sorted(get_task("sst2").verbalizer.values())
    assert "written for gradguide" in task.description and "not a benchmark" in task.description


@needs_data
@pytest.mark.parametrize("name", ["legal_unfair_tos", "financial_phrasebank"])
def test_imbalanced_domain_tasks_report_macro_f1_beside_accuracy(name: str) -> None:
    """Always answering the majority label scores high accuracy on these sets (90% 'Other' in
    unfair_tos) and little macro-F1: a run on them is read with both. Catches the metric left
    off the task, and one that does not see the majority answer for what it is."""
    from gradguide.metrics import compute_metrics, majority_accuracy

    task = get_task(name)
    xs = task.load(task.eval_split, DATA)[:300]
    top = max(set(x.gold for x in xs), key=[x.gold for x in xs].count)
    scores = compute_metrics(task.metrics, xs, [top] * len(xs))
    assert scores["accuracy"] == pytest.approx(majority_accuracy(xs))
    assert scores["macro_f1"] < 0.5 * scores["accuracy"]
