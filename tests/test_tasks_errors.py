"""Bad input: every problem is a GradguideError naming the file, the line and the field."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from gradguide.errors import GradguideError
from gradguide.tasks import MAX_FIELD_CHARS, TemplateTask, get_task, user_task
from gradguide.tasks.readers import read_delimited, read_json_dict, read_label_lines


def builtin(name: str) -> TemplateTask:
    """A registered task as its concrete type, for dataclasses.replace."""
    task = get_task(name)
    assert isinstance(task, TemplateTask)
    return task


def write(path: Path, text: str | bytes) -> Path:
    """Write a small test file (bytes as they are, text as UTF-8)."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def expect(
    call: Callable[[], object], file: Path, line: int, field: str | None = None
) -> GradguideError:
    """Run ``call`` and check the GradguideError names file, line and field (also in the text)."""
    with pytest.raises(GradguideError) as caught:
        call()
    err = caught.value
    assert (err.file, err.line, err.field) == (str(file), line, field)
    message = str(err)
    assert f"{file}:{line}" in message
    if field is not None:
        assert f"field '{field}'" in message
    return err


def jsonl(*records: object) -> str:
    """JSON Lines text of the given records."""
    return "".join(json.dumps(r) + "\n" for r in records)


GOOD = {"text": "fine", "label": "pos"}
BAD = {"text": "awful", "label": "neg"}


# --- user files ----------------------------------------------------------------------------------


def test_malformed_json_line(tmp_path: Path) -> None:
    file = write(tmp_path / "t.jsonl", jsonl(GOOD, BAD) + '{"text": "x", "label": \n')
    err = expect(lambda: user_task(file), file, 3)
    assert "malformed JSON" in str(err)


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    file = write(tmp_path / "t.jsonl", jsonl(GOOD, BAD) + "[1, 2]\n")
    assert "expected a JSON object" in str(expect(lambda: user_task(file), file, 3))


def test_deeply_nested_json_is_reported_not_crashed(tmp_path: Path) -> None:
    file = write(tmp_path / "t.jsonl", jsonl(GOOD) + "[" * 100_000 + "]" * 100_000 + "\n")
    expect(lambda: user_task(file), file, 2)


def test_missing_field(tmp_path: Path) -> None:
    file = write(tmp_path / "t.jsonl", jsonl(GOOD, {"label": "neg"}))
    task = user_task(file)
    assert "missing field" in str(expect(lambda: task.load("train"), file, 2, "text"))
    no_label = write(tmp_path / "u.jsonl", jsonl(GOOD, {"text": "x"}))
    expect(lambda: user_task(no_label), no_label, 2, "label")


def test_wrong_type(tmp_path: Path) -> None:
    file = write(tmp_path / "t.jsonl", jsonl(GOOD, BAD, {"text": 42, "label": "pos"}))
    err = expect(lambda: user_task(file).load("train"), file, 3, "text")
    assert "expected text, found integer" in str(err)
    listy = write(tmp_path / "u.jsonl", jsonl(GOOD, {"text": "x", "label": ["neg"]}))
    expect(lambda: user_task(listy), listy, 2, "label")


def test_unknown_label_in_eval_file(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", jsonl(GOOD, BAD))
    evaluation = write(tmp_path / "eval.jsonl", jsonl(GOOD, {"text": "meh", "label": "mixed"}))
    task = user_task(train, evaluation)
    err = expect(lambda: task.load("eval"), evaluation, 2, "label")
    assert "unknown label 'mixed'" in str(err)


def test_label_outside_label_words(tmp_path: Path) -> None:
    file = write(tmp_path / "t.jsonl", jsonl(GOOD, BAD))
    task = user_task(file, label_words={"pos": " good", "other": " other"})
    expect(lambda: task.load("train"), file, 2, "label")


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [("empty.jsonl", "", 1), ("blank.jsonl", "\n\n  \n", 4), ("empty.csv", "", 1),
     ("header_only.csv", "text,label\n", 2), ("header_only.tsv", "text\tlabel\r\n", 2)],
)  # fmt: skip
def test_empty_file(tmp_path: Path, name: str, content: str, line: int) -> None:
    file = write(tmp_path / name, content)
    assert "no" in str(expect(lambda: user_task(file), file, line))


