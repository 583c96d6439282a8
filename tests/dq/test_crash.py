"""A consumer process killed mid-handler: the job is delivered again, by the next consumer."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap

from dq.dqkit import DqEnv, Recorder

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


async def test_consumer_killed_mid_handler_job_is_delivered_again(dq: DqEnv) -> None:
    async with dq.producer() as producer:
        job_id = await producer.delay(b"survives a crash", 0)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CRASHING_CONSUMER,
        json.dumps(dq.nodes),
        dq.tube,
        dq.redis.url,
        stdout=asyncio.subprocess.PIPE,
    )
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
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CRASHING_CONSUMER,
        json.dumps(dq.nodes),
        dq.tube,
        dq.redis.url,
        "2",
        stdout=asyncio.subprocess.PIPE,
    )
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
