"""What publishing through the sidecar costs, against the engine in-process and the raw clients.

Run: ``.venv/bin/python benchmarks/publish_bench.py [--count N] [--concurrency C]``

Same servers (3 beanstalkd nodes, Redis, tansu), same run, four ways to publish:
- ``raw client``: greenstalk ``put`` to one node (dq) / a confluent Producer with acks=all,
  one message at a time awaited (kq): no replication, no de-dup record, no API;
- ``engine``: ``DelayProducer.delay`` / ``KafkaPusher.push`` called in this process;
- ``sidecar http``: ``POST /v1/...`` to the publish API served by a child process (as the
  sidecar serves it, on the sidecar's event loop), over one keep-alive session;
- ``sidecar http (lean)``: the same requests pre-built and sent with the sidecar's own small
  keep-alive client, so the client's CPU (it shares the cores) counts less;
- ``sidecar grpc``: ``queueoperator.v1.Publisher`` on one channel.

Measured: latency one at a time (p50, p99, ms) and throughput with ``--concurrency`` requests in
flight (messages/s, ``--rate-count`` publishes per way). Ratios are against ``engine``: what the
publish API adds on top of the library an app could import instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import greenstalk  # noqa: E402
import grpc  # noqa: E402
from aiohttp import ClientSession  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from google.protobuf.duration_pb2 import Duration  # noqa: E402

from harness.servers import BeanstalkdCluster, RedisServer, Tansu, free_port, wait_for_port  # noqa: E402
from queue_engine.dq import DelayProducer  # noqa: E402
from queue_engine.kq import KafkaPusher  # noqa: E402
from queue_sidecar.delivery.http_client import KeepAliveClient  # noqa: E402
from queue_sidecar.proto import queue_pb2, queue_pb2_grpc  # noqa: E402

BODY = b"x" * 128
DELAY_S = 3600  # far in the future: the jobs only sit in beanstalkd

Publish = Callable[[], Awaitable[Any]]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the publish server (child process)


async def serve(settings: dict[str, Any]) -> None:
    from queue_sidecar.publish.grpc import start_server  # noqa: PLC0415
    from queue_sidecar.publish.http import serve as serve_http  # noqa: PLC0415
    from queue_sidecar.publish.targets import PublishTargets  # noqa: PLC0415

    targets = PublishTargets(
        delay={"bench": DelayProducer(settings["nodes"], settings["tube"], settings["redis"], name="bench")},
        kafka={"bench": KafkaPusher([settings["bootstrap"]], settings["topic"], name="bench")},
    )
    await serve_http(targets, "127.0.0.1", settings["http_port"])
    server = await start_server(targets, "127.0.0.1", settings["grpc_port"])
    await server.wait_for_termination()


# ---------------------------------------------------------------- measuring


async def latencies(publish: Publish, count: int) -> list[float]:
    for _ in range(20):  # warm up connections and caches
        await publish()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await publish()
        samples.append(time.perf_counter() - start)
    return samples


async def throughput(publish: Publish, count: int, concurrency: int) -> float:
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await publish()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - start)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


# ---------------------------------------------------------------- the four ways, per kind


def raw_dq(address: str, tube: str) -> Publish:
    host, port = address.rsplit(":", 1)
    client = greenstalk.Client((host, int(port)), use=tube, encoding=None)
    lock = asyncio.Lock()  # one connection: the raw client is not safe to share across threads

    async def put() -> None:
        async with lock:
            await asyncio.to_thread(client.put, BODY, delay=DELAY_S)

    return put


def raw_kq(bootstrap: str, topic: str) -> tuple[Publish, Producer]:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    loop = asyncio.get_running_loop()
    stop = False

    def poll() -> None:
        while not stop:
            producer.poll(0.05)

    poller = loop.run_in_executor(None, poll)

    async def push() -> None:
        done: asyncio.Future[None] = loop.create_future()

        def report(err: Any, _msg: Any) -> None:
            loop.call_soon_threadsafe(done.set_exception if err else done.set_result, err or None)

        producer.produce(topic, BODY, on_delivery=report)
        await done

    def close() -> None:
        nonlocal stop
        stop = True

    push.close = close  # type: ignore[attr-defined]
    push.poller = poller  # type: ignore[attr-defined]
    return push, producer


Row = tuple[str, str, float, float, float, float, float]


async def run(count: int, concurrency: int, rate_count: int) -> list[Row]:
    work = Path(tempfile.mkdtemp(prefix="publish-bench-"))
    cluster, redis, broker = (
        BeanstalkdCluster(work / "bs", 3),
        RedisServer(work / "redis"),
        Tansu(work / "tansu"),
    )
    child: subprocess.Popen[bytes] | None = None
    rows: list[tuple[str, str, float, float, float]] = []
    cpus: list[tuple[float, float]] = []  # per way: this process's, the publish server's CPU ms / msg
    try:
        cluster.start()
        redis.start()
        broker.start()
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})  # kept alive until the results
        for future in admin.create_topics([NewTopic(t, 3, 1) for t in ("raw", "engine", "sidecar")]).values():
            future.result(15)
        http_port, grpc_port = free_port(), free_port()
        settings = {
            "nodes": cluster.addresses,
            "tube": "sidecar",
            "redis": redis.url,
            "bootstrap": broker.bootstrap,
            "topic": "sidecar",
            "http_port": http_port,
            "grpc_port": grpc_port,
        }
        child = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(settings)])  # noqa: ASYNC220
        wait_for_port(http_port, 30, child)
        wait_for_port(grpc_port, 30, child)

        producer = DelayProducer(cluster.addresses, "engine", redis.url, name="engine")
        pusher = KafkaPusher([broker.bootstrap], "engine", name="engine")
        raw_push, raw_producer = raw_kq(broker.bootstrap, "raw")
        session = ClientSession(f"http://127.0.0.1:{http_port}")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = queue_pb2_grpc.PublisherStub(channel)  # type: ignore[no-untyped-call]
        delay = Duration(seconds=DELAY_S)

        async def http_delay() -> None:
            async with session.post(f"/v1/delayqueues/bench/jobs?delay={DELAY_S}s", data=BODY) as response:
                assert response.status == 201, await response.text()
                await response.read()

        # The same requests from a lean client (the sidecar's own keep-alive client, requests
        # pre-built): what the publish API costs without aiohttp's client on the same cores.
        lean = KeepAliveClient("127.0.0.1", http_port)
        head = f"Host: 127.0.0.1:{http_port}\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
        lean_delay_request = (
            f"POST /v1/delayqueues/bench/jobs?delay={DELAY_S}s HTTP/1.1\r\n".encode() + head + BODY
        )
        lean_push_request = b"POST /v1/kafkaqueues/bench/messages HTTP/1.1\r\n" + head + BODY

        def lean_post(request: bytes) -> Publish:
            async def post() -> None:
                answer = await lean.post(request, 30)
                assert answer.status == 201, answer

            return post

        async def http_push() -> None:
            async with session.post("/v1/kafkaqueues/bench/messages", data=BODY) as response:
                assert response.status == 201, await response.text()
                await response.read()

        ways: dict[str, list[tuple[str, Publish]]] = {
            "dq delay": [
                ("raw client (1 node)", raw_dq(cluster.addresses[0], "raw")),
                ("engine", lambda: producer.delay(BODY, DELAY_S)),
                ("sidecar http", http_delay),
                ("sidecar http (lean)", lean_post(lean_delay_request)),
                (
                    "sidecar grpc",
                    lambda: stub.Delay(queue_pb2.DelayRequest(queue="bench", body=BODY, delay=delay)),
                ),
            ],
            "kq push": [
                ("raw client", raw_push),
                ("engine", lambda: pusher.push(BODY)),
                ("sidecar http", http_push),
                ("sidecar http (lean)", lean_post(lean_push_request)),
                ("sidecar grpc", lambda: stub.Push(queue_pb2.PushRequest(queue="bench", body=BODY))),
            ],
        }
        for kind, entries in ways.items():
            for name, publish in entries:
                samples = await latencies(publish, count)
                cpu0, server0 = self_cpu(), proc_cpu(child.pid)
                rate = await throughput(publish, rate_count, concurrency)
                cpu, server = self_cpu() - cpu0, proc_cpu(child.pid) - server0
                rows.append((kind, name, percentile(samples, 0.5), percentile(samples, 0.99), rate))
                cpus.append((cpu / rate_count * 1000, server / rate_count * 1000))

        raw_push.close()  # type: ignore[attr-defined]
        await raw_push.poller  # type: ignore[attr-defined]
        raw_producer.flush(5)
        await session.close()
        await lean.close()
        await channel.close()
        await producer.close()
        await pusher.close()
    finally:
        if child is not None:
            child.terminate()
            child.wait(10)
        broker.stop()
        redis.stop()
        cluster.stop()
    return [(*row, *cpu) for row, cpu in zip(rows, cpus, strict=True)]


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def print_table(rows: list[Row], count: int, concurrency: int, rate_count: int) -> None:
    engine = {kind: (p50, p99, rate) for kind, name, p50, p99, rate, _, _ in rows if name == "engine"}
    print(f"\npublish: {count} one at a time (latency), {rate_count} with {concurrency} in flight (rate)")
    header = (
        f"{'kind':<9} {'way':<20} {'p50 ms':>8} {'p99 ms':>8} {'msg/s':>8}   "
        f"{'p50 x':>6} {'p99 x':>6} {'rate x':>6}   {'client CPU':>10} {'server CPU':>10}"
    )
    print(header)
    print("-" * len(header))
    for kind, name, p50, p99, rate, client_cpu, server_cpu in rows:
        base = engine[kind]
        print(
            f"{kind:<9} {name:<20} {p50:8.2f} {p99:8.2f} {rate:8.0f}   "
            f"{p50 / base[0]:6.2f} {p99 / base[1]:6.2f} {rate / base[2]:6.2f}   "
            f"{client_cpu:10.3f} {server_cpu:10.3f}"
        )
    print("(x: ratio to the engine called in-process; latency above 1 is slower, rate below 1 is slower)")
    print(
        "(CPU: ms per message in the rate run; client = this process (the engine's own work for "
        "raw and engine), server = the publish API's process (idle for raw and engine))"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=500, help="publishes per way for latency")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight for the rate")
    # The rate run was once 2 x --count (1,000): the engine pushed that in 60 ms, so a single
    # scheduler hiccup on the shared cores moved the ratio from 0.18 to 0.41 between runs.
    parser.add_argument("--rate-count", type=int, default=5000, help="publishes per way for the rate")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        from queue_sidecar.main import new_event_loop  # noqa: PLC0415

        # The sidecar's own event loop (uvloop where installed), as the real publish API runs.
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve(json.loads(args.serve)))
        return
    rows = asyncio.run(run(args.count, args.concurrency, args.rate_count))
    print_table(rows, args.count, args.concurrency, args.rate_count)


if __name__ == "__main__":
    main()