def test_non_utf8_byte(tmp_path: Path) -> None:
    file = write(
        tmp_path / "t.jsonl", b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n'
    )
    err = expect(lambda: user_task(file), file, 2)
    assert "0xe9" in str(err) and "utf-8" in str(err)
    csv_file = write(tmp_path / "t.csv", b"text,label\nok,a\nno,b\n\xff,a\n")
    expect(lambda: user_task(csv_file), csv_file, 4)


def test_over_long_field(tmp_path: Path) -> None:
    long = "x" * (MAX_FIELD_CHARS + 1)
    file = write(tmp_path / "t.jsonl", jsonl(GOOD, BAD, {"text": long, "label": "pos"}))
    err = expect(lambda: user_task(file), file, 3, "text")
    assert str(MAX_FIELD_CHARS) in str(err)
    nested = write(
        tmp_path / "n.jsonl", jsonl(GOOD, {"text": "x", "label": "a", "m": {"n": [long]}})
    )
    expect(lambda: user_task(nested), nested, 2, "m.n[0]")
    csv_file = write(tmp_path / "t.csv", f"text,label\nok,a\n{long},b\n")
    expect(lambda: user_task(csv_file), csv_file, 3, "text")
    huge = write(tmp_path / "h.csv", "text,label\nok,a\n" + "y" * 200_000 + ",b\n")
    expect(lambda: user_task(huge), huge, 3)  # beyond the csv module's own field limit


def test_csv_wrong_column_count(tmp_path: Path) -> None:
    file = write(tmp_path / "t.csv", 'text,label\n"two\nlines",a\nok,b\nthree,columns,here\n')
    err = expect(lambda: user_task(file), file, 5)
    assert "expected 2 columns (text, label), found 3" in str(err)


def test_csv_bad_header(tmp_path: Path) -> None:
    file = write(tmp_path / "t.csv", "text,text\na,b\n")
    assert "repeats" in str(expect(lambda: user_task(file), file, 1))


def test_unsupported_extension_and_missing_file(tmp_path: Path) -> None:
    file = write(tmp_path / "t.txt", "pos hello\n")
    with pytest.raises(GradguideError, match=r"unsupported file type \.txt"):
        user_task(file)
    with pytest.raises(GradguideError, match="training file not found"):
        user_task(tmp_path / "missing.jsonl")


def test_single_label_training_file(tmp_path: Path) -> None:
    file = write(tmp_path / "t.jsonl", jsonl(GOOD, GOOD))
    with pytest.raises(GradguideError, match="at least two labels"):
        user_task(file)


# --- built-in formats ----------------------------------------------------------------------------


def test_label_line_formats(tmp_path: Path) -> None:
    trec = write(tmp_path / "trec.txt", "NUM:dist How far ?\nnocolon What ?\n")
    err = expect(lambda: list(read_label_lines(trec, "trec")), trec, 2, "label")
    assert "COARSE:fine" in str(err)
    fin = write(tmp_path / "fin.txt", "Profit rose .@positive\nNo label here\n")
    expect(lambda: list(read_label_lines(fin, "at", encoding="latin-1")), fin, 2, "label")
    emo = write(tmp_path / "emo.txt", "1\ta\tb\tc\thappy\r\n2\ta\tb\thappy\r\n")
    err = expect(lambda: list(read_label_lines(emo, "emo")), emo, 2)
    assert "expected 5 tab-separated fields" in str(err)
    sst = write(tmp_path / "sst.txt", "1 good film\n0\n")
    expect(lambda: list(read_label_lines(sst, "space")), sst, 2, "text")


def test_label_line_parsing(tmp_path: Path) -> None:
    emo = write(tmp_path / "emo.txt", "7\thi\tyo\tsad day\tsad\r\n")
    assert list(read_label_lines(emo, "emo")) == [
        (1, {"id": "7", "turn1": "hi", "turn2": "yo", "turn3": "sad day", "label": "sad"})
    ]
    fin = write(tmp_path / "fin.txt", "Caf\xe9 @ 5 % .@neutral\n".encode("latin-1"))
    assert list(read_label_lines(fin, "at", encoding="latin-1")) == [
        (1, {"label": "neutral", "text": "Café @ 5 % ."})
    ]
    trec = write(tmp_path / "trec.txt", "\nHUM:ind Who ?")
    assert list(read_label_lines(trec, "trec")) == [
        (2, {"label": "HUM", "fine": "ind", "text": "Who ?"})
    ]


