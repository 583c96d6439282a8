"""Durations as people write them in YAML, annotations and query strings: ``250ms``, ``5s``, ``1m30s``."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | float | int | timedelta) -> float:
    """Return seconds for ``value``; a bare number means seconds.

    Raises ``ValueError`` naming the accepted forms, so callers can pass the message on to the user.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip())
    else:
        raise ValueError(f"duration {value!r}: expected a number of seconds or text like 500ms, 5s, 1m30s")
    if seconds < 0:
        raise ValueError(f"duration {value!r} is negative; use 0 or more")
    return seconds


def _parse_text(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"duration {text!r}: expected text like 500ms, 5s, 1m30s, 2h (units ms, s, m, h, d)")
    return total


def format_duration(seconds: float) -> str:
    """Inverse of :func:`parse_duration` for messages: ``1.5`` -> ``1.5s``."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp; a time without a zone is refused rather than guessed."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"time {text!r}: expected RFC 3339, e.g. 2026-01-02T15:04:05Z") from exc
    if when.tzinfo is None:
        raise ValueError(f"time {text!r} has no zone: add Z or an offset like +02:00")
    return when
