"""Engine results as queuectl's stable JSON objects (snake_case keys, typed values).

Every byte string appears as ``<name>`` (text or base64) plus ``<name>_encoding`` (``utf-8`` or
``base64``; null when the value is absent). Table cells are made from these same objects.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from queue_engine.dq.admin import BuriedJob, JobInfo
from queue_engine.kq.dead_letter_headers import (
    LAST_ERROR,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
    REASON,
)
from queue_engine.kq.dead_letters import DeadLetter
from queue_sidecar.ctl.output import encode_bytes, timestamp


def _bytes(name: str, value: bytes | None, force_base64: bool) -> dict[str, Any]:
    text, encoding = encode_bytes(value, force_base64)
    return {name: text, f"{name}_encoding": encoding}


def job(info: JobInfo, queue: str, force_base64: bool) -> dict[str, Any]:
    return {
        "queue": queue,
        "id": info.id,
        "state": info.state,
        "due_at": timestamp(info.due_at),
        "attempts": info.attempts,
        "last_error": info.last_error or None,
        "next_attempt_at": timestamp(info.next_attempt_at),
        "buried_at": timestamp(info.buried_at),
        **_bytes("body", info.body, force_base64),
        "copies": [{"node": c.node, "job": c.job, "state": c.state, "error": c.error} for c in info.copies],
    }


def job_fields(view: dict[str, Any]) -> list[tuple[str, Any]]:
    copies = [
        f"{c['node']} job {c['job']}: {c['state'] or 'gone'}" + (f" ({c['error']})" if c["error"] else "")
        for c in view["copies"]
    ]
    return [
        ("Id", view["id"]),
        ("Queue", view["queue"]),
        ("State", view["state"]),
        ("Due at", view["due_at"]),
        ("Attempts", view["attempts"]),
        ("Last error", view["last_error"]),
        ("Next attempt at", view["next_attempt_at"]),
        ("Buried at", view["buried_at"]),
        ("Copies", "\n".join(copies) or None),
        ("Body", _body_cell(view)),
    ]


def buried(job: BuriedJob, force_base64: bool) -> dict[str, Any]:
    return {
        "id": job.id,
        "node": job.node or None,
        "attempts": job.attempts,
        "buried_at": timestamp(job.buried_at),
        "last_error": job.error or None,
        **_bytes("body", job.body, force_base64),
    }


def letter(dead: DeadLetter, force_base64: bool) -> dict[str, Any]:
    message = dead.message

    def header(name: str) -> str | None:
        value = message.header(name)
        return value.decode(errors="replace") if value is not None else None

    original_partition, original_offset = header(ORIGINAL_PARTITION), header(ORIGINAL_OFFSET)
    return {
        "partition": message.partition,
        "offset": message.offset,
        "ref": f"{message.partition}:{message.offset}",
        "state": dead.state,
        "timestamp": timestamp(_from_ms(message.timestamp_ms)),
        "original_topic": header(ORIGINAL_TOPIC),
        "original_partition": _int(original_partition),
        "original_offset": _int(original_offset),
        "attempts": dead.attempts,
        "reason": header(REASON),
        "last_error": header(LAST_ERROR) or None,
        **_bytes("key", message.key, force_base64),
        **_bytes("body", message.value, force_base64),
        "headers": [
            {"name": name, **_bytes("value", value, force_base64)} for name, value in message.headers
        ],
    }


def letter_row(view: dict[str, Any]) -> dict[str, Any]:
    """A table row: the original position in one cell, bytes marked when they are base64."""
    original = None
    if view["original_topic"] is not None:
        original = f"{view['original_topic']}/{view['original_partition']}@{view['original_offset']}"
    return {
        **view,
        "original": original,
        "key": _cell(view, "key"),
        "body": _body_cell(view),
        "headers": len(view["headers"]),
    }


def letter_fields(view: dict[str, Any]) -> list[tuple[str, Any]]:
    headers = [f"{h['name']}: {_cell(h, 'value')}" for h in view["headers"]]
    row = letter_row(view)
    return [
        ("Ref", view["ref"]),
        ("State", view["state"]),
        ("Timestamp", view["timestamp"]),
        ("Original", row["original"]),
        ("Attempts", view["attempts"]),
        ("Reason", view["reason"]),
        ("Last error", view["last_error"]),
        ("Key", row["key"]),
        ("Headers", "\n".join(headers) or None),
        ("Body", row["body"]),
    ]


def buried_row(view: dict[str, Any]) -> dict[str, Any]:
    return {**view, "body": _body_cell(view)}


def _body_cell(view: dict[str, Any]) -> str | None:
    return _cell(view, "body")


def _cell(view: dict[str, Any], name: str) -> str | None:
    value, encoding = view[name], view[f"{name}_encoding"]
    if value is None:
        return None
    return f"base64:{value}" if encoding == "base64" else str(value)


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _from_ms(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms > 0 else None
