"""Idempotency-Key: a retried publish gets the first result and stores nothing twice."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from aiohttp import ClientSession
from confluent_kafka import Consumer, TopicPartition
from google.protobuf.duration_pb2 import Duration
from publish.conftest import Queues, _serve_http, make_targets

from queue_sidecar.proto import queue_pb2, queue_pb2_grpc

Http = tuple[ClientSession, Queues]
Grpc = tuple[queue_pb2_grpc.PublisherStub, Queues]


def _messages_in(bootstrap: str, topic: str) -> int:
    """Records in every partition of ``topic`` (high minus low watermark), read by a plain client."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "idempotency-tests"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        total = 0
        for number in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, number), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


async def _post(
    session: ClientSession, url: str, body: bytes, **headers: str
) -> tuple[int, dict[str, Any], str]:
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, await response.json(), response.headers.get("Idempotent-Replayed", "")


async def test_a_retried_delay_returns_the_first_job_and_stores_one(http: Http) -> None:
    session, queues = http
    key = {"Idempotency-Key": str(uuid.uuid4())}
    url = "/v1/delayqueues/reminders/jobs?delay=1m"
    first = await _post(session, url, b"call Bob", **key)
    again = await _post(session, url, b"call Bob", **key)
    assert first[:2] == again[:2]
    assert first[0] == 201 and first[2] == "" and again[2] == "true"
    assert queues.tube_counts().get("delayed") == 3  # one job (three copies), not two
    # Another key is another job.
    other = await _post(session, url, b"call Bob", **{"Idempotency-Key": str(uuid.uuid4())})
    assert other[1]["id"] != first[1]["id"]
    assert queues.tube_counts().get("delayed") == 6


async def test_a_delay_key_reused_for_another_request_is_422(http: Http) -> None:
    session, _ = http
    key = {"Idempotency-Key": "order-7-reminder"}
    status, _, _ = await _post(session, "/v1/delayqueues/reminders/jobs?delay=1m", b"call Bob", **key)
    assert status == 201
    for url, body in (
        ("/v1/delayqueues/reminders/jobs?delay=1m", b"call Alice"),  # another body
        ("/v1/delayqueues/reminders/jobs?delay=2m", b"call Bob"),  # another delay
    ):
        status, answer, _ = await _post(session, url, body, **key)
        assert status == 422, answer
        assert "order-7-reminder" in answer["error"] and "different request" in answer["error"]


async def test_the_delay_key_is_kept_in_the_queues_redis_for_every_sidecar(
    http: Http, queues: Queues
) -> None:
    session, _ = http
    key = {"Idempotency-Key": str(uuid.uuid4())}
    url = "/v1/delayqueues/reminders/jobs?delay=1m"
    status, first, _ = await _post(session, url, b"x", **key)
    assert status == 201
    # A second publish API (another pod's sidecar) over the same Redis and nodes.
    targets = make_targets(queues.cluster, queues.redis, queues.tube, queues.broker, queues.topic)
    server, base = await _serve_http(targets)
    try:
        async with ClientSession(base_url=base) as other:
            status, again, replayed = await _post(other, url, b"x", **key)
    finally:
        await server.close()
        await targets.close()
    assert (status, again, replayed) == (201, first, "true")
    assert queues.tube_counts().get("delayed") == 3


async def test_concurrent_duplicates_wait_for_the_first_and_get_its_result(http: Http) -> None:
    session, queues = http
    key = {"Idempotency-Key": str(uuid.uuid4())}
    url = "/v1/delayqueues/reminders/jobs?delay=1m"
    answers = await asyncio.gather(*(_post(session, url, b"same", **key) for _ in range(5)))
    assert {a[0] for a in answers} == {201}
    assert len({a[1]["id"] for a in answers}) == 1
    assert sorted(a[2] for a in answers) == ["", "true", "true", "true", "true"]
    assert queues.tube_counts().get("delayed") == 3


async def test_a_failed_publish_keeps_no_key_so_its_retry_publishes(own_http: Http) -> None:
    session, queues = own_http
    key = {"Idempotency-Key": str(uuid.uuid4())}
    url = "/v1/delayqueues/reminders/jobs?delay=1m"
    queues.cluster.stop()
    status, answer, _ = await _post(session, url, b"x", **key)
    assert status == 503, answer
    queues.cluster.start()
    status, answer, replayed = await _post(session, url, b"x", **key)
    assert (status, replayed) == (201, ""), answer
    assert queues.tube_counts().get("delayed") == 3


async def test_a_bad_key_is_400(http: Http) -> None:
    session, _ = http
    status, answer, _ = await _post(
        session, "/v1/delayqueues/reminders/jobs?delay=1m", b"x", **{"Idempotency-Key": "x" * 300}
    )
    assert status == 400
    assert "Idempotency-Key" in answer["error"]


async def test_a_retried_push_returns_the_first_offset_and_writes_one_message(http: Http) -> None:
    session, queues = http
    key = {"Idempotency-Key": str(uuid.uuid4()), "X-Kafka-Key": "customer-42", "X-Header-source": "checkout"}
    url = "/v1/kafkaqueues/orders/messages"
    first = await _post(session, url, b'{"order": 7}', **key)
    again = await _post(session, url, b'{"order": 7}', **key)
    assert first[0] == 201 and first[:2] == again[:2] and again[2] == "true"
    assert await asyncio.to_thread(_messages_in, queues.bootstrap, queues.topic) == 1
    # The same key with other headers is another request.
    status, answer, _ = await _post(session, url, b'{"order": 7}', **{**key, "X-Header-source": "refund"})
    assert status == 422, answer
    assert "different request" in answer["error"]
    assert await asyncio.to_thread(_messages_in, queues.bootstrap, queues.topic) == 1


async def test_grpc_publishes_with_an_idempotency_key_once(grpc_publisher: Grpc) -> None:
    publisher, queues = grpc_publisher
    key = str(uuid.uuid4())
    request = queue_pb2.DelayRequest(
        queue="reminders", body=b"x", delay=Duration(seconds=60), idempotency_key=key
    )
    first = await publisher.Delay(request)
    assert (await publisher.Delay(request)).id == first.id
    assert queues.tube_counts().get("delayed") == 3
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await publisher.Delay(
            queue_pb2.DelayRequest(
                queue="reminders", body=b"y", delay=Duration(seconds=60), idempotency_key=key
            )
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert key in (refused.value.details() or "")

    push = queue_pb2.PushRequest(queue="orders", body=b"m", key=b"k", idempotency_key=key)
    pushed = await publisher.Push(push)
    again = await publisher.Push(push)
    assert (again.partition, again.offset) == (pushed.partition, pushed.offset)
    assert await asyncio.to_thread(_messages_in, queues.bootstrap, queues.topic) == 1
