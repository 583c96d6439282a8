"""dq engine vs plain greenstalk on the same three beanstalkd nodes, in the same run.

Run: ``.venv/bin/python benchmarks/dq_bench.py [--jobs N]``. Starts its own beanstalkd nodes
(with binlogs) and Redis through the test harness. Prints publish and consume rates with the
engine/raw ratio, and the lateness of delayed jobs at light load and at 80% of the consume rate
measured in the same run (published from a separate process, as producers are other pods).
``--rate R`` runs only a lateness phase at R delayed jobs a second (``--trace``: where the
latest jobs' time went; ``--node-down kill|pause``: node 0 fails half way; see --help).
``--sustained`` runs only the search for the sustained maximum below and the lateness at 80% of it.

Two "maximum rates", both printed, both in the same run:

- the BACKLOG consume rate: the consumer alone draining jobs published beforehand (no publisher
  running). "80% of the consume rate" is 80% of this one (issue 9's original reading).
- the SUSTAINED maximum: the highest rate R of delayed jobs (due 0.2-2.5 s after publish) at
  which the whole system keeps up with the publisher process and the consumer running together
  on the same machine, as in the lateness phase. A rate R (asked for ``--search-seconds``)
  passes when (1) the publisher process published at >= 97% of R (its rate of asks; at most 64
  are unanswered at a time) and (2) the consumer kept up: the median lateness of the last-due
  quarter of the jobs is under 100 ms (a consumer that falls behind sees lateness grow through
  the run) and lateness stayed bounded: the p99 of all the try's jobs is under 1 s (no backlog
  of a second formed and was worked off meanwhile). The search first floods (asks 20,000/s,
  4,000 jobs per search second) to find the publisher's ceiling U, then tries 0.6 U (the flood
  overstates: most of its jobs are out before any comes due); after a passing try, the middle
  of the bracket; after a failing one, 90% of the lower of its published and consumed rates if
  inside the bracket, else its middle; until the bracket is within 10% (at most
  ``--search-steps`` tries). Each try also prints, in its steady window (first due time + 2.3 s
  .. last due time - 2.3 s, where every delay overlaps), the rate jobs came due and the rate
  they were handled; the share of a core used by the consumer (this process), the publisher
  (the child process, while it published) and the servers (3 beanstalkd and Redis together);
  and how busy the whole machine was (other work on it included). "80% of the sustained
  maximum" is 80% of the highest passing R.
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
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from multiprocessing import Queue
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
    due: dict[str, float] = dataclasses.field(default_factory=dict)  # wall-clock due times
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
        seen.due[job.id] = due
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


async def _publish_paced(
    nodes: list[str], tube: str, redis_url: str, jobs: int, rate: float
) -> tuple[float, float]:
    """Publish ``jobs`` jobs at ``rate`` a second, each due 0.2-2.5 s after its publish; the rate
    reached (first ask .. last ask) and the share of a core used from the first ask to the last answer."""
    async with DelayProducer(nodes, tube, redis_url) as producer:
        room = asyncio.Semaphore(64)
        started = time.monotonic()
        cpu_started = time.process_time()
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
        last_asked = time.monotonic()
        await asyncio.gather(*tasks)
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_started
        print(
            f"publisher: delay() took p50 {_pct(took, 50) * 1000:.1f} ms, "
            f"p99 {_pct(took, 99) * 1000:.1f} ms, max {max(took) * 1000:.1f} ms; "
            f"{elapsed:.1f} s for {jobs} jobs",
            flush=True,
        )
        # the published rate is the rate of asks: at most 64 are unanswered, so it is the rate
        # answered, without the last answers' latency (which would count against a short run)
        return (jobs - 1) / (last_asked - started), cpu / elapsed


def _publisher_process(
    nodes: list[str], tube: str, redis_url: str, jobs: int, rate: float, *, report: Queue[tuple[float, float]]
) -> None:
    report.put(asyncio.run(_publish_paced(nodes, tube, redis_url, jobs, rate)))


SERVER_PIDS: list[int] = []  # beanstalkd and Redis, for their CPU share in the search


def _cpu_snapshot() -> tuple[float, float, float]:
    """(servers' CPU seconds, the machine's busy seconds, its total seconds) so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    servers = 0
    for pid in SERVER_PIDS:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            servers += int(fields[11]) + int(fields[12])  # utime, stime
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return servers / tick, (sum(ticks) - idle) / tick, sum(ticks) / tick


@dataclasses.dataclass
class LoadRun:
    """One lateness phase: the jobs' lateness and what the two processes did meanwhile."""

    seen: Lateness
    reached: float  # jobs / (publisher process started .. exited): includes its start-up
    published: float  # jobs / (first ask .. last ask), measured in the publisher
    publisher_cpu: float  # share of a core, while it published
    consumer_cpu: float  # share of a core (this process), from the publisher's start to the last job
    servers_cpu: float  # share of a core used by beanstalkd and Redis together, same window
    machine_busy: float  # share of the whole machine (all cores) busy, same window: others' work too


