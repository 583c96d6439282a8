"""``queueoperator.v1.Publisher`` on a real port, over real beanstalkd, Redis and a Kafka broker."""

from __future__ import annotations

import re
import socket
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration  # type: ignore[import-untyped]
from google.protobuf.timestamp_pb2 import Timestamp  # type: ignore[import-untyped]
from publish.conftest import MAX_JOB_BYTES, Queues
from publish.records import read_at_async

from queue_engine.dq import HEADER_BYTES
from queue_sidecar.proto import queue_pb2, queue_pb2_grpc
from queue_sidecar.publish.grpc import start_server
from queue_sidecar.publish.targets import PublishTargets

Publisher = tuple[queue_pb2_grpc.PublisherStub, Queues]
Code = grpc.StatusCode
JOB_ID = re.compile(r"[0-9a-f]{24}")


def _seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromTimedelta(timedelta(seconds=value))
    return duration


def _timestamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


async def _fails(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call  # type: ignore[misc]
    assert failure.value.code() == code, failure.value.details()
    return failure.value.details() or ""


async def test_delay_at_and_revoke(grpc_publisher: Publisher) -> None:
    stub, queues = grpc_publisher
    reply = await stub.Delay(queue_pb2.DelayRequest(queue="reminders", body=b"in", delay=_seconds(60)))
    assert JOB_ID.fullmatch(reply.id)
    at = datetime.now(UTC) + timedelta(minutes=5)
    timed = await stub.Delay(queue_pb2.DelayRequest(queue="reminders", body=b"at", at=_timestamp(at)))
    assert JOB_ID.fullmatch(timed.id) and timed.id != reply.id
    assert queues.tube_counts().get("delayed") == 6
    await stub.Revoke(queue_pb2.RevokeRequest(queue="reminders", id=reply.id))
    assert queues.tube_counts().get("delayed") == 3


async def test_push_with_key_and_headers(grpc_publisher: Publisher) -> None:
    stub, queues = grpc_publisher
    request = queue_pb2.PushRequest(
        queue="orders",
        body=b"\x00binary\xff",
        key=b"\x01k",
        headers=[queue_pb2.Header(key="a", value=b"1"), queue_pb2.Header(key="a", value=b"2")],
    )
    reply = await stub.Push(request)
    record = await read_at_async(queues.bootstrap, queues.topic, reply.partition, reply.offset)
    assert record.value == b"\x00binary\xff"
    assert record.key == b"\x01k"
    assert record.headers == [("a", b"1"), ("a", b"2")]  # repeated keys kept, in order


async def test_push_without_key_has_no_key(grpc_publisher: Publisher) -> None:
    stub, queues = grpc_publisher
    reply = await stub.Push(queue_pb2.PushRequest(queue="orders", body=b"x"))
    record = await read_at_async(queues.bootstrap, queues.topic, reply.partition, reply.offset)
    assert record.key is None


async def test_unknown_queue_is_not_found_naming_the_queues(grpc_publisher: Publisher) -> None:
    stub, _ = grpc_publisher
    details = await _fails(
        stub.Delay(queue_pb2.DelayRequest(queue="nope", body=b"x", delay=_seconds(1))),
        Code.NOT_FOUND,
    )
    assert "reminders" in details
    details = await _fails(stub.Push(queue_pb2.PushRequest(queue="reminders", body=b"x")), Code.NOT_FOUND)
    assert "orders" in details and "is a DelayQueue" in details
    await _fails(stub.Revoke(queue_pb2.RevokeRequest(queue="nope", id="0" * 24)), Code.NOT_FOUND)


async def test_bad_requests_are_invalid_argument(grpc_publisher: Publisher) -> None:
    stub, queues = grpc_publisher
    details = await _fails(
        stub.Delay(queue_pb2.DelayRequest(queue="reminders", body=b"x")), Code.INVALID_ARGUMENT
    )
    assert "exactly one of" in details
    past = datetime.now(UTC) - timedelta(minutes=1)
    details = await _fails(
        stub.Delay(queue_pb2.DelayRequest(queue="reminders", body=b"x", at=_timestamp(past))),
        Code.INVALID_ARGUMENT,
    )
    assert "in the past" in details
    details = await _fails(
        stub.Delay(queue_pb2.DelayRequest(queue="reminders", body=b"x", delay=_seconds(-5))),
        Code.INVALID_ARGUMENT,
    )
    assert "0 or more" in details
    details = await _fails(
        stub.Revoke(queue_pb2.RevokeRequest(queue="reminders", id="bogus")), Code.INVALID_ARGUMENT
    )
    assert "hex" in details
    assert queues.tube_counts().get("delayed", 0) == 0


async def test_body_over_the_limit_is_resource_exhausted(grpc_publisher: Publisher) -> None:
    stub, _ = grpc_publisher
    body = b"x" * (MAX_JOB_BYTES - HEADER_BYTES + 1)
    details = await _fails(
        stub.Delay(queue_pb2.DelayRequest(queue="reminders", body=body, delay=_seconds(1))),
        Code.RESOURCE_EXHAUSTED,
    )
    assert str(MAX_JOB_BYTES - HEADER_BYTES) in details


async def test_broker_down_is_unavailable(own_grpc_publisher: Publisher) -> None:
    stub, queues = own_grpc_publisher
    await stub.Push(queue_pb2.PushRequest(queue="orders", body=b"first"))
    queues.broker.kill()
    details = await _fails(stub.Push(queue_pb2.PushRequest(queue="orders", body=b"x")), Code.UNAVAILABLE)
    assert queues.topic in details


async def test_no_quorum_is_unavailable(own_grpc_publisher: Publisher) -> None:
    stub, queues = own_grpc_publisher
    queues.cluster[0].kill()
    queues.cluster[2].kill()
    details = await _fails(
        stub.Delay(queue_pb2.DelayRequest(queue="reminders", body=b"x", delay=_seconds(1))),
        Code.UNAVAILABLE,
    )
    assert "2 needed" in details


async def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            await start_server(PublishTargets(), "127.0.0.1", port)
