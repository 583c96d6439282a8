"""One delivery attempt of one message, in the form both transports (HTTP, gRPC) send it."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from queue_engine.kq.dead_letters import MESSAGE_ID
from queue_engine.policy import Outcome

if TYPE_CHECKING:
    from queue_engine.dq import DelayJob
    from queue_engine.kq import KafkaMessage


class PathMisconfigured(Outcome):
    """The app answered the configured route with 404 or 405: the route is wrong, not the message.

    To the engines it is an ordinary unavailable outcome (handed back, no attempt counted); the
    delivery path reports it in /v1/status, a metric and a throttled log line instead of marking
    the app down.
    """


@dataclass(frozen=True)
class Envelope:
    kind: str  # "delay" or "kafka"
    queue: str
    id: str
    attempt: int  # 1-based
    body: bytes
    due_at: datetime | None = None  # dq only
    key: bytes | None = None  # Kafka only, from here on
    partition: int | None = None
    offset: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def due_text(self) -> str | None:
        """The due time as the app sees it (``X-Due-At``, ``dueAt``): RFC 3339, UTC, milliseconds."""
        if self.due_at is None:
            return None
        return self.due_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    @classmethod
    def from_delay_job(cls, job: DelayJob) -> Envelope:
        return cls(
            kind="delay",
            queue=job.queue,
            id=job.id,
            attempt=job.attempt,
            body=_as_bytes(job.body),
            due_at=job.due_at,
        )

    @classmethod
    def from_kafka_message(cls, message: KafkaMessage) -> Envelope:
        return cls(
            kind="kafka",
            queue=message.queue,
            id=_kafka_message_id(message),
            attempt=message.attempt,
            body=_as_bytes(message.value),
            key=message.key,
            partition=message.partition,
            offset=message.offset,
            headers=tuple(message.headers or ()),
        )


def _kafka_message_id(message: KafkaMessage) -> str:
    """``<topic>/<partition>/<offset>``; a replayed dead letter keeps the id it was first delivered with."""
    first = message.header(MESSAGE_ID)
    if first:
        return first.decode(errors="replace")
    return f"{message.topic}/{message.partition}/{message.offset}"


def _as_bytes(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else bytes(value)


def header_text(value: bytes) -> str:
    """Bytes as an HTTP header value: UTF-8 text as is, anything else as ``base64:<b64>``.

    HTTP header values cannot carry arbitrary bytes (no CR, LF or NUL; non-ASCII is not
    portable), so binary Kafka keys and header values are base64-encoded with a marker.
    """
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isascii() and text.isprintable():
        return text
    return "base64:" + base64.b64encode(value).decode("ascii")
