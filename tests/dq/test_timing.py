"""Jobs arrive at their due time: never before it, and soon after it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from dq.dqkit import DqEnv, Recorder


async def test_delayed_and_timed_jobs_are_never_early_and_arrive_once(dq: DqEnv) -> None:
    recorder = Recorder()
    producer = dq.producer()
    sent: dict[str, float] = {}
    async with dq.consumer(recorder):
        for delay in (0.0, 0.3, 1.2, 1.7):
            before = time.time()
            job_id = await producer.delay(b"d%g" % delay, delay)
            sent[job_id] = before + delay
        when = datetime.now(UTC) + timedelta(seconds=1.5)
        sent[await producer.at(b"at", when)] = when.timestamp()
        await recorder.wait_for(lambda: set(recorder.ids()) == set(sent))
    await producer.close()
    lateness = []
    for job_id, due in sent.items():
        (delivery,) = recorder.of(job_id)
        assert delivery.at >= due, f"job {job_id} delivered {due - delivery.at:.3f}s early"
        assert delivery.at >= delivery.job.due_at.timestamp()
        assert delivery.job.attempt == 1
        lateness.append(delivery.at - due)
    # A generous bound only: this checks "not stuck for a whole second", not speed.
    assert max(lateness) < 1.0, lateness
