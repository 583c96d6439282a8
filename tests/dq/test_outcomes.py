"""What the handler answers decides what happens: retry with backoff, bury, kick back."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from dq.dqkit import FAST, DqEnv, Recorder
from prometheus_client import REGISTRY

from queue_engine.dq import DelayAdmin, DelayJob, DeliveryPolicy, Outcome
from queue_engine.policy import Backoff


async def test_failure_then_success_is_retried_with_attempts_counted(dq: DqEnv) -> None:
    async def fail_first(job: DelayJob) -> Outcome:
        return Outcome.retry("not yet") if job.attempt == 1 else Outcome.success()

    def count(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"kind": "delay", "queue": dq.tube}) or 0.0

    recorder = Recorder(fail_first)
    async with dq.producer() as producer, dq.consumer(recorder):
        job_id = await producer.delay(b"x", 0)
        await recorder.wait_for(lambda: len(recorder.of(job_id)) >= 2)
        await asyncio.sleep(0.5)  # room for a wrong third delivery
    first, second = recorder.of(job_id)
    assert [first.job.attempt, second.job.attempt] == [1, 2]
    assert second.at - first.at >= 0.09  # backoff initial 0.1s, -10% jitter
    # Received counts messages, as for Kafka; the second attempt is a retry, not a new message.
    assert count("queue_messages_received_total") == 1
    assert count("queue_messages_retried_total") == 1


async def test_exceptions_and_timeouts_are_retries(dq: DqEnv) -> None:
    async def misbehave(job: DelayJob) -> Outcome:
        if job.attempt == 1:
            raise RuntimeError("boom")
        if job.attempt == 2:
            await asyncio.sleep(5)
        return Outcome.success()

    recorder = Recorder(misbehave)
    policy = DeliveryPolicy(max_attempts=5, backoff=Backoff(0.05, 0.1, 2), timeout=0.3)
    async with dq.producer() as producer, dq.consumer(recorder, policy=policy):
        job_id = await producer.delay(b"x", 0)
        await recorder.wait_for(lambda: len(recorder.of(job_id)) >= 3)
        await asyncio.sleep(0.5)
    assert [d.job.attempt for d in recorder.of(job_id)] == [1, 2, 3]


async def test_a_handler_that_never_returns_is_cut_at_its_timeout(dq: DqEnv) -> None:
    """The handler's first step runs at once, without a timer; from its first real wait on the
    timeout still cuts it (here after some synchronous work, then a wait that never ends)."""
    never = asyncio.Event()
    cut_at: list[float] = []

    async def hangs_once(job: DelayJob) -> Outcome:
        if job.attempt == 1:
            sum(range(10_000))  # synchronous work in the first step
            try:
                await never.wait()
            finally:
                cut_at.append(time.monotonic())
        return Outcome.success()

    recorder = Recorder(hangs_once)
    policy = DeliveryPolicy(max_attempts=3, backoff=Backoff(0.05, 0.1, 2), timeout=0.4)
    async with dq.producer() as producer, dq.consumer(recorder, policy=policy):
        job_id = await producer.delay(b"x", 0)
        await recorder.wait_for(lambda: len(recorder.of(job_id)) >= 2, within=10)
        await asyncio.sleep(0.3)  # room for a wrong third delivery
    first, second = recorder.of(job_id)
    assert [first.job.attempt, second.job.attempt] == [1, 2]
    assert len(cut_at) == 1  # the hung attempt was cancelled, not left waiting
    assert 0.35 <= second.at - first.at < 2.0  # cut at its 0.4 s timeout, then the 0.05 s backoff


async def test_unavailable_app_burns_no_attempts(dq: DqEnv) -> None:
    calls = 0

    async def down_then_up(job: DelayJob) -> Outcome:
        nonlocal calls
        calls += 1
        return Outcome.unavailable("connection refused", after=0.05) if calls <= 4 else Outcome.success()

    recorder = Recorder(down_then_up)
    policy = DeliveryPolicy(max_attempts=2, backoff=Backoff(0.05, 0.1, 2), timeout=5)
    async with dq.producer() as producer, dq.consumer(recorder, policy=policy):
        job_id = await producer.delay(b"x", 0)
        await recorder.wait_for(lambda: len(recorder.of(job_id)) >= 5)
    # Four hand-backs with max_attempts=2 and still delivered: none of them counted.
    assert [d.job.attempt for d in recorder.of(job_id)] == [1, 1, 1, 1, 1]


async def test_permanent_failure_is_buried_then_kick_delivers_it_again(dq: DqEnv) -> None:
    give_up = True

    async def failing(job: DelayJob) -> Outcome:
        return Outcome.retry("still broken") if give_up else Outcome.success()

    recorder = Recorder(failing)
    admin = DelayAdmin(dq.nodes, dq.tube, dq.redis.url)
    async with dq.producer() as producer, dq.consumer(recorder):
        job_id = await producer.delay(b"poison", 0)
        await recorder.wait_for(lambda: len(recorder.of(job_id)) >= FAST.max_attempts)
        await _until(lambda: _buried_count(admin), 1)
        await asyncio.sleep(0.5)
        assert len(recorder.of(job_id)) == FAST.max_attempts  # no attempt past the limit
        (buried,) = await admin.buried()
        assert (buried.id, buried.body, buried.attempts) == (job_id, b"poison", FAST.max_attempts)
        assert "still broken" in buried.error
        stats = await admin.stats()
        assert sum(s.buried for s in stats) == 1  # the other copies are gone, one is kept
        assert sum(s.ready + s.delayed + s.reserved for s in stats) == 0

        give_up = False
        assert await admin.kick() == 1
        await recorder.wait_for(lambda: len(recorder.of(job_id)) == FAST.max_attempts + 1)
        assert recorder.of(job_id)[-1].job.attempt == 1  # attempts start over
        assert await admin.buried() == []
    await admin.close()


async def test_drop_buries_at_once(dq: DqEnv) -> None:
    async def drop(job: DelayJob) -> Outcome:
        return Outcome.drop("bad payload")

    recorder = Recorder(drop)
    admin = DelayAdmin(dq.nodes, dq.tube, dq.redis.url)
    async with dq.producer() as producer, dq.consumer(recorder):
        job_id = await producer.delay(b"x", 0)
        await _until(lambda: _buried_count(admin), 1)
        await asyncio.sleep(0.3)
    assert len(recorder.of(job_id)) == 1
    (buried,) = await admin.buried()
    assert buried.id == job_id and buried.error == "bad payload"
    await admin.close()


async def test_stop_hands_back_a_job_whose_handler_outlives_the_grace(dq: DqEnv) -> None:
    release = asyncio.Event()

    async def slow(job: DelayJob) -> Outcome:
        if job.attempt == 1 and not release.is_set():
            await asyncio.sleep(30)
        return Outcome.success()

    recorder = Recorder(slow)
    async with dq.producer() as producer:
        async with dq.consumer(recorder, lease_ttl=1.0) as consumer:
            job_id = await producer.delay(b"x", 0)
            await recorder.wait_for(lambda: len(recorder.of(job_id)) == 1)
            await consumer.stop(grace=0.2)
        release.set()
        async with dq.consumer(recorder):
            await recorder.wait_for(lambda: len(recorder.of(job_id)) == 2)
    # Handed back, not failed: the second delivery is still attempt 1.
    assert [d.job.attempt for d in recorder.of(job_id)] == [1, 1]


async def _buried_count(admin: DelayAdmin) -> int:
    return sum(s.buried for s in await admin.stats())


async def _until(probe: object, expected: int, within: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (value := await probe()) != expected:  # type: ignore[operator]
        assert loop.time() < deadline, f"still {value}, expected {expected}"
        await asyncio.sleep(0.1)


async def test_an_infinite_retry_after_waits_out_the_backoff_instead_of_spinning(dq: DqEnv) -> None:
    async def infinite_first(job: DelayJob) -> Outcome:
        return Outcome.retry("come back never", after=float("inf")) if job.attempt == 1 else Outcome.success()

    recorder = Recorder(infinite_first)
    policy = DeliveryPolicy(max_attempts=3, backoff=Backoff(0.2, 0.5, 2), timeout=5)
    async with dq.producer() as producer, dq.consumer(recorder, policy=policy):
        job_id = await producer.delay(b"x", 0)
        await recorder.wait_for(lambda: len(recorder.of(job_id)) >= 2)
    first, second = recorder.of(job_id)
    assert [first.job.attempt, second.job.attempt] == [1, 2]
    assert second.at - first.at >= 0.18  # the backoff, not an immediate spin


async def test_at_beyond_what_beanstalkd_can_hold_is_a_bad_request(dq: DqEnv) -> None:
    from datetime import UTC, datetime, timedelta  # noqa: PLC0415

    from queue_engine.errors import InvalidRequest  # noqa: PLC0415

    async with dq.producer() as producer:
        with pytest.raises(InvalidRequest, match="at most 4294967295s"):
            await producer.at(b"x", datetime.now(UTC) + timedelta(days=365 * 137))


async def test_a_handler_raising_cancelled_error_itself_is_an_ordinary_retry(dq: DqEnv) -> None:
    async def cancelled_first(job: DelayJob) -> Outcome:
        if job.attempt == 1:
            raise asyncio.CancelledError  # e.g. a call of its own that was cancelled
        return Outcome.success()

    recorder = Recorder(cancelled_first)
    admin = DelayAdmin(dq.nodes, dq.tube, dq.redis.url)
    async with dq.producer() as producer, dq.consumer(recorder):
        job_id = await producer.delay(b"x", 0)
        await recorder.wait_for(lambda: len(recorder.of(job_id)) >= 2)
        first, second = recorder.of(job_id)
        # After the backoff (0.1 s), not after the 2 s lease of a worker that died with it.
        assert second.at - first.at < 1.0
        assert [first.job.attempt, second.job.attempt] == [1, 2]
        await asyncio.sleep(0.5)
        stats = await admin.stats()
    await admin.close()
    assert sum(s.ready + s.delayed + s.reserved + s.buried for s in stats) == 0  # nothing left held


async def test_while_the_app_is_unavailable_the_backoff_grows(dq: DqEnv) -> None:
    async def down(job: DelayJob) -> Outcome:
        return Outcome.unavailable("app not listening")

    recorder = Recorder(down)
    policy = DeliveryPolicy(max_attempts=3, backoff=Backoff(initial=0.1, max=10, multiplier=2), timeout=5)
    async with dq.producer() as producer, dq.consumer(recorder, policy=policy):
        job_id = await producer.delay(b"x", 0)
        await recorder.wait_for(lambda: len(recorder.of(job_id)) >= 5)
    times = [d.at for d in recorder.of(job_id)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.1, 0.2, 0.4, 0.8 s (+-10%), not `initial` every time; no attempt counted
    assert gaps[3] >= 0.7, gaps
    assert {d.job.attempt for d in recorder.of(job_id)} == {1}
