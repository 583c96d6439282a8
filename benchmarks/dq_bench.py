"""dq engine vs plain greenstalk on the same three beanstalkd nodes, in the same run.

Run: ``.venv/bin/python benchmarks/dq_bench.py [--jobs N]``. Starts its own beanstalkd nodes
(with binlogs) and Redis through the test harness. Prints publish and consume rates with the
engine/raw ratio, and the lateness of delayed jobs at light load and at 80% of the consume rate
measured in the same run (published from a separate process, as producers are other pods).
The event loop is asyncio's (uvloop made no measurable difference here).

The engine does more per job than the raw client on purpose: three copies instead of one, a
quorum, a Redis record, and on consume a Redis claim plus a done marker and the deletion of
the two standby copies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import greenstalk

from harness.servers import BeanstalkdCluster, RedisServer
from queue_engine.dq import DelayConsumer, DelayJob, DelayProducer, Outcome


def _client(address: str, tube: str) -> greenstalk.Client[bytes]:
    host, port = address.split(":")
    return greenstalk.Client((host, int(port)), encoding=None, use=tube, watch=tube)


def raw_publish(nodes: list[str], tube: str, jobs: int) -> float:
    clients = [_client(node, tube) for node in nodes]
    started = time.perf_counter()
    for i in range(jobs):
        clients[i % len(clients)].put(b"x" * 100)
    elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    return jobs / elapsed


def raw_consume(nodes: list[str], tube: str, jobs: int) -> float:
    """One thread per node doing reserve + delete until the node's share is gone."""
    done = 0
    lock = threading.Lock()

    def drain(node: str) -> None:
        nonlocal done
        client = _client(node, tube)
        while True:
            try:
                job = client.reserve(timeout=0)
            except greenstalk.TimedOutError:
                break
            client.delete(job)
            with lock:
                done += 1
        client.close()

    threads = [threading.Thread(target=drain, args=(node,)) for node in nodes]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    assert done == jobs, (done, jobs)
    return jobs / elapsed


async def engine_publish(nodes: list[str], tube: str, redis_url: str, jobs: int, parallel: int) -> float:
    async with DelayProducer(nodes, tube, redis_url) as producer:
        started = time.perf_counter()
        for start in range(0, jobs, parallel):
            count = min(parallel, jobs - start)
            await asyncio.gather(*(producer.delay(b"x" * 100, 0) for _ in range(count)))
        return jobs / (time.perf_counter() - started)


async def engine_consume(nodes: list[str], tube: str, redis_url: str, jobs: int) -> tuple[float, int]:
    seen: dict[str, int] = {}
    all_in = asyncio.Event()

    async def handler(job: DelayJob) -> Outcome:
        seen[job.id] = seen.get(job.id, 0) + 1
        if len(seen) == jobs:
            all_in.set()
        return Outcome.success()

    consumer = DelayConsumer(nodes, tube, redis_url, handler, concurrency=8)
    started = time.perf_counter()
    task = asyncio.create_task(consumer.run())
    await asyncio.wait_for(all_in.wait(), 300)
    elapsed = time.perf_counter() - started
    await consumer.stop()
    await task
    return jobs / elapsed, sum(seen.values()) - len(seen)


@contextlib.asynccontextmanager
async def _late_consumer(
    nodes: list[str], tube: str, redis_url: str, jobs: int
) -> AsyncIterator[tuple[list[float], asyncio.Event]]:
    """A consumer recording each job's lateness; the event is set once ``jobs`` came."""
    late: list[float] = []
    finished = asyncio.Event()

    async def handler(job: DelayJob) -> Outcome:
        late.append(time.time() - job.due_at.timestamp())
        if len(late) == jobs:
            finished.set()
        return Outcome.success()

    consumer = DelayConsumer(nodes, tube, redis_url, handler, concurrency=8)
    task = asyncio.create_task(consumer.run())
    try:
        yield late, finished
    finally:
        await consumer.stop()
        await task


async def lateness(nodes: list[str], tube: str, redis_url: str, jobs: int) -> list[float]:
    """Light load: about 50 jobs a second, each due 0.2-2.5 s after publishing."""
    async with _late_consumer(nodes, tube, redis_url, jobs) as (late, finished):
        async with DelayProducer(nodes, tube, redis_url) as producer:
            for _ in range(jobs):
                await producer.delay(b"x", random.uniform(0.2, 2.5))
                await asyncio.sleep(0.02)
        await asyncio.wait_for(finished.wait(), 60)
    return late


