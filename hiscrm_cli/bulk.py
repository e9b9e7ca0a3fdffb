"""The files of ``hiscrm account import`` / ``export``: reading one from a path or
standard input, and writing an export. The format itself (CSV with a header, or JSON
lines, parsed into rows) is the library's: :mod:`hiscrm_bus.bulk`, which the web
console's import uses too.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from hiscrm_bus.accounts import AccountConfig, encode_value, export_row, exported_fields
from hiscrm_bus.bulk import FORMATS, SourceError, decode_source, format_of, parse

from .terminal import clean, json_text

__all__ = ["FORMATS", "SourceError", "export", "format_of", "parse", "read_source", "write"]


def read_source(path: str) -> str:
    """The text of ``path`` (``-``: standard input), UTF-8 with or without a BOM."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    return decode_source(data, path)


def export(
    configs: Sequence[AccountConfig], fmt: str, path: str | None, *, with_secrets: bool
) -> None:
    """Write ``configs`` to ``path`` (created private: user_info and the proxy are
    personal), or to standard output for None or ``-``. OSError when it cannot."""
    if path not in (None, "-"):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8", newline="") as stream:
            write(configs, fmt, stream, with_secrets=with_secrets)
        return
    try:
        write(configs, fmt, sys.stdout, with_secrets=with_secrets)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader stopped early (| head): no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def write(
    configs: Sequence[AccountConfig], fmt: str, stream: IO[str], *, with_secrets: bool
) -> None:
    """Write ``configs`` in the import format. On a terminal, CSV cells are shown
    with their control characters escaped (JSON lines escape them anyway)."""
    if fmt == "jsonl":
        for config in configs:
            stream.write(json_text(export_row(config, with_secrets=with_secrets), None) + "\n")
        return
    on_terminal = stream.isatty()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(exported_fields(with_secrets=with_secrets))
    for config in configs:
        row = export_row(config, with_secrets=with_secrets).values()
        cells = [_cell(value) for value in row]
        writer.writerow([clean(c) for c in cells] if on_terminal else cells)


def _cell(value: Any) -> str:
    encoded = encode_value(value)
    return "" if encoded is None else encoded
