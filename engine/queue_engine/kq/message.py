"""What the pusher returns and what the consumer hands to a handler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


class Delivered(NamedTuple):
    """Where the broker stored a pushed message (after acks=all).

    A named tuple, not a dataclass: one is made per acknowledged push, and a tuple is built in
    a fraction of a frozen dataclass's time.
    """

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class KafkaMessage:
    """One Kafka record as a handler sees it; ``attempt`` is 1 on first delivery."""

    queue: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int
    attempt: int = 1

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or None."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None


def message_id(message: KafkaMessage) -> str:
    """``topic/partition/offset``: how logs name a message (the ``X-Message-Id`` header's form)."""
    return f"{message.topic}/{message.partition}/{message.offset}"


def from_record(record: Any, queue: str, topic: str | None = None, attempt: int = 1) -> KafkaMessage:
    """Build from a confluent-kafka ``Message`` (one without an error); ``topic``, when the
    caller knows it (a consumer reads one topic), saves asking the record."""
    raw = record.headers()
    # Most records have no headers: skip the comprehension (it costs a frame in 3.11).
    headers = [] if not raw else [(k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in raw]
    # A frozen dataclass sets each field through object.__setattr__; handing it a whole
    # __dict__ at once builds the same object at a fraction of the cost (this runs once per
    # consumed record).
    message = _new(KafkaMessage)
    _set(
        message,
        "__dict__",
        {
            "queue": queue,
            "topic": topic or record.topic(),
            "partition": record.partition(),
            "offset": record.offset(),
            "key": record.key(),
            "value": record.value() or b"",
            "headers": headers,
            "timestamp_ms": record.timestamp()[1],
            "attempt": attempt,
        },
    )
    return message


_new = object.__new__
_set = object.__setattr__
