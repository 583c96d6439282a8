"""The headers a dead letter carries, so that people and ``replay`` know where it came from."""

from __future__ import annotations

from dataclasses import dataclass

from queue_engine.kq.message import KafkaMessage

ORIGINAL_TOPIC = "x-original-topic"
ORIGINAL_PARTITION = "x-original-partition"
ORIGINAL_OFFSET = "x-original-offset"
ORIGINAL_TIMESTAMP = "x-original-timestamp-ms"
ATTEMPTS = "x-attempts"
LAST_ERROR = "x-last-error"
REASON = "x-dead-letter-reason"  # max_attempts | drop
# Set only on a copy that had to leave things out to fit the size limit: "body" or "body,headers,key".
DROPPED = "x-dead-letter-dropped"
ORIGINAL_VALUE_BYTES = "x-original-value-bytes"  # the dropped body's size (decimal)

DEAD_LETTER_HEADERS = (
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ORIGINAL_TIMESTAMP,
    ATTEMPTS,
    LAST_ERROR,
    REASON,
    DROPPED,
    ORIGINAL_VALUE_BYTES,
)
MAX_ERROR_BYTES = 2048  # a stack trace in a header would bloat every dead letter
SHORT_ERROR_BYTES = 200  # in the last-resort copy, which must fit librdkafka's smallest limit (1000)


def dead_letter_headers(
    message: KafkaMessage,
    reason: str,
    last_error: str | None,
    *,
    keep_own: bool = True,
    error_bytes: int = MAX_ERROR_BYTES,
) -> list[tuple[str, bytes]]:
    """The message's own headers (earlier dead-letter ones replaced) plus where and why it died."""
    kept = [(k, v) for k, v in message.headers if k not in DEAD_LETTER_HEADERS] if keep_own else []
    return [
        *kept,
        (ORIGINAL_TOPIC, message.topic.encode()),
        (ORIGINAL_PARTITION, str(message.partition).encode()),
        (ORIGINAL_OFFSET, str(message.offset).encode()),
        (ORIGINAL_TIMESTAMP, str(message.timestamp_ms).encode()),
        (ATTEMPTS, str(message.attempt).encode()),
        # A handler may answer DROP without saying why: the header is then empty, never an error.
        (LAST_ERROR, (last_error or "").encode(errors="replace")[:error_bytes]),
        (REASON, reason.encode()),
    ]


@dataclass(frozen=True)
class DeadLetterCopy:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    dropped: str  # "" for the whole message


def dead_letter_copies(message: KafkaMessage, reason: str, last_error: str | None) -> list[DeadLetterCopy]:
    """What to write, best first: each next copy is tried only if the one before was too large.

    A record near the size limit cannot carry the dead-letter headers on top: rather than
    retrying a write that can never fit, the body (and then the key, the message's own headers
    and most of the error) are left out, and headers say so. The original stays readable at
    x-original-topic/partition/offset for as long as that topic retains it.
    """
    size = [(ORIGINAL_VALUE_BYTES, str(len(message.value)).encode())]
    full = dead_letter_headers(message, reason, last_error)
    minimal = dead_letter_headers(message, reason, last_error, keep_own=False, error_bytes=SHORT_ERROR_BYTES)
    return [
        DeadLetterCopy(message.key, message.value, full, ""),
        DeadLetterCopy(message.key, b"", [*full, (DROPPED, b"body"), *size], "body"),
        DeadLetterCopy(None, b"", [*minimal, (DROPPED, b"body,headers,key"), *size], "body,headers,key"),
    ]


def original_headers(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """A dead letter's headers without the ones the dead-lettering added (for replay)."""
    return [(k, v) for k, v in headers if k not in DEAD_LETTER_HEADERS]