async def lateness_under_load(
    nodes: list[str],
    tube: str,
    redis_url: str,
    rate: float,
    seconds: float,
    *,
    midway: Callable[[], None] | None = None,
    jobs: int | None = None,
) -> LoadRun:
    """Jobs published at ``rate`` a second for ``seconds`` by another process, each due 0.2-2.5 s
    later; the lateness of each and the rate the publisher reached. ``midway`` is called half way
    through the publishing (a node failing, say); ``jobs`` (default: ``rate * seconds``)."""
    jobs = jobs or int(rate * seconds)
    spawn = multiprocessing.get_context("spawn")
    report: Queue[tuple[float, float]] = spawn.Queue()
    async with _late_consumer(nodes, tube, redis_url, jobs) as (seen, finished):
        publisher = spawn.Process(
            target=_publisher_process, args=(nodes, tube, redis_url, jobs, rate), kwargs={"report": report}
        )
        started = time.monotonic()
        cpu_started = time.process_time()
        servers_started, busy_started, total_started = _cpu_snapshot()
        publisher.start()
        if midway is not None:
            await asyncio.sleep(seconds / 2)
            midway()
        published, publisher_cpu = await asyncio.to_thread(report.get)
        await asyncio.to_thread(publisher.join)
        reached = jobs / (time.monotonic() - started)
        await asyncio.wait_for(finished.wait(), 120)
        wall = time.monotonic() - started
        consumer_cpu = (time.process_time() - cpu_started) / wall
        servers, busy, total = _cpu_snapshot()
    return LoadRun(
        seen,
        reached,
        published,
        publisher_cpu,
        consumer_cpu,
        (servers - servers_started) / wall,
        (busy - busy_started) / (total - total_started),
    )


@dataclasses.dataclass
class Try:
    """One rate tried by the sustained-maximum search."""

    asked: float
    run: LoadRun
    last_quarter_p50: float  # median lateness of the last-due quarter of the jobs (seconds)
    due_rate: float  # jobs coming due a second in the steady window (see try_rate)
    consumed: float  # jobs handled a second in the same window

    @property
    def published_enough(self) -> bool:
        return self.run.published >= PUBLISHED_SHARE * self.asked

    @property
    def kept_up(self) -> bool:
        bounded = _pct(self.run.seen.values(), 99) < BOUNDED_P99
        return self.last_quarter_p50 < KEPT_UP_LATENESS and bounded

    def line(self) -> str:
        why = [] if self.published_enough else ["publisher short"]
        why += [] if self.kept_up else ["consumer behind"]
        verdict = f"fail ({', '.join(why)})" if why else "pass"
        run = self.run
        return (
            f"  asked {self.asked:6.0f}/s: published {run.published:6.0f}/s; steady window: came due "
            f"{self.due_rate:6.0f}/s, consumed {self.consumed:6.0f}/s; last quarter p50 "
            f"{self.last_quarter_p50 * 1000:7.1f} ms, p99 {_pct(run.seen.values(), 99) * 1000:7.1f} ms;\n"
            f"    CPU of a core: publisher {run.publisher_cpu:4.0%}, consumer {run.consumer_cpu:4.0%}, "
            f"servers {run.servers_cpu:4.0%}; machine busy {run.machine_busy:4.0%}: {verdict}"
        )


PUBLISHED_SHARE = 0.97  # a rate counts as published when the publisher reached this share of it
KEPT_UP_LATENESS = 0.1  # ... and as consumed when the last-due quarter's median lateness is below
BOUNDED_P99 = 1.0  # ... and the p99 of all its jobs is below (a backlog of a second did not form)
FLOOD = 20_000.0  # jobs/s asked to find the publisher's ceiling: more than it can do here
FLOOD_JOBS_PER_SECOND = 4_000  # the flood's jobs per --search-seconds (the publisher's usual ceiling)


