"""``--after CURSOR``: where the previous page of a listing ended, as one opaque word.

A cursor is base64url JSON naming the listing it came from, so a cursor from another queue or
listing is refused instead of silently starting somewhere odd.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from queue_engine.dq.admin import BuriedCursor
from queue_engine.errors import InvalidRequest


def _encode(listing: str, queue: str, position: dict[str, Any]) -> str:
    data = json.dumps({"l": listing, "q": queue, **position}, separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def _decode(cursor: str, listing: str, queue: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("l") != listing or data.get("q") != queue:
        raise InvalidRequest(
            f"--after {cursor!r} is not a cursor from a listing of {listing} on {queue}; "
            "use the value the previous page printed"
        )
    return data


def buried_cursor(cursor: BuriedCursor, queue: str) -> str:
    if cursor.node_index is not None:
        return _encode("buried", queue, {"n": cursor.node_index})
    return _encode("buried", queue, {"s": cursor.score, "i": cursor.job_id})


def parse_buried_cursor(cursor: str, queue: str) -> BuriedCursor:
    data = _decode(cursor, "buried", queue)
    try:
        if "n" in data:
            return BuriedCursor(node_index=int(data["n"]))
        return BuriedCursor(float(data["s"]), str(data["i"]))
    except (KeyError, TypeError, ValueError):
        raise InvalidRequest(
            f"--after {cursor!r}: damaged cursor; use the value the previous page printed"
        ) from None


def letters_cursor(positions: dict[int, int], queue: str) -> str:
    return _encode("dead letters", queue, {"p": {str(p): o for p, o in sorted(positions.items())}})


def parse_letters_cursor(cursor: str, queue: str) -> dict[int, int]:
    data = _decode(cursor, "dead letters", queue)
    try:
        return {int(p): int(o) for p, o in data["p"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InvalidRequest(
            f"--after {cursor!r}: damaged cursor; use the value the previous page printed"
        ) from None
