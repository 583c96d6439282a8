"""Delivery over HTTP: ``POST http://<app><path>`` with the message as the body (SPEC section 4)."""

from __future__ import annotations

import email.utils
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC

from queue_engine.policy import Outcome
from queue_sidecar.delivery.batch_format import batch_body, outcomes_from_text
from queue_sidecar.delivery.envelope import Envelope, PathMisconfigured, header_text
from queue_sidecar.delivery.http_client import Answer, AppUnreachable, ExchangeFailed, KeepAliveClient

# While the app is down, a refused message comes back after this long (no attempt counted).
UNAVAILABLE_RETRY_AFTER = 1.0
# A 404/405 from the configured path: the sidecar is misconfigured, not the message bad. Held
# messages come back after this long, without an attempt counted.
MISROUTED_RETRY_AFTER = 5.0
_MISROUTED_STATUSES = {404, 405}
_RETRY_STATUSES = {408, 429}
# RFC 9110 token characters: a Kafka header name outside them cannot be an HTTP header name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
log = logging.getLogger(__name__)
_ERROR_SNIPPET = 200


class HttpTransport:
    """Keep-alive connections to the app, shared by every queue (see :mod:`.http_client`)."""

    def __init__(self, host: str, port: int, path: str, max_connections: int) -> None:
        self.url = f"http://{host}:{port}{path}"
        self._max_connections = max_connections  # the caller's cap keeps the pool within it
        self._client = KeepAliveClient(host, port)
        # The request line and the headers every request carries, encoded once.
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: queue-sidecar\r\n"
        ).encode()
        # Per queue: the head plus the headers every message of the queue carries alike.
        self._fixed: dict[tuple[str, str], bytes] = {}

    async def send(self, envelope: Envelope, attempt_timeout: float) -> Outcome:
        request = self._message_request(envelope)
        try:
            answer = await self._client.post(request, attempt_timeout)
        except AppUnreachable as exc:
            return self._unreachable(exc)
        except TimeoutError:
            return Outcome.retry(f"app did not answer within {attempt_timeout:g}s")
        except ExchangeFailed as exc:
            return self._broken(exc)
        if answer.status in _MISROUTED_STATUSES:
            return self._misrouted(answer.status)
        return outcome_for(answer.status, _retry_after(answer), answer.body)

    async def send_batch(self, envelopes: Sequence[Envelope], attempt_timeout: float) -> list[Outcome]:
        """One POST of a JSON array (see :mod:`~queue_sidecar.delivery.batch_format`)."""
        first = envelopes[0]
        headers = {
            "Content-Type": "application/json",
            "X-Queue-Kind": first.kind,
            "X-Queue-Name": first.queue,
            "X-Batch-Size": str(len(envelopes)),
        }
        request = self._request(headers, batch_body(envelopes))
        try:
            answer = await self._client.post(request, attempt_timeout)
        except AppUnreachable as exc:
            return [self._unreachable(exc)] * len(envelopes)
        except TimeoutError:
            return [Outcome.retry(f"app did not answer within {attempt_timeout:g}s")] * len(envelopes)
        except ExchangeFailed as exc:
            return [self._broken(exc)] * len(envelopes)
        if 200 <= answer.status < 300:
            return outcomes_from_text(envelopes, answer.body)
        if answer.status in _MISROUTED_STATUSES:
            return [self._misrouted(answer.status)] * len(envelopes)
        return [outcome_for(answer.status, _retry_after(answer), answer.body)] * len(envelopes)

    def _message_request(self, envelope: Envelope) -> bytes:
        """The request for one message: what :func:`headers_for` gives, written straight to bytes.

        Kafka headers (rare) take the general path, where a repeated name keeps its last value.
        """
        if envelope.headers:
            return self._request(headers_for(envelope), envelope.body)
        fixed = self._fixed.get((envelope.kind, envelope.queue))
        if fixed is None:
            lines = "".join(
                f"{name}: {value}\r\n"
                for name, value in (
                    ("Content-Type", "application/octet-stream"),
                    ("X-Queue-Kind", envelope.kind),
                    ("X-Queue-Name", envelope.queue),
                )
            )
            fixed = self._fixed[envelope.kind, envelope.queue] = self._head + lines.encode()
        body = envelope.body
        if envelope.kind == "kafka":
            key = "" if envelope.key is None else f"X-Kafka-Key: {header_text(envelope.key)}\r\n"
            varying = (
                f"X-Message-Id: {_one_line(envelope.id)}\r\nX-Attempt: {envelope.attempt}\r\n{key}"
                f"X-Kafka-Partition: {envelope.partition}\r\nX-Kafka-Offset: {envelope.offset}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
        else:
            due = envelope.due_text
            varying = (
                f"X-Message-Id: {_one_line(envelope.id)}\r\nX-Attempt: {envelope.attempt}\r\n"
                + ("" if due is None else f"X-Due-At: {due}\r\n")
                + f"Content-Length: {len(body)}\r\n\r\n"
            )
        return b"".join((fixed, varying.encode(), body))

    def _request(self, headers: Mapping[str, str], body: bytes) -> bytes:
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        return b"".join((self._head, lines.encode(), b"Content-Length: %d\r\n\r\n" % len(body), body))

    def _misrouted(self, status: int) -> Outcome:
        return PathMisconfigured.unavailable(
            f"the app answered HTTP {status} to POST {self.url}: is app.path "
            "(annotation queue-operator.dev/app-path) right? Messages are held meanwhile",
            MISROUTED_RETRY_AFTER,
        )

    def _unreachable(self, exc: AppUnreachable) -> Outcome:
        # Nothing listening (app starting, restarting or crashed): it never saw the message.
        return Outcome.unavailable(f"app not reachable at {self.url}: {exc}", UNAVAILABLE_RETRY_AFTER)

    def _broken(self, exc: ExchangeFailed) -> Outcome:
        # The app took the request but the exchange broke (it crashed mid-request, ...).
        return Outcome.retry(f"delivery to {self.url} failed: {exc}")

    async def close(self) -> None:
        await self._client.close()


_NO_HEADERS: Mapping[str, str] = {}


def _retry_after(answer: Answer) -> Mapping[str, str]:
    return _NO_HEADERS if answer.retry_after is None else {"Retry-After": answer.retry_after}


def headers_for(envelope: Envelope) -> dict[str, str]:
    headers = {
        "Content-Type": "application/octet-stream",
        "X-Queue-Kind": envelope.kind,
        "X-Queue-Name": envelope.queue,
        "X-Message-Id": _one_line(envelope.id),
        "X-Attempt": str(envelope.attempt),
    }
    if envelope.due_text is not None:
        headers["X-Due-At"] = envelope.due_text
    if envelope.kind == "kafka":
        if envelope.key is not None:
            headers["X-Kafka-Key"] = header_text(envelope.key)
        headers["X-Kafka-Partition"] = str(envelope.partition)
        headers["X-Kafka-Offset"] = str(envelope.offset)
        for name, value in envelope.headers:
            if not _TOKEN.fullmatch(name):
                log.warning(
                    "Kafka header left out: its name is not a valid HTTP header name",
                    extra={"queue": envelope.queue, "message_id": envelope.id, "header": name[:100]},
                )
                continue
            # Repeated Kafka header names: the last one wins (HTTP would merge them with commas).
            headers[f"X-Header-{name}"] = header_text(value or b"")
    return headers


def outcome_for(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    """The answer table: 2xx done (a JSON status may override), 408/429/5xx retry, other 4xx drop.

    404 and 405 never get here: :meth:`HttpTransport.send` holds those messages (see
    :class:`PathMisconfigured`).
    """
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if 200 <= status < 300:
        return _override(body, retry_after) or Outcome.success()
    reason = f"HTTP {status}" + (f": {_snippet(body)}" if body else "")
    if status in _RETRY_STATUSES or status >= 500:
        return Outcome.retry(reason, retry_after)
    if 400 <= status < 500:
        return Outcome.drop(reason)
    # 1xx/3xx are not answers a handler should give; retrying keeps the message safe.
    return Outcome.retry(reason, retry_after)


def _override(body: bytes, retry_after: float | None) -> Outcome | None:
    text = body.strip()
    if not text.startswith(b"{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        return None
    status, error = data["status"].upper(), str(data.get("error") or "")
    if status == "RETRY":
        return Outcome.retry(error or "app answered RETRY", retry_after)
    if status == "DROP":
        return Outcome.drop(error or "app answered DROP")
    return Outcome.success() if status == "SUCCESS" else None


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _snippet(body: bytes) -> str:
    return body[:_ERROR_SNIPPET].decode("utf-8", "replace").strip()


def _one_line(value: str) -> str:
    """A header value cannot hold a line break (it would end the header, or inject one)."""
    if "\r" in value or "\n" in value:
        return value.replace("\r", " ").replace("\n", " ")
    return value