def test_builtin_task_unknown_label(tmp_path: Path) -> None:
    write(tmp_path / "sst.txt", "1 good\n2 what\n")
    task = dataclasses.replace(
        builtin("sst2"), split_files={"train": "sst.txt", "dev": "sst.txt"}, base_dir=tmp_path
    )
    err = expect(lambda: task.load("dev"), tmp_path / "sst.txt", 2, "label")
    assert "unknown label '2'" in str(err)


def test_json_dict_reader(tmp_path: Path) -> None:
    good = write(tmp_path / "d.json", json.dumps({"11": {"a": 1}, "22": {"a": [1, 2]}}, indent=4))
    assert list(read_json_dict(good)) == [(2, {"a": 1, "id": "11"}), (5, {"a": [1, 2], "id": "22"})]
    broken = write(tmp_path / "b.json", '{\n  "1": {"a": 1},\n  "2": {"a": }\n}\n')
    assert "malformed JSON" in str(expect(lambda: list(read_json_dict(broken)), broken, 3))
    scalar = write(tmp_path / "s.json", '{\n "1": {"a": 1},\n "2": 5\n}')
    expect(lambda: list(read_json_dict(scalar)), scalar, 3)
    empty = write(tmp_path / "e.json", "{\n}\n")
    expect(lambda: list(read_json_dict(empty)), empty, 2)


def test_copa_and_multirc_bad_records(tmp_path: Path) -> None:
    copa = {"premise": "It rained.", "choice1": "A.", "choice2": "B.", "question": "effect",
            "label": 0, "idx": 0}  # fmt: skip
    file = write(tmp_path / "c.jsonl", jsonl(copa, {**copa, "idx": 1, "label": 2}))
    task = dataclasses.replace(
        builtin("copa"), split_files={"train32": "c.jsonl", "val": "c.jsonl"}, base_dir=tmp_path
    )
    expect(lambda: task.load("val"), file, 2, "label")
    write(file, jsonl({**copa, "question": "why"}))
    expect(lambda: task.load("val"), file, 1, "question")
    write(file, jsonl(copa, {**copa, "idx": 0}))
    assert "duplicate id 'val:0'" in str(expect(lambda: task.load("val"), file, 2))

    answers = [{"text": "a", "idx": 0, "label": 1}, {"text": "b", "idx": 1}]
    passage = {"text": "P.", "questions": [{"question": "Q?", "idx": 0, "answers": answers}]}
    mfile = write(tmp_path / "m.jsonl", jsonl({"idx": 0, "passage": passage}))
    multirc = dataclasses.replace(
        builtin("multirc"), split_files={"train32": "m.jsonl", "val": "m.jsonl"}, base_dir=tmp_path
    )
    expect(lambda: multirc.load("val"), mfile, 1, "passage.questions[0].answers[1].label")


def test_wsc_missing_target_span(tmp_path: Path) -> None:
    record = {"text": "He ran.", "target": {"span1_text": "Tom"}, "idx": 0, "label": True}
    file = write(tmp_path / "w.jsonl", jsonl(record))
    task = dataclasses.replace(
        builtin("wsc"), split_files={"train32": "w.jsonl", "val": "w.jsonl"}, base_dir=tmp_path
    )
    expect(lambda: task.load("val"), file, 1, "target.span2_text")


def test_delimited_reader_line_numbers_follow_quoted_newlines(tmp_path: Path) -> None:
    file = write(tmp_path / "t.csv", 'a,b\r\n"x\r\ny",1\r\n\r\nz,2\r\n')
    assert list(read_delimited(file)) == [(2, {"a": "x\r\ny", "b": "1"}), (5, {"a": "z", "b": "2"})]


def test_split_with_no_records(tmp_path: Path) -> None:
    write(tmp_path / "d.jsonl", jsonl({"text": "ok", "label": "positive", "split": "train"}))
    task = dataclasses.replace(
        builtin("demo-sentiment"),
        split_files={"train": "d.jsonl", "test": "d.jsonl"},
        base_dir=tmp_path,
    )
    assert len(task.load("train")) == 1
    with pytest.raises(GradguideError, match="no records for split 'test'"):
        task.load("test")
    write(tmp_path / "d.jsonl", jsonl({"text": "ok", "label": "positive"}))
    expect(lambda: task.load("train"), tmp_path / "d.jsonl", 1, "split")
