"""GET /v1/delayqueues/{name}/jobs/{id}: a job's state, due time and attempts, before any delivery.

The states a consumer brings about (in flight, done, buried) are in tests/sidecar/test_job_state.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from aiohttp import ClientSession
from publish.conftest import Queues

from queue_sidecar.proto import queue_pb2, queue_pb2_grpc

Http = tuple[ClientSession, Queues]
Grpc = tuple[queue_pb2_grpc.PublisherStub, Queues]


async def _get(session: ClientSession, queue: str, job_id: str) -> tuple[int, dict[str, Any]]:
    async with session.get(f"/v1/delayqueues/{queue}/jobs/{job_id}") as response:
        return response.status, await response.json()


async def test_a_job_is_delayed_until_due_with_its_exact_due_time(http: Http) -> None:
    session, _ = http
    due = (datetime.now(UTC) + timedelta(minutes=5)).replace(microsecond=250_000)
    async with session.post(
        f"/v1/delayqueues/reminders/jobs?at={quote(due.isoformat())}", data=b"x"
    ) as response:
        job_id = (await response.json())["id"]
    status, job = await _get(session, "reminders", job_id)
    assert status == 200, job
    assert job == {
        "id": job_id,
        "queue": "reminders",
        "state": "delayed",
        "due_at": due.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "attempts": 0,
    }


async def test_a_job_due_now_is_ready_and_a_revoked_one_says_so(http: Http) -> None:
    session, _ = http
    async with session.post("/v1/delayqueues/reminders/jobs?delay=0s", data=b"now") as response:
        ready_id = (await response.json())["id"]
    assert (await _get(session, "reminders", ready_id))[1]["state"] == "ready"
    async with session.delete(f"/v1/delayqueues/reminders/jobs/{ready_id}") as response:
        assert response.status == 204
    status, job = await _get(session, "reminders", ready_id)
    assert (status, job["state"]) == (200, "revoked")


async def test_an_unknown_job_is_404_and_a_malformed_id_400(http: Http) -> None:
    session, _ = http
    status, answer = await _get(session, "reminders", "0" * 24)
    assert status == 404
    assert "no job " + "0" * 24 in answer["error"]
    status, answer = await _get(session, "reminders", "nope")
    assert status == 400
    assert "24 lowercase hex digits" in answer["error"]
    status, answer = await _get(session, "remindrs", "0" * 24)
    assert status == 404
    assert "no DelayQueue named 'remindrs'" in answer["error"]


async def test_grpc_get_job_answers_the_same(grpc_publisher: Grpc) -> None:
    publisher, _ = grpc_publisher
    due = (datetime.now(UTC) + timedelta(minutes=5)).replace(microsecond=250_000)
    request = queue_pb2.DelayRequest(queue="reminders", body=b"x")
    request.at.FromDatetime(due)
    job_id = (await publisher.Delay(request)).id
    job = await publisher.GetJob(queue_pb2.GetJobRequest(queue="reminders", id=job_id))
    assert (job.id, job.queue, job.state, job.attempts) == (job_id, "reminders", "delayed", 0)
    assert job.due_at.ToDatetime(tzinfo=UTC) == due
    assert not job.HasField("next_attempt_at")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await publisher.GetJob(queue_pb2.GetJobRequest(queue="reminders", id="0" * 24))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no job " + "0" * 24 in (unknown.value.details() or "")
