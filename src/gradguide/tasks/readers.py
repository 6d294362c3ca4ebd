"""Readers for the task file formats: each yields (line number, record) and reports bad input.

Every problem (undecodable byte, malformed JSON, wrong column count, over-long field, empty file)
is a GradguideError naming the file, the line and, where there is one, the field; the readers never
let a stray exception through. Formats and encodings follow shared/data/MANIFEST.md.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from gradguide.errors import GradguideError

#: The longest string a record field may hold; longer values are treated as a broken file.
MAX_FIELD_CHARS = 100_000

Record = dict[str, Any]
LineFormat = Literal["space", "trec", "at", "emo"]

_EMO_FIELDS = ("id", "turn1", "turn2", "turn3", "label")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Read a whole file as text, reporting the line of the first byte that does not decode."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise GradguideError(f"cannot read file: {err.strerror or err}", file=path) from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        byte = data[err.start : err.start + 1].hex()
        raise GradguideError(
            f"byte 0x{byte} at column {column} is not valid {encoding}; "
            f"save the file as {encoding}",
            file=path,
            line=line,
        ) from None


def check_field_sizes(record: Any, path: Path, line: int, prefix: str = "") -> None:
    """Reject any string anywhere inside a record that is longer than MAX_FIELD_CHARS."""
    stack: list[tuple[str, Any]] = [(prefix, record)]
    while stack:
        name, value = stack.pop()
        if isinstance(value, str):
            if len(value) > MAX_FIELD_CHARS:
                raise GradguideError(
                    f"value is {len(value)} characters long, more than the limit of "
                    f"{MAX_FIELD_CHARS}",
                    file=path,
                    line=line,
                    field=name or None,
                )
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((f"{name}.{key}" if name else str(key), item))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                stack.append((f"{name}[{index}]", item))


def _no_records(path: Path, line: int, what: str = "records") -> GradguideError:
    """The error for a file that holds nothing to read (reported at the line a record was due)."""
    return GradguideError(f"the file holds no {what}", file=path, line=line)


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Split on LF only (latin-1 text may hold U+0085), dropping a CR before it."""
    for number, raw in enumerate(text.split("\n"), start=1):
        yield number, raw[:-1] if raw.endswith("\r") else raw


def read_jsonl(path: Path, *, encoding: str = "utf-8") -> Iterator[tuple[int, Record]]:
    """Yield the JSON object on every non-blank line of a JSON Lines file."""
    text = read_text(path, encoding)
    count = 0
    last = 0
    for number, line in _lines(text):
        last = number
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise GradguideError(
                f"malformed JSON: {err.msg} (column {err.colno}); the file must hold one JSON "
                "object per line",
                file=path,
                line=number,
            ) from None
        except RecursionError:
            raise GradguideError("JSON nested too deeply", file=path, line=number) from None
        if not isinstance(record, dict):
            raise GradguideError(
                f"expected a JSON object, found {type(record).__name__}", file=path, line=number
            )
        check_field_sizes(record, path, number)
        count += 1
        yield number, record
    if count == 0:
        raise _no_records(path, max(last, 1))


def _skip_ws(text: str, pos: int) -> int:
    """Position of the first non-whitespace character at or after ``pos``."""
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos


def read_json_dict(
    path: Path, *, key_field: str = "id", encoding: str = "utf-8"
) -> Iterator[tuple[int, Record]]:
    """Yield the values of a JSON object keyed by id (PubMedQA), each with its key under key_field.

    The line number is the line where the value starts, found by walking the top-level object.
    """
    text = read_text(path, encoding)
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        raise GradguideError(
            f"malformed JSON: {err.msg} (column {err.colno})", file=path, line=err.lineno
        ) from None
    except RecursionError:
        raise GradguideError("JSON nested too deeply", file=path, line=1) from None
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if text[pos] != "{":
        raise GradguideError(
            "expected a JSON object keyed by id at the top level",
            file=path,
            line=text.count("\n", 0, pos) + 1,
        )
    pos = _skip_ws(text, pos + 1)
    line, counted = 1, 0
    count = 0
    while text[pos] != "}":
        key, pos = decoder.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
        pos = _skip_ws(text, pos + 1)  # the ':' (the text already parsed as valid JSON)
        line += text.count("\n", counted, pos)
        counted = pos
        value, pos = decoder.raw_decode(text, pos)
        if not isinstance(value, dict):
            raise GradguideError(
                f"expected a JSON object for id {key!r}, found {type(value).__name__}",
                file=path,
                line=line,
            )
        record = dict(value)
        record[key_field] = key
        check_field_sizes(record, path, line)
        count += 1
        yield line, record
        pos = _skip_ws(text, pos)
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
    if count == 0:
        raise _no_records(path, text.count("\n", 0, pos) + 1)


