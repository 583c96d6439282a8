"""kq engine vs plain confluent-kafka on the same tansu broker in the same run.

Run: .venv/bin/python benchmarks/kq_bench.py [MESSAGES]

Measures push rate (acked one by one, and pipelined with futures) and consume rate (no-op
handler, offsets committed; and a handler that awaits once, as the sidecar's always does) and
prints a table with the engine/raw ratio; then the process CPU time per pipelined push, raw
and engine (the push rates are bound by the broker, this is the client's own cost). Group-join
time is left out of the consume numbers: the clock starts at the first message.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from harness.servers import Tansu
from queue_engine.kq import KafkaConsumer, KafkaMessage, KafkaPusher, SyncKafkaPusher
from queue_engine.policy import Outcome

PARTITIONS = 4
VALUE = b"x" * 100
GROUP_SETTINGS = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def topic(admin: AdminClient) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    for future in admin.create_topics([NewTopic(name, PARTITIONS, 1)]).values():
        future.result(15)
    return name


def key(i: int) -> bytes:
    return f"k{i % 64}".encode()


def raw_producer(bootstrap: str) -> Producer:
    return Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )


def raw_push_one_by_one(bootstrap: str, name: str, n: int) -> float:
    producer = raw_producer(bootstrap)
    started = time.perf_counter()
    for i in range(n):
        producer.produce(name, VALUE, key(i))
        producer.flush(10)
    return time.perf_counter() - started


def raw_push_pipelined(bootstrap: str, name: str, n: int) -> float:
    producer = raw_producer(bootstrap)
    acked = 0

    def report(err: Any, _msg: Any) -> None:
        nonlocal acked
        acked += err is None

    started = time.perf_counter()
    for i in range(n):
        while True:
            try:
                producer.produce(name, VALUE, key(i), on_delivery=report)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    assert acked == n
    return time.perf_counter() - started


async def engine_push_one_by_one(bootstrap: str, name: str, n: int) -> float:
    pusher = KafkaPusher([bootstrap], name)
    started = time.perf_counter()
    for i in range(n):
        await pusher.push(VALUE, key(i))
    elapsed = time.perf_counter() - started
    await pusher.close()
    return elapsed


async def engine_push_pipelined(
    bootstrap: str, name: str, n: int, extra: dict[str, Any] | None = None
) -> float:
    pusher = KafkaPusher([bootstrap], name, extra=extra)
    started = time.perf_counter()
    window: list[asyncio.Future[Any]] = []

    async def settle() -> None:
        # Each result awaited in order (each raises its error, if any): most are done by the
        # time they are awaited and cost nothing more, where gather() would schedule a callback
        # per future, a cost of the benchmark's, not of pushing.
        for future in window:
            await future
        window.clear()

    for i in range(n):
        window.append(pusher.push_nowait(VALUE, key(i)))
        if len(window) >= 50_000:  # stay under librdkafka's local queue limit
            await settle()
    await settle()
    elapsed = time.perf_counter() - started
    await pusher.close()
    return elapsed


def sync_push_one_by_one(bootstrap: str, name: str, n: int) -> float:
    with SyncKafkaPusher([bootstrap], name) as pusher:
        started = time.perf_counter()
        for i in range(n):
            pusher.push(VALUE, key(i))
        return time.perf_counter() - started


def sync_push_pipelined(bootstrap: str, name: str, n: int) -> float:
    with SyncKafkaPusher([bootstrap], name) as pusher:
        started = time.perf_counter()
        futures = [pusher.push_async(VALUE, key(i)) for i in range(n)]
        for future in futures:
            future.result(60)
        return time.perf_counter() - started


def raw_consume(bootstrap: str, name: str, n: int) -> float:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **GROUP_SETTINGS,
        }
    )
    consumer.subscribe([name])
    seen = 0
    started = 0.0
    while seen < n:
        records = consumer.consume(500, 0.1)
        good = [r for r in records if r.error() is None]
        if good and not started:
            started = time.perf_counter()
        seen += len(good)
        if good:
            consumer.commit(asynchronous=False)  # the consumed positions of every partition
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


async def engine_consume(
    bootstrap: str, name: str, n: int, *, journal: bool = True, awaits: bool = False, batch: bool = False
) -> float:
    seen = 0
    started = 0.0
    done = asyncio.Event()

    async def handle(_message: KafkaMessage) -> Outcome:
        nonlocal seen, started
        if not started:
            started = time.perf_counter()
        if awaits:
            # What every sidecar call does (it waits for the app's answer), at no cost of its
            # own: the call takes the awaiting path (timeout, in_flight, a task wake-up).
            await asyncio.sleep(0)
        seen += 1
        if seen >= n:
            done.set()
        return Outcome.success()

    async def handle_batch(messages: Sequence[KafkaMessage]) -> Sequence[Outcome]:
        nonlocal seen, started
        if not started:
            started = time.perf_counter()
        await asyncio.sleep(0)  # a batch call that awaits, as the sidecar's bulk delivery does
        seen += len(messages)
        if seen >= n:
            done.set()
        return [Outcome.success()] * len(messages)

    group = f"engine-{uuid.uuid4().hex[:6]}"
    consumer = (
        KafkaConsumer([bootstrap], name, group, batch_handler=handle_batch, offset="first")
        if batch
        else KafkaConsumer([bootstrap], name, group, handle, offset="first", journal_attempts=journal)
    )
    task = asyncio.create_task(consumer.run())
    await done.wait()
    elapsed = time.perf_counter() - started
    await consumer.stop()
    await task
    return elapsed


def row(label: str, n: int, raw: float, engine: float) -> str:
    raw_rate, engine_rate = n / raw, n / engine
    ratio = engine_rate / raw_rate
    return f"| {label:<34} | {n:>7} | {raw_rate:>12,.0f} | {engine_rate:>12,.0f} | {ratio:>5.2f} |"


def cpu_row(label: str, n: int, raw: float, engine: float) -> str:
    raw_us, engine_us = raw / n * 1e6, engine / n * 1e6
    return f"| {label:<34} | {n:>7} | {raw_us:>11.1f} | {engine_us:>13.1f} | {raw_us / engine_us:>5.2f} |"


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    one_by_one = max(200, n // 20)
    with tempfile.TemporaryDirectory() as tmp:
        broker = Tansu(Path(tmp) / "tansu")
        broker.start()
        try:
            bootstrap = broker.bootstrap
            admin = AdminClient({"bootstrap.servers": bootstrap})
            rows = []
            cpu_rows = []

            def compare(
                label: str,
                count: int,
                raw: Callable[[], float],
                engine: Callable[[], float],
                cpu: bool = False,
            ) -> None:
                raw(), engine()  # warm-up: connections, producer ids
                raw_cpu = time.process_time()
                raw_time = raw()
                raw_cpu = time.process_time() - raw_cpu
                engine_cpu = time.process_time()
                engine_time = engine()
                engine_cpu = time.process_time() - engine_cpu
                rows.append(row(label, count, raw_time, engine_time))
                if cpu:
                    cpu_rows.append(cpu_row(label, count, raw_cpu, engine_cpu))

            t = topic(admin)
            compare(
                "push, acked one by one (async)",
                one_by_one,
                lambda: raw_push_one_by_one(bootstrap, t, one_by_one),
                lambda: asyncio.run(engine_push_one_by_one(bootstrap, t, one_by_one)),
            )
            compare(
                "push, acked one by one (sync)",
                one_by_one,
                lambda: raw_push_one_by_one(bootstrap, t, one_by_one),
                lambda: sync_push_one_by_one(bootstrap, t, one_by_one),
            )
            compare(
                "push_nowait, pipelined (async)",
                n,
                lambda: raw_push_pipelined(bootstrap, t, n),
                lambda: asyncio.run(engine_push_pipelined(bootstrap, t, n)),
                cpu=True,
            )
            # The raw producer keeps librdkafka's default linger.ms=5; the engine's default is 0
            # (push() waits for each ack). The same setting on both sides, for the cost alone:
            compare(
                "  the same, engine linger.ms=5 too",
                n,
                lambda: raw_push_pipelined(bootstrap, t, n),
                lambda: asyncio.run(engine_push_pipelined(bootstrap, t, n, {"linger.ms": 5})),
            )
            compare(
                "push_async, pipelined (sync)",
                n,
                lambda: raw_push_pipelined(bootstrap, t, n),
                lambda: sync_push_pipelined(bootstrap, t, n),
                cpu=True,
            )
            source = topic(admin)
            raw_push_pipelined(bootstrap, source, n)
            raw_rate = raw_consume(bootstrap, source, n)
            rows.append(
                row(
                    "consume + commit, no-op handler",
                    n,
                    raw_rate,
                    asyncio.run(engine_consume(bootstrap, source, n)),
                )
            )
            # The same without the attempts journal (attempt counts in memory only), for its cost.
            rows.append(
                row(
                    "  the same, journal_attempts=False",
                    n,
                    raw_rate,
                    asyncio.run(engine_consume(bootstrap, source, n, journal=False)),
                )
            )
            # A handler that awaits (as the sidecar's always does): the awaiting path's cost.
            rows.append(
                row(
                    "consume + commit, handler awaits",
                    n,
                    raw_rate,
                    asyncio.run(engine_consume(bootstrap, source, n, awaits=True)),
                )
            )
            # batch_handler (max_batch 100, 8 batches in flight), a no-op batch call that awaits.
            rows.append(
                row(
                    "consume + commit, batch handler",
                    n,
                    raw_rate,
                    asyncio.run(engine_consume(bootstrap, source, n, batch=True)),
                )
            )
        finally:
            broker.stop()
    print(f"kq engine vs plain confluent-kafka, tansu in memory, {PARTITIONS} partitions, 100-byte values")
    print("| operation                          |    msgs |   raw msg/s |  engine msg/s | ratio |")
    print("|------------------------------------|---------|--------------|--------------|-------|")
    for line in rows:
        print(line)
    # The pushes' rates are bound by the broker (tansu: the raw producer uses a fraction of a
    # core, and both sides sometimes fall to about half in the same run): this is the client's
    # own cost, process CPU time (every thread, librdkafka's too) per push, the same runs.
    print()
    print("CPU per pipelined push (process CPU time / pushes, all threads; ratio = raw / engine)")
    print("| operation                          |    msgs |  raw us/msg | engine us/msg | ratio |")
    print("|------------------------------------|---------|-------------|---------------|-------|")
    for line in cpu_rows:
        print(line)


if __name__ == "__main__":
    main()
