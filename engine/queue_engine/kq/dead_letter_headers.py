"""The headers a dead letter carries, so that people and ``replay`` know where it came from."""

from __future__ import annotations

from queue_engine.kq.message import KafkaMessage

ORIGINAL_TOPIC = "x-original-topic"
ORIGINAL_PARTITION = "x-original-partition"
ORIGINAL_OFFSET = "x-original-offset"
ORIGINAL_TIMESTAMP = "x-original-timestamp-ms"
ATTEMPTS = "x-attempts"
LAST_ERROR = "x-last-error"
REASON = "x-dead-letter-reason"  # max_attempts | drop

DEAD_LETTER_HEADERS = (
    ORIGINAL_TOPIC,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ORIGINAL_TIMESTAMP,
    ATTEMPTS,
    LAST_ERROR,
    REASON,
)
MAX_ERROR_BYTES = 2048  # a stack trace in a header would bloat every dead letter


def dead_letter_headers(
    message: KafkaMessage, reason: str, last_error: str | None
) -> list[tuple[str, bytes]]:
    """The message's own headers (earlier dead-letter ones replaced) plus where and why it died."""
    kept = [(k, v) for k, v in message.headers if k not in DEAD_LETTER_HEADERS]
    return [
        *kept,
        (ORIGINAL_TOPIC, message.topic.encode()),
        (ORIGINAL_PARTITION, str(message.partition).encode()),
        (ORIGINAL_OFFSET, str(message.offset).encode()),
        (ORIGINAL_TIMESTAMP, str(message.timestamp_ms).encode()),
        (ATTEMPTS, str(message.attempt).encode()),
        # A handler may answer DROP without saying why: the header is then empty, never an error.
        (LAST_ERROR, (last_error or "").encode(errors="replace")[:MAX_ERROR_BYTES]),
        (REASON, reason.encode()),
    ]


def original_headers(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """A dead letter's headers without the ones the dead-lettering added (for replay)."""
    return [(k, v) for k, v in headers if k not in DEAD_LETTER_HEADERS]