def read_delimited(
    path: Path, *, delimiter: str = ",", encoding: str = "utf-8"
) -> Iterator[tuple[int, Record]]:
    """Yield each data row of a CSV/TSV file with a header line as a dict keyed by the header.

    Quoted fields may hold newlines; the line number is the line where the row starts.
    """
    text = read_text(path, encoding)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    count = 0
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise GradguideError(
                f"cannot parse the row: {err} (fields may hold at most {MAX_FIELD_CHARS} "
                "characters)",
                file=path,
                line=start,
            ) from None
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if header is None:
            header = [name.strip() for name in row]
            if any(not name for name in header):
                raise GradguideError("the header has an empty column name", file=path, line=start)
            duplicates = sorted({name for name in header if header.count(name) > 1})
            if duplicates:
                raise GradguideError(
                    f"the header repeats column name(s) {', '.join(duplicates)}",
                    file=path,
                    line=start,
                )
            continue
        if len(row) != len(header):
            raise GradguideError(
                f"expected {len(header)} columns ({', '.join(header)}), found {len(row)}",
                file=path,
                line=start,
            )
        record = dict(zip(header, row, strict=True))
        check_field_sizes(record, path, start)
        count += 1
        yield start, record
    if header is None:
        raise _no_records(path, 1, "header line and no records")
    if count == 0:
        raise _no_records(path, reader.line_num + 1, "records after the header")


def _parse_line(line: str, fmt: LineFormat, path: Path, number: int) -> Record:
    """Split one label-prefixed line into its fields."""
    if fmt == "space":
        label, _, text = line.strip().partition(" ")
        record: Record = {"label": label, "text": text.strip()}
    elif fmt == "trec":
        head, _, text = line.strip().partition(" ")
        coarse, colon, fine = head.partition(":")
        if not colon or not coarse:
            raise GradguideError(
                f"expected 'COARSE:fine question', found {head!r}",
                file=path,
                line=number,
                field="label",
            )
        record = {"label": coarse, "fine": fine, "text": text.strip()}
    elif fmt == "at":
        text, at, label = line.rpartition("@")
        if not at:
            raise GradguideError(
                "expected 'sentence@label' (no '@' found)", file=path, line=number, field="label"
            )
        record = {"label": label.strip(), "text": text.strip()}
    else:
        parts = line.split("\t")
        if len(parts) != len(_EMO_FIELDS):
            raise GradguideError(
                f"expected {len(_EMO_FIELDS)} tab-separated fields ({', '.join(_EMO_FIELDS)}), "
                f"found {len(parts)}",
                file=path,
                line=number,
            )
        record = dict(zip(_EMO_FIELDS, (part.strip() for part in parts), strict=True))
    for name in ("label", "text"):
        if name in record and not record[name]:
            raise GradguideError(f"empty {name}", file=path, line=number, field=name)
    return record


def read_label_lines(
    path: Path, fmt: LineFormat, *, encoding: str = "utf-8"
) -> Iterator[tuple[int, Record]]:
    """Yield the records of a one-example-per-line text file.

    Formats: ``space`` = ``<label> <sentence>`` (SST-2, MR, Subj, CR); ``trec`` =
    ``COARSE:fine question`` (label is the coarse class); ``at`` = ``sentence@label`` (Financial
    PhraseBank); ``emo`` = tab-separated id, turn1, turn2, turn3, label (EmoContext).
    """
    text = read_text(path, encoding)
    count = 0
    last = 0
    for number, line in _lines(text):
        last = number
        if not line.strip():
            continue
        record = _parse_line(line, fmt, path, number)
        check_field_sizes(record, path, number)
        count += 1
        yield number, record
    if count == 0:
        raise _no_records(path, max(last, 1))


def read_records(path: Path, *, encoding: str = "utf-8") -> Iterator[tuple[int, Record]]:
    """Read a user file by its extension: ``.jsonl``/``.json`` (JSON Lines), ``.csv``, ``.tsv``."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path, encoding=encoding)
    if suffix == ".csv":
        return read_delimited(path, delimiter=",", encoding=encoding)
    if suffix == ".tsv":
        return read_delimited(path, delimiter="\t", encoding=encoding)
    raise GradguideError(
        f"unsupported file type {path.suffix or '(none)'}; use .jsonl, .json (one object per "
        "line), .csv or .tsv",
        file=path,
    )
