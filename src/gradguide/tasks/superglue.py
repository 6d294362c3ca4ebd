"""SuperGLUE tasks (BoolQ, CB, COPA, MultiRC, RTE, WiC, WSC) over the official jsonl files.

Splits: ``train32`` (the FewGLUE 32-example set, default training pool), ``dev32`` (P-tuning's
32-example development set), ``val`` (the official validation set, default evaluation split) and
``train`` (the full official training set) where the data root has it (CB, COPA, RTE, WiC).
Ids are ``"<split>:<idx>"`` (MultiRC: ``"<split>:<passage>/<question>/<answer>"``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from gradguide.errors import GradguideError
from gradguide.tasks.generic import Row, RowBuilder, TemplateTask, label_text, record_rows
from gradguide.tasks.generic import require as _require
from gradguide.tasks.readers import Record, read_jsonl

_NO_YES = {"False": " no", "True": " yes"}
_BOLD_SENT = re.compile(r"<b>\s*Sent\s+\d+\s*:\s*</b>", re.IGNORECASE)
_BREAK = re.compile(r"\s*<br\s*/?>\s*", re.IGNORECASE)
_BOLD = re.compile(r"</?b>", re.IGNORECASE)


def _splits(folder: str, full_train: bool) -> dict[str, str]:
    """The split files of one SuperGLUE task folder."""
    files = {split: f"superglue/{folder}/{split}.jsonl" for split in ("train32", "dev32", "val")}
    if full_train:
        files["train"] = f"superglue/{folder}/train.jsonl"
    return files


def _task(
    name: str,
    folder: str,
    description: str,
    labels: tuple[str, ...],
    template: str,
    verbalizer: Mapping[str, str],
    fields: tuple[str, ...],
    *,
    full_train: bool = False,
    rows: RowBuilder | None = None,
    metrics: tuple[str, ...] = ("accuracy",),
    uses_verbalizer: bool = True,
) -> TemplateTask:
    """One SuperGLUE task entry: FewGLUE train32 for training, the official val for evaluation."""
    return TemplateTask(
        name=name,
        suite="superglue",
        description=description,
        labels=labels,
        template=template,
        verbalizer=verbalizer,
        split_files=_splits(folder, full_train),
        read=partial(read_jsonl, encoding="utf-8"),
        train_split="train32",
        eval_split="val",
        fields=fields,
        metrics=metrics,
        rows=rows if rows is not None else record_rows(id_field="idx"),
        uses_verbalizer=uses_verbalizer,
    )


def lower_first(text: str) -> str:
    """Lower-case the first letter ("The grass was cut." → "the grass was cut.")."""
    text = text.strip()
    return text[:1].lower() + text[1:]


def copa_rows(record: Record, path: Path, line: int) -> list[Row]:
    """COPA: premise minus its final period + " because"/" so"; the two choices complete it."""
    premise = _require(record, "premise", str, path, line).strip()
    question = _require(record, "question", str, path, line)
    if question not in ("cause", "effect"):
        raise GradguideError(
            f"expected 'cause' or 'effect', found {question!r}",
            file=path,
            line=line,
            field="question",
        )
    choices = []
    for name in ("choice1", "choice2"):
        choice = _require(record, name, str, path, line)
        if not choice.strip():
            raise GradguideError("empty choice", file=path, line=line, field=name)
        choices.append(" " + lower_first(choice))
    label = _require(record, "label", int, path, line)
    if label not in (0, 1):
        raise GradguideError(
            f"unknown label {label!r}; COPA labels are 0 (choice1) and 1 (choice2)",
            file=path,
            line=line,
            field="label",
        )
    key = str(_require(record, "idx", (int, str), path, line))
    stem = premise[:-1] if premise.endswith(".") else premise
    fields = {
        **record,
        "premise_stem": stem,
        "connective": "because" if question == "cause" else "so",
    }
    return [Row(key=key, fields=fields, label=f"choice{label + 1}", candidates=tuple(choices))]


def clean_paragraph(text: str) -> str:
    """Drop MultiRC's ``<b>Sent N: </b>`` markers and turn ``<br>`` tags into spaces."""
    text = _BOLD_SENT.sub("", text)
    text = _BREAK.sub(" ", text)
    return _BOLD.sub("", text).strip()


def _dict_at(value: object, path: Path, line: int, where: str) -> dict[str, object]:
    """A nested JSON object, or a GradguideError naming where it should have been."""
    if not isinstance(value, dict):
        raise GradguideError(
            f"expected an object, found {type(value).__name__}", file=path, line=line, field=where
        )
    return value


