"""dq engine vs plain greenstalk on the same three beanstalkd nodes, in the same run.

Run: ``.venv/bin/python benchmarks/dq_bench.py [--jobs N]``. Starts its own beanstalkd nodes
(with binlogs) and Redis through the test harness. Prints publish and consume rates with the
engine/raw ratio, and the lateness of delayed jobs at light load and at 80% of the consume rate
measured in the same run (published from a separate process, as producers are other pods).
``--rate R`` runs only a lateness phase at R delayed jobs a second (``--trace``: where the
latest jobs' time went; ``--node-down kill|pause``: node 0 fails half way; see --help).
The event loop is asyncio's (uvloop made no measurable difference here).

The engine does more per job than the raw client on purpose: three copies instead of one, a
quorum, a Redis record, and on consume a Redis claim plus a done marker and the deletion of
the two standby copies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import greenstalk
from redis.asyncio import Redis

from harness.servers import BeanstalkdCluster, RedisServer
from queue_engine.dq import DelayConsumer, DelayJob, DelayProducer, Outcome
from queue_engine.dq.clock import RedisClock
from queue_engine.dq.delivery import Delivery
from queue_engine.dq.envelope import Envelope
from queue_engine.dq.held import NodeLine, Reserved
from queue_engine.dq.node_io import AsyncNodeConnection
from queue_engine.dq.producer import STANDBY_DELAY


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


# --trace: per job, (publish, due, reserved, handler) wall times; reserved comes from a wrapper
# around Delivery.start (the copy handed to delivery), publish from the job's body.
TRACE: dict[str, list[float]] = {}
CONCURRENCY = [8]  # the lateness consumers' (--concurrency)
RESERVED: dict[str, float] = {}
OFFSETS: list[float] = []  # the consumer's measured offsets to Redis's clock


def _trace_reservations() -> None:
    start = Delivery.start

    def traced(self: Delivery, line: NodeLine, conn: AsyncNodeConnection, got: Reserved) -> None:
        envelope = Envelope.decode(got[1].body)
        if envelope is not None:
            RESERVED.setdefault(envelope.job_id, time.time())
        start(self, line, conn, got)

    Delivery.start = traced  # type: ignore[method-assign]
    measure = RedisClock.measure

    async def measured(self: RedisClock, redis: Redis) -> None:
        await measure(self, redis)
        OFFSETS.append(self.offset)

    RedisClock.measure = measured  # type: ignore[method-assign]


def _body() -> bytes:
    """100 bytes starting with the publish time (for --trace)."""
    return f"{time.time():.6f}".encode().ljust(100, b"x")


@dataclasses.dataclass
class Lateness:
    """Per job, its first delivery's lateness (seconds); deliveries after the first counted."""

    late: dict[str, float] = dataclasses.field(default_factory=dict)
    duplicates: int = 0

    def values(self) -> list[float]:
        return list(self.late.values())


@contextlib.asynccontextmanager
async def _late_consumer(
    nodes: list[str], tube: str, redis_url: str, jobs: int
) -> AsyncIterator[tuple[Lateness, asyncio.Event]]:
    """A consumer recording each job's lateness; the event is set once ``jobs`` came."""
    seen = Lateness()
    finished = asyncio.Event()

    async def handler(job: DelayJob) -> Outcome:
        now = time.time()
        due = job.due_at.timestamp()
        if job.id in seen.late:
            seen.duplicates += 1
            return Outcome.success()
        seen.late[job.id] = now - due
        if job.id in RESERVED:
            TRACE[job.id] = [float(job.body[:17].split(b"x")[0]), due, RESERVED[job.id], now]
        if len(seen.late) == jobs:
            finished.set()
        return Outcome.success()

    consumer = DelayConsumer(nodes, tube, redis_url, handler, concurrency=CONCURRENCY[0])
    task = asyncio.create_task(consumer.run())
    try:
        yield seen, finished
    finally:
        await consumer.stop()
        await task