async def _publish_paced(nodes: list[str], tube: str, redis_url: str, jobs: int, rate: float) -> None:
    """Publish ``jobs`` jobs at ``rate`` a second, each due 0.2-2.5 s after its publish."""
    async with DelayProducer(nodes, tube, redis_url) as producer:
        room = asyncio.Semaphore(64)
        started = time.monotonic()
        tasks = []

        async def one() -> None:
            try:
                await producer.delay(b"x" * 100, random.uniform(0.2, 2.5))
            finally:
                room.release()

        for i in range(jobs):
            wait = started + i / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await room.acquire()
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)


def _publisher_process(nodes: list[str], tube: str, redis_url: str, jobs: int, rate: float) -> None:
    asyncio.run(_publish_paced(nodes, tube, redis_url, jobs, rate))


async def lateness_under_load(
    nodes: list[str], tube: str, redis_url: str, rate: float, seconds: float
) -> tuple[list[float], float]:
    """Jobs published at ``rate`` a second for ``seconds`` by another process, each due 0.2-2.5 s
    later; the lateness of each and the rate the publisher reached."""
    jobs = int(rate * seconds)
    async with _late_consumer(nodes, tube, redis_url, jobs) as (late, finished):
        publisher = multiprocessing.get_context("spawn").Process(
            target=_publisher_process, args=(nodes, tube, redis_url, jobs, rate)
        )
        started = time.monotonic()
        publisher.start()
        await asyncio.to_thread(publisher.join)
        reached = jobs / (time.monotonic() - started)
        await asyncio.wait_for(finished.wait(), 120)
    return late, reached


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per throughput phase")
    parser.add_argument("--late-jobs", type=int, default=200, help="jobs in the lateness phase")
    parser.add_argument("--load-seconds", type=float, default=5.0, help="length of the 80%% load phase")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="dq-bench-") as tmp:
        cluster = BeanstalkdCluster(Path(tmp) / "beanstalkd", size=3)
        redis = RedisServer(Path(tmp) / "redis")
        cluster.start()
        redis.start()
        try:
            nodes, url, n = cluster.addresses, redis.url, args.jobs
            raw_pub = raw_publish(nodes, "raw", n)
            raw_con = raw_consume(nodes, "raw", n)
            eng_pub_1 = await engine_publish(nodes, "engine", url, n, parallel=1)
            cpu_started = time.process_time()
            eng_con, duplicates = await engine_consume(nodes, "engine", url, n)
            cpu_per_job = (time.process_time() - cpu_started) / n
            eng_pub_64 = await engine_publish(nodes, "engine64", url, n, parallel=64)
            late = await lateness(nodes, "late", url, args.late_jobs)
            target = 0.8 * eng_con
            cpu_started = time.process_time()  # the publisher is another process: not counted
            loaded, reached = await lateness_under_load(nodes, "loaded", url, target, args.load_seconds)
            cpu_per_late_job = (time.process_time() - cpu_started) / len(loaded)
        finally:
            cluster.stop()
            redis.stop()

    rows = [
        ("publish, sequential (jobs/s)", raw_pub, eng_pub_1),
        ("publish, 64 concurrent (jobs/s)", raw_pub, eng_pub_64),
        ("consume: reserve..delete (jobs/s)", raw_con, eng_con),
    ]
    print(f"\n{n} jobs of 100 bytes, 3 beanstalkd nodes with binlog, engine writes 3 copies per job\n")
    print(f"{'measure':<36}{'greenstalk':>12}{'dq engine':>12}{'engine/raw':>12}")
    for label, raw, engine in rows:
        print(f"{label:<36}{raw:>12.0f}{engine:>12.0f}{engine / raw:>12.2f}")
    print(f"\nduplicate deliveries in the consume phase: {duplicates}")
    print(f"consumer CPU per job in the consume phase: {cpu_per_job * 1e6:.0f} us")
    print(
        f"lateness at light load ({len(late)} jobs): p50 {_pct(late, 50) * 1000:.1f} ms, "
        f"p99 {_pct(late, 99) * 1000:.1f} ms, max {max(late) * 1000:.1f} ms, "
        f"early: {sum(1 for x in late if x < 0)}"
    )
    print(
        f"lateness at 80% of the consume rate ({len(loaded)} jobs, target {target:.0f}/s, "
        f"published {reached:.0f}/s): p50 {_pct(loaded, 50) * 1000:.1f} ms, "
        f"p99 {_pct(loaded, 99) * 1000:.1f} ms, max {max(loaded) * 1000:.1f} ms, "
        f"early: {sum(1 for x in loaded if x < 0)}"
    )
    print(f"consumer CPU per job at 80% (delayed copies coming due): {cpu_per_late_job * 1e6:.0f} us")
    print("(raw beanstalkd alone would be up to 1000 ms early: its delays are whole seconds)")


if __name__ == "__main__":
    asyncio.run(main())
