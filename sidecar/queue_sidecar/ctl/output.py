"""How queuectl shows results: tables for people (``table``, ``wide``), JSON and YAML for scripts.

JSON and YAML print the same data: snake_case keys, numbers as numbers, times as RFC 3339 UTC
strings, and every byte string (bodies, keys, header values) as text plus its encoding (see
:func:`encode_bytes`). docs/queuectl.md lists the keys per command.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import yaml

FORMATS = ("table", "wide", "json", "yaml")
BODY_ENCODINGS = ("auto", "base64")
NARROW_CELL = 60  # characters a cell shows in ``table``; ``wide`` shows all


def encode_bytes(value: bytes | None, force_base64: bool = False) -> tuple[str | None, str | None]:
    """``(text, "utf-8")`` for printable UTF-8, else ``(base64, "base64")``; ``(None, None)`` for None."""
    if value is None:
        return None, None
    if not force_base64:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and all(ch.isprintable() or ch in "\t\n\r" for ch in text):
            return text, "utf-8"
    return base64.b64encode(value).decode("ascii"), "base64"


def cell_bytes(value: bytes | None, force_base64: bool = False) -> str | None:
    """One table cell for bytes: the text, or ``base64:...`` so binary never reaches the terminal raw."""
    text, encoding = encode_bytes(value, force_base64)
    if text is None:
        return None
    return text if encoding == "utf-8" else f"base64:{text}"


def timestamp(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], out: TextIO, *, wide: bool = False
) -> None:
    """Print ``rows`` under upper-case ``columns`` headings, like kubectl; an empty cell is ``-``."""
    cells = [[_cell(row.get(column), wide) for column in columns] for row in rows]
    headings = [column.upper().replace("_", "-") for column in columns]
    widths = [
        max(len(text) for text in [heading, *(row[i] for row in cells)]) for i, heading in enumerate(headings)
    ]
    for line in [headings, *cells]:
        out.write("   ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip())
        out.write("\n")


def fields(pairs: Sequence[tuple[str, Any]], out: TextIO, *, wide: bool = False) -> None:
    """One object as ``Label:  value`` lines, like ``kubectl describe``."""
    width = max((len(label) for label, _ in pairs), default=0) + 1
    for label, value in pairs:
        text = _cell(value, wide=True)
        lines = text.splitlines() or [text]
        out.write(f"{label + ':':<{width}}  {lines[0]}".rstrip() + "\n")
        for line in lines[1:] if wide or len(lines) <= 20 else [*lines[1:20], "..."]:
            out.write(f"{'':<{width}}  {line}".rstrip() + "\n")


def as_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, sort_keys=True))
    out.write("\n")


def as_yaml(data: Any, out: TextIO) -> None:
    out.write(yaml.safe_dump(data, sort_keys=True, allow_unicode=True, default_flow_style=False))


def _cell(value: Any, wide: bool) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bytes):  # callers encode first; never let raw bytes reach a terminal
        value = cell_bytes(value)
    text = str(value)
    if not wide:
        text = " ".join(text.split())  # one line per row
        if len(text) > NARROW_CELL:
            text = text[: NARROW_CELL - 3] + "..."
    return text