async def lateness(nodes: list[str], tube: str, redis_url: str, jobs: int) -> list[float]:
    """Light load: about 50 jobs a second, each due 0.2-2.5 s after publishing."""
    async with _late_consumer(nodes, tube, redis_url, jobs) as (seen, finished):
        async with DelayProducer(nodes, tube, redis_url) as producer:
            for _ in range(jobs):
                await producer.delay(b"x", random.uniform(0.2, 2.5))
                await asyncio.sleep(0.02)
        await asyncio.wait_for(finished.wait(), 60)
    return seen.values()


async def _publish_paced(nodes: list[str], tube: str, redis_url: str, jobs: int, rate: float) -> None:
    """Publish ``jobs`` jobs at ``rate`` a second, each due 0.2-2.5 s after its publish."""
    async with DelayProducer(nodes, tube, redis_url) as producer:
        room = asyncio.Semaphore(64)
        started = time.monotonic()
        tasks = []

        took: list[float] = []

        async def one() -> None:
            asked = time.monotonic()
            try:
                await producer.delay(_body(), random.uniform(0.2, 2.5))
            finally:
                took.append(time.monotonic() - asked)
                room.release()

        for i in range(jobs):
            wait = started + i / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await room.acquire()
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        print(
            f"publisher: delay() took p50 {_pct(took, 50) * 1000:.1f} ms, "
            f"p99 {_pct(took, 99) * 1000:.1f} ms, max {max(took) * 1000:.1f} ms; "
            f"{time.monotonic() - started:.1f} s for {jobs} jobs",
            flush=True,
        )


def _publisher_process(nodes: list[str], tube: str, redis_url: str, jobs: int, rate: float) -> None:
    asyncio.run(_publish_paced(nodes, tube, redis_url, jobs, rate))


async def lateness_under_load(
    nodes: list[str],
    tube: str,
    redis_url: str,
    rate: float,
    seconds: float,
    *,
    midway: Callable[[], None] | None = None,
) -> tuple[Lateness, float]:
    """Jobs published at ``rate`` a second for ``seconds`` by another process, each due 0.2-2.5 s
    later; the lateness of each and the rate the publisher reached. ``midway`` is called half way
    through the publishing (a node failing, say)."""
    jobs = int(rate * seconds)
    async with _late_consumer(nodes, tube, redis_url, jobs) as (seen, finished):
        publisher = multiprocessing.get_context("spawn").Process(
            target=_publisher_process, args=(nodes, tube, redis_url, jobs, rate)
        )
        started = time.monotonic()
        publisher.start()
        if midway is not None:
            await asyncio.sleep(seconds / 2)
            midway()
        await asyncio.to_thread(publisher.join)
        reached = jobs / (time.monotonic() - started)
        await asyncio.wait_for(finished.wait(), 120)
    return seen, reached


async def fixed_rate(rate: float, seconds: float, *, trace: bool, node_down: str | None) -> None:
    """The lateness of delayed jobs published at a fixed rate, with what explains it: the event
    loop's own delay (a 10 ms timer), the consumer's CPU, and with ``trace`` where the latest
    jobs' time went. ``node_down`` ("kill" or "pause"): one node fails half way through."""
    lags: list[float] = []

    async def probe_loop() -> None:  # how late a 10 ms timer fires: the loop's (or the OS's) delay
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - asked - 0.01)

    if trace:
        _trace_reservations()
    with tempfile.TemporaryDirectory(prefix="dq-bench-") as tmp:
        cluster = BeanstalkdCluster(Path(tmp) / "beanstalkd", size=3)
        redis = RedisServer(Path(tmp) / "redis")
        cluster.start()
        redis.start()
        failing = cluster[0]
        midway = None
        if node_down is not None:
            midway = failing.kill if node_down == "kill" else failing.pause
        prober = asyncio.create_task(probe_loop())
        try:
            wall_started = time.monotonic()
            cpu_started = time.process_time()
            seen, reached = await lateness_under_load(
                cluster.addresses, "loaded", redis.url, rate, seconds, midway=midway
            )
            cpu = time.process_time() - cpu_started
            wall = time.monotonic() - wall_started
            commands = await _redis_commands(redis.url)
        finally:
            prober.cancel()
            if node_down == "pause":
                failing.resume()
            cluster.stop()
            redis.stop()
    loaded = seen.values()
    print(
        f"lateness at {rate:.0f}/s ({len(loaded)} jobs, published {reached:.0f}/s"
        f"{f', node 0 failed ({node_down}) half way' if node_down else ''}): "
        f"p50 {_pct(loaded, 50) * 1000:.1f} ms, p90 {_pct(loaded, 90) * 1000:.1f} ms, "
        f"p99 {_pct(loaded, 99) * 1000:.1f} ms, max {max(loaded) * 1000:.1f} ms, "
        f"early: {sum(1 for x in loaded if x < 0)}, delivered twice: {seen.duplicates}"
    )
    if node_down:
        over = sum(1 for x in loaded if x > STANDBY_DELAY + 1)
        print(f"jobs later than the standby delay + 1 s ({STANDBY_DELAY + 1} s): {over}")
    print(
        f"consumer CPU per job {cpu / len(loaded) * 1e6:.0f} us ({cpu / wall:.0%} of a core); "
        f"loop lag of a 10 ms timer: p50 {_pct(lags, 50) * 1000:.1f} ms, "
        f"p99 {_pct(lags, 99) * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms"
    )
    print(
        "Redis per job (consumer and producer): "
        + ", ".join(f"{name} {calls / len(loaded):.2f}" for name, calls in commands.items())
    )
    if trace:
        _print_trace()


