"""Import files of accounts in bulk (``hiscrm account import``, the console's import
form): CSV with a header, or JSON lines.

Only the file format lives here: each row becomes an :class:`ImportRow` with its line
number, and the accounts library checks it (``AccountStore.plan_import``). CSV cells are
text, decoded like ``field=value`` on the command line (an empty cell clears a field
that may be empty); JSON lines carry typed values (``null`` clears).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import PurePath

from pydantic_core import from_json

from .accounts import ImportRow, RowProblem, check_columns
from .errors import InvalidAccountConfig
from .limits import MAX_FIELD_BYTES

FORMATS = ("csv", "jsonl")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
# one row or cell: user_info may take MAX_FIELD_BYTES, and quoting can double it
MAX_ROW_BYTES = 4 * MAX_FIELD_BYTES
_LINE_1 = re.compile(r" at line 1 column")


class SourceError(ValueError):
    """The file cannot be read as text: one sentence."""


def decode_source(data: bytes, name: str) -> str:
    """The text of a file's bytes, UTF-8 with or without a BOM; SourceError (naming
    ``name`` and the line) when it is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceError(f"{name}, line {line}: not UTF-8 text") from None


def format_of(path: str | None, given: str | None, text: str | None = None) -> str:
    """The format: as given; else by the file's extension; else, for a file to read,
    by its content (a first ``{`` is JSON lines); else CSV. ValueError for a bad name."""
    if given is not None:
        if given not in FORMATS:
            raise ValueError(f"--format {given!r} is not one of {', '.join(FORMATS)}")
        return given
    if path and path != "-":
        by_extension = _EXTENSIONS.get(PurePath(path).suffix.lower())
        if by_extension:
            return by_extension
    if text is not None and text.lstrip().startswith("{"):
        return "jsonl"
    return "csv"


def parse(text: str, fmt: str) -> tuple[list[ImportRow], list[RowProblem]]:
    """The rows of a file, and the lines that are not rows at all."""
    return _parse_jsonl(text) if fmt == "jsonl" else _parse_csv(text)


def _parse_jsonl(text: str) -> tuple[list[ImportRow], list[RowProblem]]:
    rows: list[ImportRow] = []
    problems: list[RowProblem] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        size = len(line.encode("utf-8", "surrogatepass"))
        if size > MAX_ROW_BYTES:
            problems.append(RowProblem(number, f"{size} bytes (limit {MAX_ROW_BYTES})"))
            continue
        try:
            # only user_info nests, and the account model bounds its depth
            value = from_json(line)
        except ValueError as exc:
            # the parser counts in this line alone: its "line 1" would mislead
            where = _LINE_1.sub(" at column", str(exc))
            problems.append(RowProblem(number, f"not JSON ({where})"))
            continue
        if not isinstance(value, dict):
            problems.append(RowProblem(number, "not a JSON object"))
            continue
        rows.append(ImportRow(number, value, text=False))
    return rows, problems


def _parse_csv(text: str) -> tuple[list[ImportRow], list[RowProblem]]:
    rows: list[ImportRow] = []
    problems: list[RowProblem] = []
    csv.field_size_limit(MAX_ROW_BYTES)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # the reader cannot find the next row's start after this
            problems.append(RowProblem(start, f"not CSV ({exc}); the lines after it unread"))
            break
        if not cells:
            continue  # a blank line
        if header is None:
            header = [c.strip() for c in cells]
            try:
                check_columns(header)
            except InvalidAccountConfig as exc:
                # said once: every row would repeat it
                return [], [RowProblem(start, f"header: {exc}")]
            continue
        if len(cells) != len(header):
            reason = f"{len(cells)} values where the header has {len(header)} columns"
            problems.append(RowProblem(start, reason))
            continue
        rows.append(ImportRow(start, dict(zip(header, cells, strict=True)), text=True))
    return rows, problems
