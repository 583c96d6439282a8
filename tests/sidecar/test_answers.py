"""The app's answers as the sidecar reads them (SPEC section 4's table), without a network."""

from __future__ import annotations

import email.utils
import time

import grpc
import pytest

from queue_engine.policy import Verdict
from queue_sidecar.delivery.envelope import Envelope, header_text
from queue_sidecar.delivery.grpc import outcome_for_ack, outcome_for_error
from queue_sidecar.delivery.http import headers_for, outcome_for, parse_retry_after
from queue_sidecar.proto import queue_pb2


@pytest.mark.parametrize(
    ("status", "body", "verdict"),
    [
        (200, b"", Verdict.SUCCESS),
        (204, b"", Verdict.SUCCESS),
        (200, b'{"status": "RETRY"}', Verdict.RETRY),
        (200, b'{"status": "DROP", "error": "x"}', Verdict.DROP),
        (202, b'{"status": "SUCCESS"}', Verdict.SUCCESS),
        (200, b'{"other": 1}', Verdict.SUCCESS),
        (200, b"not json {", Verdict.SUCCESS),
        (408, b"", Verdict.RETRY),
        (429, b"", Verdict.RETRY),
        (500, b"", Verdict.RETRY),
        (503, b"", Verdict.RETRY),
        (400, b"", Verdict.DROP),
        (404, b"", Verdict.DROP),
        (422, b"", Verdict.DROP),
        (500, b'{"status": "SUCCESS"}', Verdict.RETRY),  # only a 2xx body may override
        (302, b"", Verdict.RETRY),
    ],
)
def test_http_answer_table(status: int, body: bytes, verdict: Verdict) -> None:
    outcome = outcome_for(status, {}, body)
    assert outcome.verdict is verdict
    assert outcome.attempted


def test_error_text_keeps_the_start_of_the_body() -> None:
    outcome = outcome_for(400, {}, b"order 17 unknown" + b"x" * 1000)
    assert outcome.error.startswith("HTTP 400: order 17 unknown") and len(outcome.error) < 300
    assert outcome_for(200, {}, b'{"status": "DROP", "error": "not mine"}').error == "not mine"


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    assert outcome_for(503, {"Retry-After": "7"}, b"").retry_after == 7.0
    assert outcome_for(200, {"Retry-After": "2"}, b'{"status": "RETRY"}').retry_after == 2.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    after = parse_retry_after(later)
    assert after is not None and 25 < after <= 30
    assert parse_retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert outcome_for(500, {}, b"").retry_after is None


def test_grpc_acks_and_errors() -> None:
    assert outcome_for_ack(queue_pb2.Ack(status=queue_pb2.Ack.SUCCESS)).verdict is Verdict.SUCCESS
    drop = outcome_for_ack(queue_pb2.Ack(status=queue_pb2.Ack.DROP, error="bad"))
    assert (drop.verdict, drop.error) == (Verdict.DROP, "bad")
    retry = queue_pb2.Ack(status=queue_pb2.Ack.RETRY)
    retry.retry_after.FromMilliseconds(1500)
    assert outcome_for_ack(retry).retry_after == 1.5
    assert outcome_for_ack(queue_pb2.Ack(status=queue_pb2.Ack.RETRY)).retry_after is None
    down = outcome_for_error(grpc.StatusCode.UNAVAILABLE, "connect failed", 5)
    assert down.verdict is Verdict.RETRY and not down.attempted
    late = outcome_for_error(grpc.StatusCode.DEADLINE_EXCEEDED, "", 5)
    assert late.attempted and "5s" in late.error
    assert outcome_for_error(grpc.StatusCode.INTERNAL, "boom", 5).verdict is Verdict.RETRY


def test_binary_kafka_bytes_become_base64_header_values() -> None:
    assert header_text(b"cust-7") == "cust-7"
    assert header_text(b"\x00\xff") == "base64:AP8="
    assert header_text("café".encode()) == "base64:Y2Fmw6k="
    assert header_text(b"a\r\nb") == "base64:YQ0KYg=="


def test_kafka_headers_become_x_header_and_bad_names_are_left_out() -> None:
    envelope = Envelope(
        kind="kafka",
        queue="orders",
        id="orders/0/5",
        attempt=2,
        body=b"{}",
        key=None,
        partition=0,
        offset=5,
        headers=(("trace-id", b"t1"), ("bad name", b"x"), ("bin", b"\x01")),
    )
    headers = headers_for(envelope)
    assert headers["X-Header-trace-id"] == "t1" and headers["X-Header-bin"] == "base64:AQ=="
    assert not any(" " in name for name in headers)
    assert "X-Kafka-Key" not in headers and headers["X-Attempt"] == "2"
