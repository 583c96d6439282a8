"""1,000 jobs, three copies each: every job reaches the handler exactly once in normal operation."""

from __future__ import annotations

import asyncio
import collections
import time

from dq.dqkit import DqEnv, Recorder
from prometheus_client import REGISTRY

from queue_engine.dq import DelayAdmin

JOBS = 1000


async def test_no_duplicates_across_replicas_over_1000_jobs(dq: DqEnv) -> None:
    """Two consumers share the tube, so copies of one job meet in different consumers too."""
    recorder = Recorder()
    async with (
        dq.producer() as producer,
        dq.consumer(recorder, concurrency=4),
        dq.consumer(recorder, concurrency=4),
    ):
        sent: list[str] = []
        for start in range(0, JOBS, 100):
            batch = [producer.delay(b"%d" % i, (i % 20) * 0.1) for i in range(start, start + 100)]
            sent += await asyncio.gather(*batch)
        started = time.monotonic()
        await recorder.wait_for(lambda: len(set(recorder.ids())) == JOBS, within=90)
        await asyncio.sleep(1.0)
        elapsed = time.monotonic() - started
    counts = collections.Counter(recorder.ids())
    duplicates = sum(n - 1 for n in counts.values())
    assert set(counts) == set(sent)
    assert duplicates == 0, f"{duplicates} duplicate deliveries over {JOBS} jobs"
    # Two extra copies per job were recognised and deleted, not delivered.
    suppressed = REGISTRY.get_sample_value("queue_dq_duplicates_suppressed_total", {"queue": dq.tube})
    assert suppressed is not None and suppressed >= JOBS
    admin = DelayAdmin(dq.nodes, dq.tube, dq.redis.url)
    left = sum(s.ready + s.delayed + s.reserved + s.buried for s in await admin.stats())
    await admin.close()
    assert left == 0, f"{left} copies left behind"
    print(f"\n{JOBS} jobs x 3 copies consumed in {elapsed:.1f}s, duplicates: {duplicates}")
