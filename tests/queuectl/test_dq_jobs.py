"""queuectl on one DelayQueue job: get by id, revoke that says what it did, buried jobs paged and
handled one by one (get, kick, delete)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from queuectl.conftest import Result, Setup

from queue_engine.dq import DelayConsumer, DelayJob, DeliveryPolicy, Outcome
from queue_engine.dq.envelope import new_job_id
from queue_engine.dq.records import JobRecords
from queue_engine.dq.redis_client import connect_redis
from queue_engine.policy import Backoff


async def run(setup: Setup, *args: str) -> Result:
    return await asyncio.to_thread(setup.run, *args)


async def publish(setup: Setup, body: str, delay: str = "0s") -> str:
    result = await run(setup, "delay", "reminders", body, "--in", delay, "-o", "json")
    assert result.code == 0, result.err
    return str(result.json()["id"])


async def get(setup: Setup, job_id: str) -> dict[str, Any]:
    result = await run(setup, "get", "reminders", job_id, "-o", "json")
    assert result.code == 0, result.err
    return dict(result.json())


async def wait_for(check: Callable[[], Any], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


@asynccontextmanager
async def consumer(setup: Setup, hold: asyncio.Event, held: asyncio.Event) -> AsyncIterator[None]:
    """``ok*`` succeeds, ``bad*`` is given up (buried), ``hold`` waits until ``hold`` is set."""

    async def handle(job: DelayJob) -> Outcome:
        if job.body.startswith(b"bad"):
            return Outcome.drop(f"no customer in {job.body.decode()}")
        if job.body == b"hold":
            held.set()
            await hold.wait()
        return Outcome.success()

    running = DelayConsumer(
        setup.cluster.addresses,
        setup.tube,
        setup.redis.url,
        handle,
        policy=DeliveryPolicy(max_attempts=1, backoff=Backoff(0.1, 0.1, 1)),
    )
    task = asyncio.create_task(running.run())
    try:
        yield
    finally:
        hold.set()
        await running.stop(grace=2)
        await task


async def test_get_reports_each_state_with_due_time_and_attempts(setup: Setup) -> None:
    later = await publish(setup, "later", "10m")
    ok, bad, held_job = [await publish(setup, body) for body in ("ok", "bad", "hold")]
    ready = await get(setup, ok)
    assert (ready["state"], ready["attempts"], ready["body"]) == ("ready", 0, "ok")
    assert (await get(setup, later))["state"] == "delayed"

    hold, held = asyncio.Event(), asyncio.Event()
    async with consumer(setup, hold, held):
        await asyncio.wait_for(held.wait(), 20)
        reserved = await get(setup, held_job)
        assert (reserved["state"], reserved["attempts"]) == ("reserved", 1)

        async def state_of(job_id: str, state: str) -> bool:
            return (await get(setup, job_id))["state"] == state

        await wait_for(lambda: state_of(ok, "done"), "ok done")
        await wait_for(lambda: state_of(bad, "buried"), "bad buried")
    buried = await get(setup, bad)
    assert (buried["attempts"], buried["last_error"]) == (1, "no customer in bad")
    assert buried["buried_at"] is not None and buried["due_at"] <= buried["buried_at"]
    assert (await get(setup, ok))["attempts"] == 1
    revoked_buried = await run(setup, "revoke", "reminders", bad)
    assert revoked_buried.code == 0 and "(it was buried)" in revoked_buried.out
    assert (await run(setup, "buried", "reminders", "-o", "json")).json()["total"] == 0

    assert (await run(setup, "revoke", "reminders", later)).code == 0
    assert (await get(setup, later))["state"] == "revoked"

    unknown = await run(setup, "get", "reminders", new_job_id(time.time() + 60))
    assert unknown.code == 1 and "no job" in unknown.err


async def test_revoke_says_what_the_job_was(setup: Setup) -> None:
    pending = await publish(setup, "later", "10m")
    revoked = await run(setup, "revoke", "reminders", pending, "-o", "json")
    assert revoked.code == 0, revoked.err
    assert revoked.json() == {
        "queue": "reminders",
        "id": pending,
        "previous_state": "delayed",
        "revoked": True,
        "tombstone": True,
    }
    again = await run(setup, "revoke", "reminders", pending)
    assert again.code == 0 and "already revoked" in again.out

    done = await publish(setup, "ok")
    async with consumer(setup, asyncio.Event(), asyncio.Event()):

        async def is_done() -> bool:
            return (await get(setup, done))["state"] == "done"

        await wait_for(is_done, "job done")
    too_late = await run(setup, "revoke", "reminders", done)
    assert too_late.code == 1 and "already ran (done)" in too_late.err

    records = JobRecords(connect_redis(setup.redis.url, 3), setup.tube)
    try:
        # A well-formed id nobody published, due soon: its record may have been lost, so a
        # tombstone is written, but the answer says there is no such job.
        unknown = new_job_id(time.time() + 60)
        result = await run(setup, "revoke", "reminders", unknown, "-o", "json")
        assert result.code == 1
        assert f"no job {unknown} on reminders (already done, revoked, or never published)" in result.err
        assert result.json()["tombstone"] is True and result.json()["revoked"] is False
        assert await records.record(unknown) == {"revoked": "1"}

        # Due long ago: any record would have expired anyway; nothing is written.
        ancient = new_job_id(time.time() - 30 * 86400)
        result = await run(setup, "revoke", "reminders", ancient)
        assert result.code == 1 and "more than 14 days ago" in result.err
        assert await records.record(ancient) == {}
    finally:
        await records.redis.aclose()


async def test_buried_jobs_page_and_are_handled_one_by_one(setup: Setup) -> None:
    ids = [await publish(setup, f"bad-{n}") for n in range(3)]
    async with consumer(setup, asyncio.Event(), asyncio.Event()):

        async def all_buried() -> bool:
            return bool((await run(setup, "buried", "reminders", "-o", "json")).json()["total"] == 3)

        await wait_for(all_buried, "3 buried jobs")

    seen: list[dict[str, Any]] = []
    after: list[str] = []
    for _ in range(3):
        page = await run(setup, "buried", "reminders", "--limit", "1", "-o", "json", *after)
        assert page.code == 0, page.err
        data = page.json()
        assert data["total"] == 3 and len(data["buried"]) == 1
        seen += data["buried"]
        after = ["--after", data["next"]] if data["next"] else []
    assert not after  # the third page was the last
    assert sorted(job["id"] for job in seen) == sorted(ids)
    assert [job["buried_at"] for job in seen] == sorted(job["buried_at"] for job in seen)
    table = await run(setup, "buried", "reminders", "--limit", "2")
    assert table.out.startswith("2 of 3 buried job(s) on reminders, oldest first")
    assert table.out.splitlines()[-1].startswith("more: add --after ")

    first, second, third = (job["id"] for job in seen)
    shown = await run(setup, "buried", "reminders", "get", first)
    assert shown.code == 0 and "State:" in shown.out and "buried" in shown.out

    kicked = await run(setup, "buried", "reminders", "kick", first, "-o", "json")
    assert kicked.code == 0, kicked.err
    assert kicked.json()["kicked"] >= 1
    after_kick = await get(setup, first)
    assert (after_kick["state"], after_kick["attempts"]) == ("ready", 0)
    not_buried = await run(setup, "buried", "reminders", "kick", first)
    assert not_buried.code == 1 and "it is ready, not buried" in not_buried.err

    deleted = await run(setup, "buried", "reminders", "delete", second, "-o", "json")
    assert deleted.code == 0, deleted.err
    assert deleted.json()["deleted"] >= 1
    gone = await get(setup, second)
    assert gone["state"] == "revoked" and all(copy["state"] is None for copy in gone["copies"])

    # dlq on a DelayQueue is the same listing; skip there is delete.
    listed = (await run(setup, "dlq", "reminders", "-o", "json")).json()
    assert [job["id"] for job in listed["buried"]] == [third] and listed["total"] == 1
    skipped = await run(setup, "dlq", "reminders", "skip", third)
    assert skipped.code == 0, skipped.err
    assert (await run(setup, "buried", "reminders", "-o", "json")).json()["total"] == 0