def multirc_rows(record: Record, path: Path, line: int) -> list[Row]:
    """MultiRC: one yes/no row per answer option, grouped by (passage idx, question idx)."""
    passage_idx = _require(record, "idx", (int, str), path, line)
    passage = _require(record, "passage", dict, path, line)
    paragraph = clean_paragraph(_require(passage, "text", str, path, line, where="passage"))
    questions = _require(passage, "questions", list, path, line, where="passage")
    rows: list[Row] = []
    for qi, raw_question in enumerate(questions):
        where = f"passage.questions[{qi}]"
        question = _dict_at(raw_question, path, line, where)
        text = _require(question, "question", str, path, line, where=where)
        question_idx = _require(question, "idx", (int, str), path, line, where=where)
        answers = _require(question, "answers", list, path, line, where=where)
        group = f"{passage_idx}/{question_idx}"
        for ai, raw_answer in enumerate(answers):
            awhere = f"{where}.answers[{ai}]"
            answer = _dict_at(raw_answer, path, line, awhere)
            answer_text = _require(answer, "text", str, path, line, where=awhere)
            answer_idx = _require(answer, "idx", (int, str), path, line, where=awhere)
            label = _require(answer, "label", int, path, line, where=awhere)
            rows.append(
                Row(
                    key=f"{group}/{answer_idx}",
                    fields={"paragraph": paragraph, "question": text, "answer": answer_text},
                    label=label_text(label, path, line, f"{awhere}.label"),
                    label_field=f"{awhere}.label",
                    group=group,
                )
            )
    return rows


def _wsc_prepare(record: Record, path: Path, line: int) -> Record:
    """WSC: lift the nested ``target`` span fields to the top level for the template."""
    target = _require(record, "target", dict, path, line)
    out = dict(record)
    for name in ("span1_text", "span2_text"):
        out[name] = _require(target, name, str, path, line, where="target")
    for name in ("span1_index", "span2_index"):
        if name in target:
            out[name] = target[name]
    return out


TASKS: tuple[TemplateTask, ...] = (
    _task(
        "boolq",
        "BoolQ",
        "BoolQ (SuperGLUE): answer a yes/no question about a Wikipedia passage. "
        "train32/dev32 = FewGLUE 32-example sets, val = official validation (3270).",
        ("False", "True"),
        "{passage}\nQuestion: {question}?\nAnswer:",
        _NO_YES,
        ("passage", "question"),
    ),
    _task(
        "cb",
        "CB",
        "CommitmentBank (SuperGLUE): does the premise entail, contradict or neither the "
        "hypothesis. val = official validation (56); train = full official training set (250).",
        ("entailment", "contradiction", "neutral"),
        "{premise}\nQuestion: {hypothesis}. True, False, or Neither?\nAnswer:",
        {"entailment": " true", "contradiction": " false", "neutral": " neither"},
        ("premise", "hypothesis"),
        full_train=True,
        metrics=("accuracy", "macro_f1"),
    ),
    _task(
        "copa",
        "COPA",
        "COPA (SuperGLUE): choose the more plausible cause or effect of a premise; the two "
        "choices are the candidates. val = official validation (100); train = full (400).",
        ("choice1", "choice2"),
        "{premise_stem} {connective}",
        {},
        ("premise_stem", "connective", "premise", "question", "choice1", "choice2"),
        full_train=True,
        rows=copa_rows,
        uses_verbalizer=False,
    ),
    _task(
        "multirc",
        "MultiRC",
        "MultiRC (SuperGLUE): is each answer option to a question about a paragraph correct; "
        "one yes/no instance per option, grouped by question. val = 953 questions, 4848 options.",
        ("0", "1"),
        "{paragraph}\nQuestion: {question}\nAnswer: {answer}\nIs the answer correct?",
        {"0": " no", "1": " yes"},
        ("paragraph", "question", "answer"),
        rows=multirc_rows,
        metrics=("accuracy", "f1a", "em"),
    ),
    _task(
        "rte",
        "RTE",
        "RTE (SuperGLUE): does the premise entail the hypothesis. val = official validation "
        "(277); train = full official training set (2490).",
        ("entailment", "not_entailment"),
        "{premise}\nQuestion: {hypothesis} True or False?\nAnswer:",
        {"entailment": " true", "not_entailment": " false"},
        ("premise", "hypothesis"),
        full_train=True,
    ),
    _task(
        "wic",
        "WiC",
        "WiC (SuperGLUE): is a word used with the same meaning in two sentences. val = official "
        "validation (638); train = 5000 of the official training set.",
        ("False", "True"),
        "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: Is the word '{word}' used "
        "with the same meaning in both sentences?\nAnswer:",
        _NO_YES,
        ("sentence1", "sentence2", "word"),
        full_train=True,
    ),
    _task(
        "wsc",
        "WSC",
        "WSC (SuperGLUE): does a pronoun refer to a given noun phrase. val = official validation "
        "(104); FewGLUE's train32 holds only 'True' examples.",
        ("False", "True"),
        "{text}\nQuestion: In the passage above, does the pronoun '{span2_text}' refer to "
        "'{span1_text}'?\nAnswer:",
        _NO_YES,
        ("text", "span1_text", "span2_text"),
        rows=record_rows(id_field="idx", prepare=_wsc_prepare),
    ),
)
