"""Bulk delivery's wire format over HTTP: a JSON array of messages out, one result per message back.

Request body (``Content-Type: application/json``), one object per message in delivery order::

    [{"id": "orders/0/17", "kind": "kafka", "queue": "orders", "attempt": 1,
      "body": "text", "key": "k", "partition": 0, "offset": 17, "headers": {"h": "v"}}]

``body`` holds the message as text when it is UTF-8, else ``bodyBase64`` holds it base64-encoded
(exactly one of the two is present). ``key`` and header values follow the single-message
headers' rule (:func:`~queue_sidecar.delivery.envelope.header_text`). dq messages carry
``dueAt`` instead of the Kafka fields.

Answer: a 2xx with ``{"results": [{"id": "...", "status": "SUCCESS"|"RETRY"|"DROP",
"error": "...", "retryAfter": 1.5}]}``, or a 2xx with an empty body for "all done". A message
the results do not mention is retried; any other status code applies to every message of the
batch as it would to one message (:func:`~queue_sidecar.delivery.http.outcome_for`).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

import orjson

from queue_engine.policy import Outcome
from queue_sidecar.delivery.envelope import Envelope, header_text

__all__ = ["batch_body", "outcomes_from_results", "outcomes_from_text"]

# Outcomes are immutable: the common answers are shared, not built per message.
_SUCCESS = Outcome.success()
_UNANSWERED = Outcome.retry("the app's bulk answer has no result for this message")


def batch_body(envelopes: Sequence[Envelope]) -> bytes:
    return orjson.dumps([_message(envelope) for envelope in envelopes])


def _message(envelope: Envelope) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": envelope.id,
        "kind": envelope.kind,
        "queue": envelope.queue,
        "attempt": envelope.attempt,
    }
    try:
        item["body"] = envelope.body.decode("utf-8")
    except UnicodeDecodeError:
        item["bodyBase64"] = base64.b64encode(envelope.body).decode("ascii")
    if envelope.due_text is not None:
        item["dueAt"] = envelope.due_text
    if envelope.kind == "kafka":
        if envelope.key is not None:
            item["key"] = header_text(envelope.key)
        item["partition"] = envelope.partition
        item["offset"] = envelope.offset
        if envelope.headers:
            # Repeated Kafka header names: the last one wins, as in single delivery.
            item["headers"] = {name: header_text(value or b"") for name, value in envelope.headers}
    return item


def outcomes_from_text(envelopes: Sequence[Envelope], text: bytes) -> list[Outcome]:
    """The outcome of each message from a 2xx answer's body."""
    if not text.strip():
        return [_SUCCESS] * len(envelopes)
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _all_retry(envelopes, "the app's bulk answer is not JSON")
    results = document.get("results") if isinstance(document, dict) else None
    if not isinstance(results, list):
        return _all_retry(envelopes, 'the app\'s bulk answer has no "results" list')
    answers = [
        (
            str(result.get("id") or ""),
            str(result.get("status", "")),
            str(result.get("error") or ""),
            _seconds(result.get("retryAfter")),
        )
        for result in results
        if isinstance(result, dict)
    ]
    return outcomes_from_results(envelopes, answers)


def outcomes_from_results(
    envelopes: Sequence[Envelope], answers: Sequence[tuple[str, str, str, float | None]]
) -> list[Outcome]:
    """Match the app's ``(id, status, error, retry_after)`` answers to the batch's messages.

    By id; an answer without an id answers the message at its position. A message without an
    answer, or with an unknown status, is retried: the app has not said it is done.
    """
    by_id: dict[str, Outcome] = {}
    by_position: dict[int, Outcome] = {}
    for position, (message_id, status, error, retry_after) in enumerate(answers):
        outcome = _SUCCESS if status == "SUCCESS" else _outcome(status, error, retry_after)
        if message_id:
            by_id[message_id] = outcome
        else:
            by_position[position] = outcome
    return [
        by_id.get(envelope.id) or by_position.get(position) or _UNANSWERED
        for position, envelope in enumerate(envelopes)
    ]


def _outcome(status: str, error: str, retry_after: float | None) -> Outcome:
    status = status.upper()
    if status == "SUCCESS":
        return _SUCCESS
    if status == "DROP":
        return Outcome.drop(error or "app answered DROP")
    if status == "RETRY":
        return Outcome.retry(error or "app answered RETRY", retry_after)
    return Outcome.retry(f"the app answered status {status!r}; expected SUCCESS, RETRY or DROP")


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return max(0.0, float(value))


def _all_retry(envelopes: Sequence[Envelope], error: str) -> list[Outcome]:
    return [Outcome.retry(error) for _ in envelopes]
