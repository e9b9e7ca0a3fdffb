"""Bounds on what hiscrm decodes: any stored or received value may be hostile.

Sizes are checked before parsing and JSON nesting during it, so a value nested
10,000 levels deep or megabytes long is refused with a sentence, never a
RecursionError or a process that runs out of memory. Also the JSON codec and clock
of stored values (``loads`` / ``dumps`` / ``utcnow``), so that reading and writing an
account hash needs neither the message models nor their import time.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Final

from pydantic_core import from_json

# nesting of any JSON value we keep (user_info, an item's extra fields)
MAX_JSON_DEPTH: Final = 32
# one account hash field as stored (user_info is the only large one)
MAX_FIELD_BYTES: Final = 64 * 1024
# one message on a channel or stream (a QR code PNG is the largest, ~2 MB in base64)
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
# a reason or error text carried in a message or a record
MAX_REASON_CHARS: Final = 2000
# versions come from Redis' 64-bit HINCRBY; anything larger is not a real version
MAX_VERSION: Final = 2**63 - 1


class TooLarge(ValueError):
    """A value over one of the bounds above."""


def clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, marked when cut."""
    if len(text) <= limit:
        return text
    marker = f"… ({len(text)} chars)"
    return text[: max(limit - len(marker), 0)] + marker


def depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a JSON-like value, counted without recursion; stops counting
    past ``limit`` (returns ``limit + 1``)."""
    if not isinstance(value, dict | list | tuple):
        return 0
    top = value.values() if isinstance(value, dict) else value
    if not any(isinstance(c, dict | list | tuple) for c in top):
        return 1  # the common case (a flat profile, {}): no walk
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            return limit + 1
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> Any:
    """``value`` itself, or TooLarge when it nests deeper than ``limit``."""
    if depth(value, limit) > limit:
        raise TooLarge(f"nested deeper than {limit} levels")
    return value


def loads(raw: str | bytes, *, max_bytes: int = MAX_FIELD_BYTES) -> Any:
    """Parse JSON within the size and depth bounds; ValueError (TooLarge for a bound)
    with a short reason otherwise. Never RecursionError."""
    # a str of n characters is at most 4n bytes: a short one needs no encoding to tell
    if not (isinstance(raw, str) and len(raw) * 4 <= max_bytes):
        size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
        if size > max_bytes:
            raise TooLarge(f"{size} bytes (limit {max_bytes})")
    try:
        value = from_json(raw)
    except ValueError as exc:
        if "recursion limit" in str(exc):
            raise TooLarge(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
        raise ValueError(f"not JSON ({exc})") from None
    return check_depth(value)


def dumps(value: Any) -> str:
    """Compact JSON used for hash fields and stream fields."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def utcnow() -> datetime:
    return datetime.now(UTC)
