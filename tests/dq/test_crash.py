"""A consumer process killed mid-handler: the job is delivered again, by the next consumer."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
import textwrap

from dq.dqkit import FAST, DqEnv, Recorder

from queue_engine.dq import DelayAdmin

# A consumer whose handler announces the job and then hangs, as a crashed app would.
_CRASHING_CONSUMER = textwrap.dedent(
    """
    import asyncio, json, sys
    from queue_engine.dq import DelayConsumer, Outcome

    nodes, tube, redis_url = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 8

    async def handler(job):
        print(json.dumps({"id": job.id, "attempt": job.attempt}), flush=True)
        await asyncio.sleep(3600)
        return Outcome.success()

    consumer = DelayConsumer(nodes, tube, redis_url, handler, lease_ttl=2.0, concurrency=concurrency)
    asyncio.run(consumer.run())
    """
)


async def _start(dq: DqEnv, script: str, *extra: str) -> asyncio.subprocess.Process:
    """A consumer process running ``script`` with ``dq``'s nodes, tube and Redis, then ``extra``."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        json.dumps(dq.nodes),
        dq.tube,
        dq.redis.url,
        *extra,
        stdout=asyncio.subprocess.PIPE,
    )


async def test_consumer_killed_mid_handler_job_is_delivered_again(dq: DqEnv) -> None:
    async with dq.producer() as producer:
        job_id = await producer.delay(b"survives a crash", 0)
    proc = await _start(dq, _CRASHING_CONSUMER)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert json.loads(line) == {"id": job_id, "attempt": 1}
    finally:
        proc.send_signal(signal.SIGKILL)  # no chance to hand anything back
        await asyncio.wait_for(proc.wait(), 10)

    recorder = Recorder()
    async with dq.consumer(recorder):
        await recorder.wait_for(lambda: job_id in recorder.ids(), within=20)
        await asyncio.sleep(0.5)
    (delivery,) = recorder.of(job_id)
    assert delivery.job.body == b"survives a crash"
    assert delivery.job.attempt == 2  # the crashed attempt counts


async def test_a_crash_counts_attempts_only_for_the_jobs_whose_handler_ran(dq: DqEnv) -> None:
    """Jobs waiting beside a crashing handler keep attempt 1: a crash loop buries only its cause."""
    async with dq.producer() as producer:
        job_ids = [await producer.delay(f"job {n}".encode(), 0) for n in range(12)]
    proc = await _start(dq, _CRASHING_CONSUMER, "2")
    started: set[str] = set()
    try:
        assert proc.stdout is not None
        for _ in range(2):  # both handler slots taken by hanging handlers
            started.add(json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))["id"])
        await asyncio.sleep(1.0)  # time to reserve (and, were it allowed, claim) the others
    finally:
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)

    recorder = Recorder()
    async with dq.consumer(recorder):
        await recorder.wait_for(lambda: set(job_ids) <= set(recorder.ids()), within=30)
    attempts = {job_id: recorder.of(job_id)[0].job.attempt for job_id in job_ids}
    assert {job_id: attempts[job_id] for job_id in started} == dict.fromkeys(started, 2)
    assert {job_id: n for job_id, n in attempts.items() if job_id not in started} == {
        job_id: 1 for job_id in job_ids if job_id not in started
    }


# A consumer whose handler takes its process down on a poison job, as a segfault or OOM would.
_DYING_CONSUMER = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from queue_engine.dq import DelayConsumer, DeliveryPolicy, Outcome

    nodes, tube, redis_url = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]

    async def handler(job):
        print(json.dumps({"id": job.id, "attempt": job.attempt}), flush=True)
        if job.body == b"poison":
            os._exit(3)
        return Outcome.success()

    policy = DeliveryPolicy(max_attempts=int(sys.argv[4]))
    consumer = DelayConsumer(nodes, tube, redis_url, handler, policy=policy, lease_ttl=1.0)
    asyncio.run(consumer.run())
    """
)


async def test_a_job_that_kills_its_consumer_every_time_is_buried_after_max_attempts(dq: DqEnv) -> None:
    """SPEC: a poison job is buried after maxAttempts crashes, not retried forever."""
    max_attempts = 2
    async with dq.producer() as producer:
        poison = await producer.delay(b"poison", 0)
    for attempt in range(1, max_attempts + 1):
        proc = await _start(dq, _DYING_CONSUMER, str(max_attempts))
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert json.loads(line) == {"id": poison, "attempt": attempt}
            assert await asyncio.wait_for(proc.wait(), 10) == 3
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    # The next consumer buries it without running it; the jobs beside it still run.
    recorder = Recorder()
    admin = DelayAdmin(dq.nodes, dq.tube, dq.redis.url)
    async with dq.producer() as producer:
        healthy = await producer.delay(b"healthy", 0)
    async with dq.consumer(recorder, policy=dataclasses.replace(FAST, max_attempts=max_attempts)):
        await recorder.wait_for(lambda: healthy in recorder.ids(), within=30)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        # (Until Redis lists it: the copy is buried on its node first, and a node's buried job
        # that Redis does not list yet shows no attempts and no error.)
        while not (buried := [b for b in await admin.buried() if b.error]):
            assert loop.time() < deadline, "the poison job was never buried"
            await asyncio.sleep(0.1)
    assert poison not in recorder.ids()
    (record,) = buried
    assert (record.id, record.attempts) == (poison, max_attempts)
    assert "without an outcome" in record.error
