"""The HTTP publish API on a real port, over real beanstalkd, Redis and a Kafka broker."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import ClientSession
from prometheus_client import REGISTRY
from publish.conftest import MAX_JOB_BYTES, Queues
from publish.records import read_at_async

from queue_engine.dq import HEADER_BYTES

Http = tuple[ClientSession, Queues]
JOB_ID = re.compile(r"[0-9a-f]{24}")


def _published(kind: str, queue: str) -> float:
    labels = {"kind": kind, "queue": queue, "result": "success"}
    return REGISTRY.get_sample_value("queue_messages_published_total", labels) or 0.0


async def _json(response: Any) -> dict[str, Any]:
    assert response.content_type == "application/json", await response.text()
    data: dict[str, Any] = await response.json()
    return data


# ------------------------------------------------------------------ round trips


async def test_delay_stores_the_job_on_a_quorum_of_nodes(http: Http) -> None:
    session, queues = http
    before = _published("delay", "reminders")
    async with session.post("/v1/delayqueues/reminders/jobs?delay=30s", data=b"call Bob") as response:
        assert response.status == 201
        body = await _json(response)
    assert JOB_ID.fullmatch(body["id"])
    counts = queues.tube_counts()
    assert counts.get("delayed") == 3, counts  # one copy per node (3 nodes), none ready early
    assert counts.get("ready", 0) == 0
    assert _published("delay", "reminders") == before + 1


async def test_delay_zero_is_ready_at_once(http: Http) -> None:
    session, queues = http
    async with session.post("/v1/delayqueues/reminders/jobs?delay=0s", data=b"now") as response:
        assert response.status == 201
    # The working copy is ready now; its two standbys wait standby_delay (see docs/dq.md).
    counts = queues.tube_counts()
    assert (counts.get("ready"), counts.get("delayed")) == (1, 2), counts


async def test_at_a_future_time_is_accepted_with_an_encoded_or_a_bare_plus(http: Http) -> None:
    session, queues = http
    when = (datetime.now(UTC) + timedelta(minutes=5)).astimezone(timezone(timedelta(hours=2)))
    text = when.isoformat()
    assert "+02:00" in text
    async with session.post(f"/v1/delayqueues/reminders/jobs?at={quote(text)}", data=b"a") as response:
        assert response.status == 201, await response.text()
    # Written by hand in a URL the '+' arrives as a space; the API takes it back.
    async with session.post(f"/v1/delayqueues/reminders/jobs?at={text}", data=b"b") as response:
        assert response.status == 201, await response.text()
    z_text = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    async with session.post(f"/v1/delayqueues/reminders/jobs?at={z_text}", data=b"c") as response:
        assert response.status == 201, await response.text()
    assert queues.tube_counts().get("delayed") == 9


async def test_revoke_answers_204_and_removes_the_copies(http: Http) -> None:
    session, queues = http
    async with session.post("/v1/delayqueues/reminders/jobs?delay=1m", data=b"x") as response:
        job_id = (await _json(response))["id"]
    assert queues.tube_counts().get("delayed") == 3
    async with session.delete(f"/v1/delayqueues/reminders/jobs/{job_id}") as response:
        assert response.status == 204
        assert await response.read() == b""
    assert queues.tube_counts().get("delayed", 0) == 0
    # Revoking again is fine: the job stays revoked.
    async with session.delete(f"/v1/delayqueues/reminders/jobs/{job_id}") as response:
        assert response.status == 204


async def test_push_answers_where_the_broker_stored_it_with_key_and_headers(http: Http) -> None:
    session, queues = http
    headers = {"X-Kafka-Key": "customer-42", "X-Header-Source": "checkout", "X-Header-trace": "abc"}
    async with session.post(
        "/v1/kafkaqueues/orders/messages", data=b'{"id": 7}', headers=headers
    ) as response:
        assert response.status == 201, await response.text()
        body = await _json(response)
    assert body["topic"] == queues.topic
    record = await read_at_async(queues.bootstrap, queues.topic, body["partition"], body["offset"])
    assert record.value == b'{"id": 7}'
    assert record.key == b"customer-42"
    assert ("Source", b"checkout") in record.headers
    assert ("trace", b"abc") in record.headers


async def test_push_without_key_or_headers(http: Http) -> None:
    session, queues = http
    async with session.post("/v1/kafkaqueues/orders/messages", data=b"plain") as response:
        assert response.status == 201
        body = await _json(response)
    record = await read_at_async(queues.bootstrap, queues.topic, body["partition"], body["offset"])
    assert (record.value, record.key, record.headers) == (b"plain", None, [])


async def test_same_key_lands_on_one_partition_in_order(http: Http) -> None:
    session, _ = http
    places = []
    for i in range(5):
        async with session.post(
            "/v1/kafkaqueues/orders/messages", data=str(i).encode(), headers={"X-Kafka-Key": "k"}
        ) as response:
            body = await _json(response)
            places.append((body["partition"], body["offset"]))
    assert len({p for p, _ in places}) == 1
    offsets = [o for _, o in places]
    assert offsets == sorted(offsets) and len(set(offsets)) == 5


# ------------------------------------------------------------------ every documented 4xx


async def _error(response: Any, status: int) -> str:
    assert response.status == status, await response.text()
    body = await _json(response)
    assert set(body) == {"error"}
    message: str = body["error"]
    return message


async def test_unknown_queue_is_404_naming_the_queues(http: Http) -> None:
    session, _ = http
    async with session.post("/v1/delayqueues/remindrs/jobs?delay=1s", data=b"x") as response:
        message = await _error(response, 404)
    assert "remindrs" in message and "reminders" in message
    async with session.post("/v1/kafkaqueues/reminders/messages", data=b"x") as response:
        message = await _error(response, 404)
    assert "orders" in message and "is a DelayQueue" in message
    async with session.delete(f"/v1/delayqueues/nope/jobs/{'0' * 24}") as response:
        await _error(response, 404)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("delay=soon", "500ms, 5s"),
        ("delay=-5s", "500ms, 5s"),
        ("", "exactly one of"),
        ("delay=5s&at=2030-01-01T00:00:00Z", "exactly one of"),
        ("at=2020-01-01T00:00:00Z", "in the past"),
        ("at=2030-01-01T00:00:00", "no zone"),
        ("at=tomorrow", "RFC 3339"),
        ("dealy=5s", "unknown query parameter 'dealy'"),
    ],
)
async def test_bad_delay_or_at_is_400_saying_what_to_fix(http: Http, query: str, expected: str) -> None:
    session, queues = http
    async with session.post(f"/v1/delayqueues/reminders/jobs?{query}", data=b"x") as response:
        message = await _error(response, 400)
    assert expected in message
    assert queues.tube_counts().get("delayed", 0) == 0


async def test_body_over_the_queue_limit_is_413_naming_the_limit(http: Http) -> None:
    session, queues = http
    limit = MAX_JOB_BYTES - HEADER_BYTES
    url = "/v1/delayqueues/reminders/jobs?delay=1m"
    async with session.post(url, data=b"x" * limit) as response:
        assert response.status == 201
    async with session.post(url, data=b"x" * (limit + 1)) as response:
        message = await _error(response, 413)
    assert str(limit) in message
    assert queues.tube_counts().get("delayed") == 3  # only the first


async def test_body_over_the_api_limit_is_413(http: Http) -> None:
    session, _ = http
    data = b"x" * (16 * 1024 * 1024 + 1)
    async with session.post("/v1/kafkaqueues/orders/messages", data=data) as response:
        message = await _error(response, 413)
    assert "16777216" in message


async def test_bad_job_id_is_400(http: Http) -> None:
    session, _ = http
    async with session.delete("/v1/delayqueues/reminders/jobs/not-an-id") as response:
        message = await _error(response, 400)
    assert "24" in message


async def test_wrong_method_is_405_naming_the_allowed_ones(http: Http) -> None:
    session, _ = http
    async with session.get("/v1/delayqueues/reminders/jobs") as response:
        message = await _error(response, 405)
    assert "POST" in message
    async with session.put("/v1/kafkaqueues/orders/messages", data=b"x") as response:
        await _error(response, 405)


async def test_unknown_route_is_404_listing_the_routes(http: Http) -> None:
    session, _ = http
    async with session.post("/v1/delayqueue/reminders/jobs?delay=1s", data=b"x") as response:
        message = await _error(response, 404)
    assert "/v1/delayqueues/{name}/jobs" in message


# ------------------------------------------------------------------ servers down: 5xx with a reason


async def test_broker_down_is_503_with_the_reason_not_a_silent_drop(own_http: Http) -> None:
    session, queues = own_http
    async with session.post("/v1/kafkaqueues/orders/messages", data=b"first") as response:
        assert response.status == 201
    queues.broker.kill()
    async with session.post("/v1/kafkaqueues/orders/messages", data=b"lost?") as response:
        message = await _error(response, 503)
        assert response.headers["Retry-After"] == "1"
    assert "timed out" in message.lower() or "transport" in message.lower() or "broker" in message.lower()


async def test_no_quorum_is_503_naming_the_nodes(own_http: Http) -> None:
    session, queues = own_http
    queues.cluster[0].stop()
    queues.cluster[1].stop()
    async with session.post("/v1/delayqueues/reminders/jobs?delay=1s", data=b"x") as response:
        message = await _error(response, 503)
    assert queues.cluster[0].address in message and "2 needed" in message
    # One node down of three still has a quorum.
    queues.cluster[1].start()
    await asyncio.sleep(0)
    async with session.post("/v1/delayqueues/reminders/jobs?delay=1s", data=b"x") as response:
        assert response.status == 201, await response.text()


async def test_redis_down_on_revoke_is_503(own_http: Http) -> None:
    session, queues = own_http
    async with session.post("/v1/delayqueues/reminders/jobs?delay=1m", data=b"x") as response:
        job_id = (await _json(response))["id"]
    queues.redis.stop()
    async with session.delete(f"/v1/delayqueues/reminders/jobs/{job_id}") as response:
        message = await _error(response, 503)
    assert "redis" in message.lower()


async def test_push_over_the_broker_message_size_is_413(http: Http) -> None:
    session, _ = http
    async with session.post("/v1/kafkaqueues/orders/messages", data=b"x" * 2_000_000) as response:
        message = await _error(response, 413)
    assert "too large" in message.lower()


async def test_empty_body_is_a_valid_job_and_message(http: Http) -> None:
    session, queues = http
    async with session.post("/v1/delayqueues/reminders/jobs?delay=1m", data=b"") as response:
        assert response.status == 201
    async with session.post("/v1/kafkaqueues/orders/messages", data=b"") as response:
        assert response.status == 201
        body = await _json(response)
    record = await read_at_async(queues.bootstrap, queues.topic, body["partition"], body["offset"])
    assert record.value == b""