async def try_rate(
    nodes: list[str], tube: str, redis_url: str, rate: float, seconds: float, *, jobs: int | None = None
) -> Try:
    """``rate`` tried. The steady window is from the first due time + 2.3 s to the last - 2.3 s:
    there every delay (0.2-2.5 s) overlaps, so jobs come due at about the published rate."""
    run = await lateness_under_load(nodes, tube, redis_url, rate, seconds, jobs=jobs)
    late, due = run.seen.late, run.seen.due
    by_due = sorted(late, key=due.__getitem__)
    last_quarter = [late[job] for job in by_due[-max(1, len(by_due) // 4) :]]
    window_start, window_end = due[by_due[0]] + 2.3, due[by_due[-1]] - 2.3
    span = max(window_end - window_start, 1e-3)
    came_due = sum(1 for job in by_due if window_start <= due[job] < window_end)
    handled = sum(1 for job in by_due if window_start <= due[job] + late[job] < window_end)
    return Try(rate, run, statistics.median(last_quarter), came_due / span, handled / span)


async def sustained_maximum(
    nodes: list[str], redis_url: str, seconds: float, steps: int
) -> tuple[float, list[Try]]:
    """The highest rate that passes (see the module docstring), and every try, the flood first."""
    flood_jobs = int(FLOOD_JOBS_PER_SECOND * seconds)  # not FLOOD * seconds: about `seconds` long
    tries = [await try_rate(nodes, "flood", redis_url, FLOOD, seconds, jobs=flood_jobs)]
    print(tries[-1].line(), flush=True)
    ceiling = tries[-1].run.published
    passed, failed = 0.0, ceiling
    rate = 0.6 * ceiling  # the flood overstates: most of its jobs are out before any comes due
    for step in range(steps):
        tried = await try_rate(nodes, f"search{step}", redis_url, rate, seconds)
        tries.append(tried)
        print(tried.line(), flush=True)
        if tried.published_enough and tried.kept_up:
            passed, rate = rate, (rate + failed) / 2
        else:
            # next, 90% of what the system did manage; the bracket's middle if that is outside it
            failed, done = rate, min(tried.run.published, tried.consumed)
            rate = 0.9 * done if passed < 0.9 * done < failed else (passed + failed) / 2
        if failed - passed <= 0.1 * failed:
            break
    return passed, tries


def _print_search(maximum: float, tries: list[Try]) -> None:
    if maximum == 0:
        print("sustained maximum: no rate tried passed")
        return
    passing = next(t for t in tries if t.asked == maximum)
    failing = [t for t in tries[1:] if not (t.published_enough and t.kept_up)]
    short = sum(1 for t in failing if not t.published_enough)
    behind = sum(1 for t in failing if not t.kept_up)
    print(
        f"sustained maximum (publisher and consumer together, delayed jobs): {maximum:.0f}/s; "
        f"at it the consumer used {passing.run.consumer_cpu:.0%} of a core, the publisher "
        f"{passing.run.publisher_cpu:.0%}, the servers {passing.run.servers_cpu:.0%}, the machine was "
        f"{passing.run.machine_busy:.0%} busy; the flood reached {tries[0].run.published:.0f}/s published; "
        f"of {len(failing)} failed tries, publisher short in {short}, consumer behind in {behind}"
    )


def _print_late(label: str, loaded: list[float]) -> None:
    print(
        f"{label}: p50 {_pct(loaded, 50) * 1000:.1f} ms, p99 {_pct(loaded, 99) * 1000:.1f} ms, "
        f"max {max(loaded) * 1000:.1f} ms, early: {sum(1 for x in loaded if x < 0)}"
    )


@dataclasses.dataclass
class Sustained:
    maximum: float  # jobs/s; 0 when no rate tried passed
    tries: list[Try]
    at80: LoadRun | None


async def sustained(
    nodes: list[str], redis_url: str, seconds: float, load_seconds: float, steps: int
) -> Sustained:
    """The search, then the lateness at 80% of the sustained maximum for ``load_seconds``."""
    print("sustained-maximum search (each try: --search-seconds of delayed jobs):", flush=True)
    maximum, tries = await sustained_maximum(nodes, redis_url, seconds, steps)
    at80 = None
    if maximum:
        at80 = await lateness_under_load(nodes, "sustained80", redis_url, 0.8 * maximum, load_seconds)
    return Sustained(maximum, tries, at80)


def _print_sustained(result: Sustained) -> None:
    _print_search(result.maximum, result.tries)
    if result.at80 is None:
        return
    at80 = result.at80
    _print_late(
        f"lateness at 80% of the SUSTAINED maximum ({len(at80.seen.late)} jobs, "
        f"asked {0.8 * result.maximum:.0f}/s, "
        f"publisher's own rate {at80.published:.0f}/s; CPU: consumer {at80.consumer_cpu:.0%}, "
        f"publisher {at80.publisher_cpu:.0%}, servers {at80.servers_cpu:.0%} of a core; "
        f"machine {at80.machine_busy:.0%} busy)",
        at80.seen.values(),
    )


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
    with bench_servers() as (cluster, redis):
        failing = cluster[0]
        midway = None
        if node_down is not None:
            midway = failing.kill if node_down == "kill" else failing.pause
        prober = asyncio.create_task(probe_loop())
        try:
            wall_started = time.monotonic()
            cpu_started = time.process_time()
            run = await lateness_under_load(
                cluster.addresses, "loaded", redis.url, rate, seconds, midway=midway
            )
            seen, reached = run.seen, run.reached
            cpu = time.process_time() - cpu_started
            wall = time.monotonic() - wall_started
            commands = await _redis_commands(redis.url)
        finally:
            prober.cancel()
            if node_down == "pause":
                failing.resume()
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


@contextlib.contextmanager
def bench_servers() -> Iterator[tuple[BeanstalkdCluster, RedisServer]]:
    """Three beanstalkd nodes and a Redis in a temporary directory, stopped on the way out."""
    with tempfile.TemporaryDirectory(prefix="dq-bench-") as tmp:
        cluster = BeanstalkdCluster(Path(tmp) / "beanstalkd", size=3)
        redis = RedisServer(Path(tmp) / "redis")
        cluster.start()
        redis.start()
        try:
            yield cluster, redis
        finally:
            cluster.stop()
            redis.stop()


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def consume_only(n: int) -> None:
    """The consume row of the full bench alone: raw reserve+delete, then the engine, same run."""
    with bench_servers() as (cluster, redis):
        nodes, url = cluster.addresses, redis.url
        raw_publish(nodes, "raw", n)
        raw_con = raw_consume(nodes, "raw", n)
        await engine_publish(nodes, "engine", url, n, parallel=64)
        cpu_started = time.process_time()
        eng_con, duplicates = await engine_consume(nodes, "engine", url, n)
        cpu_per_job = (time.process_time() - cpu_started) / n
    print(
        f"consume {n} jobs: raw reserve+delete {raw_con:.0f}/s, engine {eng_con:.0f}/s, "
        f"engine/raw {eng_con / raw_con:.2f}; consumer CPU per job {cpu_per_job * 1e6:.0f} us; "
        f"duplicates {duplicates}"
    )


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
    parser.add_argument(
        "--sustained",
        action="store_true",
        help="only the sustained-maximum search (publisher and consumer running), then 80%% of it",
    )
    parser.add_argument("--search-seconds", type=float, default=5.0, help="length of each try of the search")
    parser.add_argument("--search-steps", type=int, default=5, help="at most this many tries after the flood")
    parser.add_argument(
        "--no-search", action="store_true", help="the full bench without the sustained search"
    )
    parser.add_argument(
        "--consume",
        action="store_true",
        help="only the consume phase (a backlog of --jobs) and raw reserve+delete, same run",
    )
    args = parser.parse_args()
    CONCURRENCY[0] = args.concurrency
    logging.basicConfig(level=logging.WARNING)
    if args.rate:
        await fixed_rate(args.rate, args.load_seconds, trace=args.trace, node_down=args.node_down)
        return
    if args.consume:
        await consume_only(args.jobs)
        return
    if args.sustained:
        with bench_servers() as (cluster, redis):
            SERVER_PIDS[:] = [server.proc.pid for server in [*cluster, redis] if server.proc]
            result = await sustained(
                cluster.addresses, redis.url, args.search_seconds, args.load_seconds, args.search_steps
            )
        _print_sustained(result)
        return

    with bench_servers() as (cluster, redis):
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
        run = await lateness_under_load(nodes, "loaded", url, target, args.load_seconds)
        seen, reached = run.seen, run.reached
        loaded = seen.values()
        cpu_per_late_job = (time.process_time() - cpu_started) / len(loaded)
        search = None
        SERVER_PIDS[:] = [server.proc.pid for server in [*cluster, redis] if server.proc]
        if not args.no_search:
            search = await sustained(nodes, url, args.search_seconds, args.load_seconds, args.search_steps)

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
    _print_late(
        f"lateness at 80% of the BACKLOG consume rate ({len(loaded)} jobs, target {target:.0f}/s, "
        f"published {reached:.0f}/s with the publisher's start-up, its own rate {run.published:.0f}/s)",
        loaded,
    )
    print(f"consumer CPU per job at 80% (delayed copies coming due): {cpu_per_late_job * 1e6:.0f} us")
    print("(raw beanstalkd alone would be up to 1000 ms early: its delays are whole seconds)")
    if search is not None:
        print(
            "\nBACKLOG consume rate: the consumer alone draining a backlog (above). SUSTAINED maximum: the"
            "\nhighest rate of delayed jobs at which, the publisher process and the consumer running"
            f"\ntogether, the publisher reaches >= {PUBLISHED_SHARE:.0%} of it and the consumer keeps up"
            f"\n(the last-due quarter's median lateness < {KEPT_UP_LATENESS * 1000:.0f} ms,"
            f" p99 < {BOUNDED_P99:.0f} s):"
        )
        _print_sustained(search)


if __name__ == "__main__":
    asyncio.run(main())