async def _redis_commands(url: str) -> dict[str, int]:
    """Script calls so far (INFO commandstats; a batch of claims or done marks is one)."""
    client = Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    return {"script calls (EVALSHA)": calls.get("evalsha", 0) + calls.get("eval", 0)}


def _print_trace() -> None:
    """For the latest 2% of jobs (and all, for comparison), medians of: how long the copy was
    ready on its node before the consumer reserved it (ready = publish + the delay rounded
    down, as the producer puts it), how long from max(reserved, due) to the handler, and how
    early beanstalkd made it ready."""
    rows = []
    for publish, due, reserved, handled in TRACE.values():
        ready = publish + math.floor(due - publish)  # the producer rounds the delay down
        rows.append((handled - due, reserved - ready, handled - max(reserved, due), due - ready))
    rows.sort()
    behind = [-x for x in OFFSETS if x < 0]
    print(
        f"  Redis clock measured {len(OFFSETS)} times, as behind ours {len(behind)} times"
        + (f" (by up to {max(behind) * 1000:.1f} ms)" if behind else "")
    )
    for label, part in (("all", rows), ("latest 2%", rows[-max(1, len(rows) // 50) :])):
        cols = list(zip(*part, strict=True))
        print(
            f"  {label:<10} median: late {statistics.median(cols[0]) * 1000:7.1f} ms, "
            f"ready->reserved {statistics.median(cols[1]) * 1000:7.1f} ms, "
            f"max(reserved,due)->handler {statistics.median(cols[2]) * 1000:7.1f} ms, "
            f"ready before due {statistics.median(cols[3]) * 1000:7.1f} ms"
        )


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per throughput phase")
    parser.add_argument("--late-jobs", type=int, default=200, help="jobs in the lateness phase")
    parser.add_argument("--load-seconds", type=float, default=5.0, help="length of the 80%% load phase")
    parser.add_argument(
        "--rate",
        type=float,
        help="only the lateness of delayed jobs published at this fixed rate (jobs/s) for --load-seconds",
    )
    parser.add_argument("--trace", action="store_true", help="with --rate: where the late jobs' time went")
    parser.add_argument("--concurrency", type=int, default=8, help="the lateness consumers' concurrency")
    parser.add_argument(
        "--node-down",
        choices=("kill", "pause"),
        help="with --rate: node 0 is killed (or paused: hung) half way through the publishing",
    )
    args = parser.parse_args()
    CONCURRENCY[0] = args.concurrency
    logging.basicConfig(level=logging.WARNING)
    if args.rate:
        await fixed_rate(args.rate, args.load_seconds, trace=args.trace, node_down=args.node_down)
        return

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
            seen, reached = await lateness_under_load(nodes, "loaded", url, target, args.load_seconds)
            loaded = seen.values()
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
