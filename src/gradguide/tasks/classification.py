"""Classic text classification tasks: SST-2, MR, CR, Subj, TREC, AG News, EmoContext.

Files and splits as in shared/data/MANIFEST.md. Ids are ``"<split>:<line>"``, the record's line
number in its file, so any split can be traced back to the file.
"""

from __future__ import annotations

from functools import partial

from gradguide.tasks.generic import (
    Reader,
    TemplateTask,
    record_rows,
    rename,
    seeded_partition,
    suite_task,
)
from gradguide.tasks.readers import LineFormat, read_delimited, read_label_lines

_REVIEW = "Review: {text}\nSentiment:"
_NEG_POS = {"0": " negative", "1": " positive"}

#: AG News has only its official test file here: a seeded partition of it gives both splits.
AGNEWS_TEST_SIZE = 2000


def _lines(fmt: LineFormat, encoding: str = "utf-8") -> Reader:
    """A reader for one-example-per-line files of the given format and encoding."""
    return partial(read_label_lines, fmt=fmt, encoding=encoding)


_task = partial(suite_task, "classification")


def _agnews_clean(text: str) -> str:
    """AG News marks line breaks with a backslash; read them as spaces."""
    return " ".join(text.replace("\\", " ").split())


TASKS: tuple[TemplateTask, ...] = (
    _task(
        "sst2",
        "SST-2: binary sentiment of movie-review sentences (lower-cased, tokenised). "
        "Splits train (6920), dev (872, evaluation), test (1821).",
        ("0", "1"),
        _REVIEW,
        _NEG_POS,
        ("text",),
        {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"},
        _lines("space"),
        eval_split="dev",
    ),
    _task(
        "mr",
        "MR (Pang & Lee 2005): binary sentiment of movie-review snippets. "
        "Splits train (5000), test (2000).",
        ("0", "1"),
        _REVIEW,
        _NEG_POS,
        ("text",),
        {"train": "train.txt", "test": "test.txt"},
        _lines("space", "latin-1"),
    ),
    _task(
        "cr",
        "CR (Hu & Liu 2004): binary sentiment of customer product-review sentences. "
        "Splits train (1765), test (2000).",
        ("0", "1"),
        _REVIEW,
        _NEG_POS,
        ("text",),
        {"train": "train.txt", "test": "test.txt"},
        _lines("space"),
    ),
    _task(
        "subj",
        "Subj (Pang & Lee 2004): is a movie sentence subjective or objective. "
        "Splits train (5000), test (2000).",
        ("0", "1"),
        "Sentence: {text}\nIs this sentence subjective or objective?\nAnswer:",
        {"0": " subjective", "1": " objective"},
        ("text",),
        {"train": "train.txt", "test": "test.txt"},
        _lines("space", "latin-1"),
    ),
    _task(
        "trec",
        "TREC (Li & Roth): the coarse answer type of a question (6 classes). "
        "Splits train (5452), test (500).",
        ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"),
        "Question: {text}\nAnswer type:",
        {
            "ABBR": " abbreviation",
            "DESC": " description",
            "ENTY": " entity",
            "HUM": " person",
            "LOC": " location",
            "NUM": " number",
        },
        ("text", "fine"),
        {"train": "train.txt", "test": "test.txt"},
        _lines("trec"),
    ),
    _task(
        "agnews",
        "AG News: the topic of a news article (world, sports, business, technology). Only the "
        "official test.csv is available: a Random(0) shuffle of its 7600 rows gives test (first "
        "2000) and train (the other 5600); ids keep the file's line number.",
        ("1", "2", "3", "4"),
        "Title: {title}\nArticle: {description}\nTopic:",
        {"1": " world", "2": " sports", "3": " business", "4": " technology"},
        ("title", "description"),
        {"train": "test.csv", "test": "test.csv"},
        partial(read_delimited, delimiter=",", encoding="utf-8"),
        rows=record_rows(
            label_field="Class Index",
            prepare=rename({"Title": "title", "Description": "description"}, _agnews_clean),
        ),
        select=seeded_partition({"test": AGNEWS_TEST_SIZE, "train": None}, seed=0),
    ),
    _task(
        "emo",
        "EmoContext (SemEval-2019 Task 3): the emotion of the last turn of a three-turn "
        "dialogue. Splits train (5000), dev (2000), test (2000, evaluation); dev/test are 85% "
        "'others', so the official metric is micro-F1 over happy, sad and angry (f1_not_first).",
        ("others", "happy", "sad", "angry"),
        "A: {turn1}\nB: {turn2}\nA: {turn3}\nThe emotion of A's last message is",
        {"others": " neutral", "happy": " happy", "sad": " sad", "angry": " angry"},
        ("turn1", "turn2", "turn3"),
        {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"},
        _lines("emo"),
        metrics=("accuracy", "f1_not_first"),
    ),
)
