"""Copies claimed ahead of a free handler slot: their attempts are given back unless they start.

While handler slots turn over, a consumer claims due copies before a slot is free (so a slot
that frees starts a claimed job at once). A claimed copy that gets no slot in time gives its
attempt and lease back (and the copy to its node); a clean stop gives back the attempts of
claimed copies not started.
(That a crash counts attempts only for the jobs whose handlers ran, not for copies claimed
ahead behind them, is ``test_crash.py::test_a_crash_counts_attempts_only_for_the_jobs_whose_handler_ran``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from dq.dqkit import DqEnv, Recorder
from redis.asyncio import Redis

from queue_engine.dq import DelayJob, Outcome, delivery
from queue_engine.dq.records import JobRecords
from queue_engine.dq.redis_client import connect_redis


async def _attempts(records: JobRecords, job_ids: list[str]) -> list[int]:
    return [int((await records.record(j)).get("attempts", "0")) for j in job_ids]


async def _one_handler_hangs(dq: DqEnv, jobs: int) -> tuple[list[str], Recorder, asyncio.Event]:
    release = asyncio.Event()

    async def first_hangs(job: DelayJob) -> Outcome:
        if len(recorder.deliveries) == 1 and not release.is_set():
            await asyncio.sleep(30)
        return Outcome.success()

    recorder = Recorder(first_hangs)
    async with dq.producer() as producer:
        job_ids = [await producer.delay(f"job {n}".encode(), 0) for n in range(jobs)]
    return job_ids, recorder, release


@pytest.fixture
async def redis(dq: DqEnv) -> AsyncIterator[Redis]:
    client = connect_redis(dq.redis.url, 2.0)
    yield client
    await client.aclose()


@pytest.fixture
def records(redis: Redis, dq: DqEnv) -> JobRecords:
    return JobRecords(redis, dq.tube)


async def test_copies_claimed_ahead_of_a_busy_slot_give_their_attempts_back(
    dq: DqEnv, redis: Redis, records: JobRecords
) -> None:
    job_ids, recorder, release = await _one_handler_hangs(dq, 5)
    async with dq.consumer(recorder, concurrency=1) as consumer:
        await recorder.wait_for(lambda: len(recorder.deliveries) == 1)
        await asyncio.sleep(delivery.AHEAD_LAPSE + 0.8)
        running = recorder.deliveries[0].job.id
        waiting = [j for j in job_ids if j != running]
        assert await _attempts(records, waiting) == [0] * 4
        assert [await redis.exists(f"dq:{dq.tube}:lease:{j}") for j in waiting] == [0] * 4
        release.set()
        await consumer.stop(grace=2)


async def test_a_clean_stop_gives_back_the_attempts_of_copies_claimed_ahead(
    dq: DqEnv, records: JobRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrency 1 and a handler that outlives the grace: the copies claimed while waiting
    for the slot, and the one cut at stop, all come again as attempt 1."""
    monkeypatch.setattr(delivery, "AHEAD_LAPSE", 30.0)  # they wait for the slot until stop
    job_ids, recorder, _ = await _one_handler_hangs(dq, 5)
    async with dq.consumer(recorder, concurrency=1) as consumer:
        await recorder.wait_for(lambda: len(recorder.deliveries) == 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while await _attempts(records, job_ids) != [1] * 5:  # the running one and 4 ahead
            assert loop.time() < deadline, "the waiting copies were never claimed ahead"
            await asyncio.sleep(0.05)
        await consumer.stop(grace=0.2)
    assert await _attempts(records, job_ids) == [0] * 5
    async with dq.consumer(recorder):
        await recorder.wait_for(lambda: set(job_ids) <= set(recorder.ids()))
    assert [recorder.of(j)[-1].job.attempt for j in job_ids] == [1] * 5
