"""How queuectl shows results: aligned tables for people, JSON for scripts (``--output json``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TextIO


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], out: TextIO) -> None:
    """Print ``rows`` under upper-case ``columns`` headings, like kubectl; an empty cell is ``-``."""
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    headings = [column.upper().replace("_", "-") for column in columns]
    widths = [
        max(len(text) for text in [heading, *(row[i] for row in cells)]) for i, heading in enumerate(headings)
    ]
    for line in [headings, *cells]:
        out.write("   ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip())
        out.write("\n")


def as_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2, sort_keys=True, default=str))
    out.write("\n")


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
