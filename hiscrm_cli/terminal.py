"""Text that others wrote, made safe for the operator's terminal.

Comments, DMs, author names, account fields, worker and task errors all come from a
platform, a fan, a worker or Redis. Printed as they are, ``[/]`` crashes rich's markup
parser, ``[link=…]`` becomes a hyperlink, and escape sequences (clear screen, OSC-8
links, C1 CSI) or bidi overrides act on the terminal. Every such value goes through
:func:`safe` before it meets a rich markup string, a table cell or a timeline; ``--json``
output goes through :func:`json_text`, which keeps every value as it is.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rich.markup import escape

# bidi embeddings, overrides, isolates and marks: they reorder what follows on the line
BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# line and paragraph separators: some terminals and pagers start a new line on them
SEPARATORS = frozenset("\u2028\u2029")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


_OTHERS = "\x7f-\x9f\ud800-\udfff" + "".join(sorted(BIDI | SEPARATORS))
# C0, DEL and C1 controls (escape sequences), lone surrogates (unprintable), the above
_UNSAFE = re.compile(f"[\x00-\x1f{_OTHERS}]")
# in JSON text C0 controls are already escaped, and a raw newline is indentation
_UNSAFE_IN_JSON = re.compile(f"[{_OTHERS}]")


def clean(value: object) -> str:
    """``value`` as one line of plain text: every unsafe character replaced by its
    visible escape (``\\x1b``, ``\\n``, ``\\u202e``). Rich markup is left as it is."""
    return _UNSAFE.sub(lambda m: _visible(m.group()), str(value))


def safe(value: object) -> str:
    """``value`` ready to embed in a rich markup string or a table cell: cleaned, and
    its markup escaped so that ``[red]`` or ``[/]`` are shown as typed."""
    return escape(clean(value))


def json_text(doc: Any, indent: int | None = 2) -> str:
    """``doc`` as JSON, non-ASCII text kept readable. JSON already escapes C0
    controls; C1 controls, DEL, bidi controls, separators and lone surrogates are
    escaped too (``\\u009b``), so a terminal shows them inert and ``json.loads``
    gives back every value unchanged."""
    text = json.dumps(doc, ensure_ascii=False, indent=indent)
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
