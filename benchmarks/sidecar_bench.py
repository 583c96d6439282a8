"""What the sidecar costs: delivery rate, added latency and CPU, against the engine in-process.

Run: ``.venv/bin/python benchmarks/sidecar_bench.py [--kafka-messages N] [--dq-jobs N] [--modes M]``

Same servers, same run, several ways of handling each message:
- ``in-process``: the engine (KafkaConsumer / DelayConsumer) calls a Python handler directly;
- ``sidecar+http``: the real ``queue-sidecar`` process delivers to an HTTP app on loopback;
- ``sidecar+grpc``: the same, to a gRPC app;
- ``sidecar+http+bulk``, ``sidecar+grpc+bulk``: the same with bulk delivery (a JSON array, or
  ``HandleBatch``), the apps answering one result per message.

``--profile DIR`` runs each sidecar under cProfile and leaves ``<queue>.prof`` files in DIR
(CPU figures then include the profiler's own cost).

Measured: delivery rate with a backlog (messages/s between the first and last arrival; the
backlog is written before the consumer or sidecar starts, so the rate is the consumer's even
when it is faster than the producer), end-to-end latency at light load (producer send ->
handler, p50 and p99; "added" is the difference to in-process), and the sidecar's CPU seconds
per 1,000 messages from /proc/<pid>/stat from its readiness on (which is also its vCPU at 1,000
messages/s). The in-process CPU is this process's own from the consumer's start.
Dapr's published sidecar figures for comparison: +1.2 to 1.9 ms at p99, 0.2 to 0.5 vCPU per
1,000 messages/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import yaml  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from harness.servers import BeanstalkdCluster, RedisServer, Tansu, free_port, wait_for_port  # noqa: E402
from queue_engine.dq import DelayConsumer, DelayJob, DelayProducer  # noqa: E402
from queue_engine.kq import KafkaConsumer, KafkaMessage  # noqa: E402
from queue_engine.policy import DeliveryPolicy, Outcome  # noqa: E402

SIDECAR_BIN = Path(sys.executable).parent / "queue-sidecar"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONCURRENCY = 8
DEFAULT_CONCURRENCY = CONCURRENCY  # app.maxConcurrency's default
APP_CALL = "queue_sidecar_app_call_seconds"
# Light load for the latency runs: dq does more work per job (replicas, Redis), so it gets more room.
PACE = {"kafka": 0.005, "delay": 0.02}
PAD = b"x" * 64
BULK = {"maxMessages": 100, "maxWait": "10ms"}
MODES = ("http", "grpc", "http+bulk", "grpc+bulk")


# ---------------------------------------------------------------- the app (a child process)


class Recorder:
    """Arrival time and producer-to-handler latency per message, flushed to a file in batches."""

    def __init__(self, out: Path | None) -> None:
        self.rows: list[tuple[float, float]] = []
        self._out = out.open("a") if out else None

    def note(self, body: bytes) -> None:
        now = time.time()
        sent = float(body.split(b"|", 1)[0])
        self.rows.append((now, now - sent))
        if self._out is not None:
            self._out.write(f"{now:.6f} {now - sent:.6f}\n")

    def flush(self) -> None:
        if self._out is not None:
            self._out.flush()


class LeanHttpApp(asyncio.Protocol):
    """The cheapest HTTP/1.1 app Python can be (httptools, no framework): shows what the sidecar
    alone allows when the app costs little. Answers 200, or for a batch one result per message."""

    def __init__(self, recorder: Recorder) -> None:
        import httptools  # noqa: PLC0415

        self.recorder = recorder
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.body: list[bytes] = []
        self.batch = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-batch-size":
            self.batch = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        answer = b""
        if self.batch:
            results = []
            for message in json.loads(body):
                self.recorder.note(message["body"].encode())
                results.append({"id": message["id"], "status": "SUCCESS"})
            answer = json.dumps({"results": results}).encode()
            self.batch = False
        else:
            self.recorder.note(body)
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))


async def serve_app(protocol: str, port: int, out: Path) -> None:
    recorder = Recorder(out)

    async def flusher() -> None:
        while True:
            await asyncio.sleep(0.1)
            recorder.flush()

    flushing = asyncio.create_task(flusher())
    if protocol == "lean-http":
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: LeanHttpApp(recorder), "127.0.0.1", port)
        await asyncio.Event().wait()
    elif protocol == "http":
        from aiohttp import web  # noqa: PLC0415

        async def handle(request: web.Request) -> web.Response:
            if request.headers.get("X-Batch-Size"):
                # Bulk delivery: a JSON array in, one result per message out (what a real app does).
                results = []
                for message in json.loads(await request.read()):
                    recorder.note(message["body"].encode())
                    results.append({"id": message["id"], "status": "SUCCESS"})
                return web.json_response({"results": results})
            recorder.note(await request.read())
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/messages", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()
    else:
        import grpc  # noqa: PLC0415

        from queue_sidecar.proto import queue_pb2, queue_pb2_grpc  # noqa: PLC0415

        class Handler(queue_pb2_grpc.MessageHandlerServicer):
            async def Handle(self, request: Any, context: Any) -> Any:
                recorder.note(request.body)
                return queue_pb2.Ack(status=queue_pb2.Ack.SUCCESS)

            async def HandleStream(self, requests: Any, context: Any) -> Any:
                async for request in requests:
                    recorder.note(request.body)
                    yield queue_pb2.Ack(id=request.id, status=queue_pb2.Ack.SUCCESS)

            async def HandleBatch(self, request: Any, context: Any) -> Any:
                acks = []
                for message in request.messages:
                    recorder.note(message.body)
                    acks.append(queue_pb2.Ack(id=message.id, status=queue_pb2.Ack.SUCCESS))
                return queue_pb2.AckBatch(acks=acks)

        server = grpc.aio.server()
        queue_pb2_grpc.add_MessageHandlerServicer_to_server(Handler(), server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()
    flushing.cancel()


# ---------------------------------------------------------------- measuring


@dataclass
class Result:
    mode: str
    kind: str
    rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_per_1000: float = 0.0
    app_cpu_per_1000: float = 0.0  # the test app's own CPU (it shares the machine's cores)
    call_p50_ms: float = 0.0  # sidecar -> app -> answer, from queue_sidecar_app_call_seconds
    call_p99_ms: float = 0.0
    notes: list[str] = field(default_factory=list)


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def histogram_quantile(metrics_text: str, metric: str, queue: str, q: float) -> float:
    """Seconds at quantile ``q`` of histogram ``metric`` for ``queue`` (interpolated in its bucket)."""
    buckets: list[tuple[float, float]] = []
    for line in metrics_text.splitlines():
        if line.startswith(f"{metric}_bucket{{") and f'queue="{queue}"' in line:
            labels, value = line.rsplit(" ", 1)
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(value)))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    total, rank = buckets[-1][1], q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            share = (rank - lower_count) / max(count - lower_count, 1e-9)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return buckets[-1][0] if total else float("nan")


def body(i: int) -> bytes:
    return f"{time.time():.6f}|{i}|".encode() + PAD


def read_rows(path: Path) -> list[tuple[float, float]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            rows.append((float(parts[0]), float(parts[1])))
    return rows


class RowCount:
    """Rows the app wrote so far, counted from the new bytes only.

    Parsing the whole file every 50 ms (as this bench once did) cost the bench process itself
    up to half a core at 20,000 rows, on the cores the sidecar and the app share; the
    in-process run paid nothing of the kind.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.count = 0

    def __call__(self) -> int:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
            # Only whole lines: a line being written counts at the next look.
            end = data.rfind(b"\n") + 1
            self.count += data.count(b"\n", 0, end)
            self.offset += end
        return self.count


async def wait_rows(rows: Callable[[], int], count: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while rows() < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {rows()} of {count} messages arrived in {limit}s")
        await asyncio.sleep(0.05)


class Servers:
    def __init__(self, workdir: Path) -> None:
        self.cluster = BeanstalkdCluster(workdir / "beanstalkd", 3, binlog=False)
        self.redis = RedisServer(workdir / "redis")
        self.kafka = Tansu(workdir / "tansu")

    def start(self) -> None:
        self.cluster.start()
        self.redis.start()
        self.kafka.start()

    def stop(self) -> None:
        self.kafka.stop()
        self.redis.stop()
        self.cluster.stop()


# Each Target sends a batch of messages into a fresh queue and knows how to consume it.
class Target:
    kind = ""

    def __init__(self, servers: Servers, name: str) -> None:
        self.servers = servers
        self.name = name

    def queue_config(self) -> dict[str, Any]:
        raise NotImplementedError

    async def send(self, count: int, pace: float = 0.0) -> None:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "bootstrap": self.servers.kafka.bootstrap,
            "nodes": self.servers.cluster.addresses,
            "redis": self.servers.redis.url,
        }

    async def send_from_child(self, count: int, pace: float = 0.0) -> None:
        """Produce from a child process, so that producing costs none of the CPU measured here."""
        spec = json.dumps({**self.spec(), "count": count, "pace": pace})
        proc = await asyncio.create_subprocess_exec(sys.executable, __file__, "--produce", spec)
        if await proc.wait() != 0:
            raise RuntimeError("producer failed")

    def consumer(self, handler: Callable[[Any], Awaitable[Outcome]], concurrency: int) -> Any:
        raise NotImplementedError


POLICY = {"maxAttempts": 3, "backoff": {"initial": "100ms", "max": "1s"}, "timeout": "10s"}


class KafkaTarget(Target):
    kind = "kafka"

    def __init__(self, servers: Servers, name: str, create: bool = True) -> None:
        super().__init__(servers, name)
        if not create:
            return
        admin = AdminClient({"bootstrap.servers": servers.kafka.bootstrap})
        for future in admin.create_topics(
            [NewTopic(name, num_partitions=3, replication_factor=1), NewTopic(f"{name}.dlq", 1, 1)]
        ).values():
            future.result(10)

    def queue_config(self) -> dict[str, Any]:
        return {
            "kind": "KafkaQueue",
            "name": self.name,
            "brokers": [self.servers.kafka.bootstrap],
            "topic": self.name,
            "group": f"{self.name}-g",
            "offset": "first",
            "delivery": POLICY,
        }

    async def send(self, count: int, pace: float = 0.0) -> None:
        producer = Producer(
            {"bootstrap.servers": self.servers.kafka.bootstrap, "linger.ms": 0 if pace else 5}
        )
        for i in range(count):
            producer.produce(self.name, body(i))
            producer.poll(0)
            if pace:
                producer.flush(1)
                await asyncio.sleep(pace)
        producer.flush(30)

    def consumer(self, handler: Callable[[Any], Awaitable[Outcome]], concurrency: int) -> Any:
        return KafkaConsumer(
            [self.servers.kafka.bootstrap],
            self.name,
            f"{self.name}-g",
            handler,
            offset="first",
            concurrency=concurrency,
            policy=DeliveryPolicy.from_mapping(POLICY),
            name=self.name,
        )


class DelayTarget(Target):
    kind = "delay"

    def queue_config(self) -> dict[str, Any]:
        return {
            "kind": "DelayQueue",
            "name": self.name,
            "nodes": self.servers.cluster.addresses,
            "tube": self.name,
            "redis": {"url": self.servers.redis.url},
            "delivery": POLICY,
        }

    async def send(self, count: int, pace: float = 0.0) -> None:
        # Backlog: all due at one instant after they are all written, so consumption is measured
        # alone. Paced: one due every ``pace`` seconds, each body carrying its due time, so the
        # handler's clock minus it is the job's lateness.
        first = time.time() + 1 + count / 200
        due_all = datetime.fromtimestamp(first, UTC)

        def job(i: int) -> tuple[bytes, datetime]:
            if not pace:
                return body(i), due_all
            due = first + i * pace
            return f"{due:.6f}|{i}|".encode() + PAD, datetime.fromtimestamp(due, UTC)

        async with DelayProducer(
            self.servers.cluster.addresses, self.name, self.servers.redis.url
        ) as producer:
            for start in range(0, count, 50):
                await asyncio.gather(*(producer.at(*job(i)) for i in range(start, min(count, start + 50))))

    def consumer(self, handler: Callable[[Any], Awaitable[Outcome]], concurrency: int) -> Any:
        return DelayConsumer(
            self.servers.cluster.addresses,
            self.name,
            self.servers.redis.url,
            handler,
            policy=DeliveryPolicy.from_mapping(POLICY),
            concurrency=concurrency,
            name=self.name,
        )


def new_target(kind: str, servers: Servers, mode: str) -> Target:
    name = f"bench-{kind}-{mode.replace('+', '-')}-{uuid.uuid4().hex[:6]}"
    return KafkaTarget(servers, name) if kind == "kafka" else DelayTarget(servers, name)


async def run_in_process(kind: str, servers: Servers, count: int, latency_count: int) -> Result:
    result = Result("in-process", kind)
    recorder = Recorder(None)

    async def handle(message: KafkaMessage | DelayJob) -> Outcome:
        recorder.note(message.value if isinstance(message, KafkaMessage) else message.body)
        return Outcome.success()

    async def phase(pace: float, expect: int, concurrency: int) -> tuple[list[tuple[float, float]], float]:
        recorder.rows.clear()
        target = new_target(kind, servers, "inproc")
        if not pace:
            await target.send_from_child(expect)  # a real backlog: written before the consumer starts
        consumer = target.consumer(handle, concurrency)
        cpu0 = self_cpu()
        running = asyncio.create_task(consumer.run())
        await wait_healthy(consumer)
        if pace:
            await target.send_from_child(1)  # warm-up: the group has assigned partitions once it arrives
            await wait_rows(lambda: len(recorder.rows), 1, 60)
            recorder.rows.clear()
            cpu0 = self_cpu()
            await target.send_from_child(expect, pace)
        await wait_rows(lambda: len(recorder.rows), expect, 120)
        cpu = self_cpu() - cpu0
        await consumer.stop(5)
        await asyncio.gather(running, return_exceptions=True)
        return list(recorder.rows), cpu

    rows, cpu = await phase(0.0, count, CONCURRENCY)
    first, last = min(r[0] for r in rows), max(r[0] for r in rows)
    result.rate = count / max(last - first, 1e-6)
    result.cpu_per_1000 = cpu / count * 1000
    rows, _ = await phase(PACE[kind], latency_count, 1)
    latencies = [r[1] * 1000 for r in rows]
    result.p50_ms, result.p99_ms = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return result


async def wait_healthy(consumer: Any, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while True:
        ok, why = consumer.health()
        if ok:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"consumer not healthy: {why}")
        await asyncio.sleep(0.1)


async def run_sidecar(  # noqa: PLR0917
    mode: str,
    kind: str,
    servers: Servers,
    count: int,
    latency_count: int,
    work: Path,
    profile: Path | None,
    *,
    lean_app: bool = False,
) -> Result:
    """``mode``: ``http`` or ``grpc``, with ``+bulk`` for bulk delivery."""
    protocol, _, bulk = mode.partition("+")
    app_server = "lean-http" if lean_app and protocol == "http" else protocol
    result = Result(f"sidecar+{mode}" + (" (lean app)" if app_server == "lean-http" else ""), kind)
    calls: list[tuple[float, float]] = []
    app_cpus: list[float] = []
    collections: list[list[float]] = []  # the sidecar's cyclic-GC runs per generation, paced run

    async def phase(pace: float, expect: int, concurrency: int) -> tuple[list[tuple[float, float]], float]:
        target = new_target(kind, servers, f"sidecar+{mode}")
        run_dir = work / target.name
        run_dir.mkdir()
        app_port, health_port = free_port(), free_port()
        out = run_dir / "rows.txt"
        app = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", app_server, "--port", str(app_port), "--out", str(out)
        )
        queue_config = target.queue_config()
        if bulk:
            queue_config["delivery"] = {**queue_config["delivery"], "bulk": BULK}
        config = {
            "app": {"protocol": protocol, "port": app_port, "maxConcurrency": concurrency, "timeout": "10s"},
            "publish": {"port": free_port()},
            "health": {"port": health_port},
            "queues": [queue_config],
            "logLevel": "warning",
        }
        (run_dir / "sidecar.yaml").write_text(yaml.safe_dump(config))
        log = (run_dir / "sidecar.log").open("w")
        argv = [str(SIDECAR_BIN), "--config", str(run_dir / "sidecar.yaml")]
        if profile is not None:
            argv = [sys.executable, "-m", "cProfile", "-o", str(profile / f"{target.name}.prof"), *argv]
        if not pace:
            await target.send_from_child(expect)  # a real backlog: written before the sidecar starts
        sidecar = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            rows = RowCount(out)
            await asyncio.to_thread(wait_for_port, app_port, 20)
            await wait_ready(health_port, 60)
            # From readiness: the start's imports are not a message's cost (the group joins
            # after it, so at most a few backlog messages come before this).
            cpu0, app_cpu0 = proc_cpu(sidecar.pid), proc_cpu(app.pid)
            warm_up = 0
            if pace:
                await target.send_from_child(1)  # warm-up: the group has assigned partitions once it arrives
                await wait_rows(rows, 1, 60)
                warm_up = 1
                cpu0, app_cpu0 = proc_cpu(sidecar.pid), proc_cpu(app.pid)
                gc0 = gc_collections(await get_text(f"http://127.0.0.1:{health_port}/metrics"))
                await target.send_from_child(expect, pace)
            await wait_rows(rows, expect + warm_up, 120)
            cpu = proc_cpu(sidecar.pid) - cpu0
            app_cpus.append(proc_cpu(app.pid) - app_cpu0)
            text = await get_text(f"http://127.0.0.1:{health_port}/metrics")
            if pace:
                collections.append([b - a for a, b in zip(gc0, gc_collections(text), strict=True)])
            calls.append(
                (
                    histogram_quantile(text, APP_CALL, target.name, 0.5) * 1000,
                    histogram_quantile(text, APP_CALL, target.name, 0.99) * 1000,
                )
            )
            return read_rows(out)[warm_up:], cpu
        except Exception:
            print(f"sidecar log ({run_dir / 'sidecar.log'}):", file=sys.stderr)
            print((run_dir / "sidecar.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            for proc in (sidecar, app):
                if proc.returncode is not None:
                    continue
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 25)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            log.close()

    rows, cpu = await phase(0.0, count, CONCURRENCY)
    first, last = min(r[0] for r in rows), max(r[0] for r in rows)
    result.rate = count / max(last - first, 1e-6)
    result.cpu_per_1000 = cpu / count * 1000
    result.app_cpu_per_1000 = app_cpus[0] / count * 1000
    rows, _ = await phase(PACE[kind], latency_count, 1)
    latencies = [r[1] * 1000 for r in rows]
    result.p50_ms, result.p99_ms = percentile(latencies, 0.5), percentile(latencies, 0.99)
    result.call_p50_ms, result.call_p99_ms = calls[-1]
    if collections:
        result.notes.append(
            "GC runs in the paced run, generations 0/1/2: {:.0f}/{:.0f}/{:.0f}".format(*collections[0])
        )
    return result


def gc_collections(metrics_text: str) -> list[float]:
    """The process's cyclic-GC runs so far, per generation (prometheus_client's GC collector)."""
    counts = [0.0, 0.0, 0.0]
    for line in metrics_text.splitlines():
        if line.startswith('python_gc_collections_total{generation="'):
            labels, value = line.rsplit(" ", 1)
            counts[int(labels.split('"')[1])] = float(value)
    return counts


async def get_text(url: str) -> str:
    import aiohttp  # noqa: PLC0415

    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


async def wait_ready(port: int, limit: float) -> None:
    import aiohttp  # noqa: PLC0415

    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"sidecar on health port {port} not ready in {limit}s")


def table(results: list[Result]) -> str:
    lines = [
        "| queue | mode | msgs/s | ratio | e2e p50 ms | e2e p99 ms | added p50 ms | added p99 ms "
        "| CPU s / 1000 msgs | app CPU s / 1000 msgs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r.kind: r for r in results if r.mode == "in-process"}
    for r in results:
        b = base[r.kind]
        lines.append(
            f"| {r.kind} | {r.mode} | {r.rate:,.0f} | {r.rate / b.rate:.2f} | "
            + f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | "
            + (f"{r.call_p50_ms:.2f} | {r.call_p99_ms:.2f} | " if r.mode != "in-process" else "- | - | ")
            + f"{r.cpu_per_1000:.3f} | "
            + (f"{r.app_cpu_per_1000:.3f} |" if r.mode != "in-process" else "- |")
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        work = Path(tmp)
        servers = Servers(work / "servers")
        servers.start()
        results: list[Result] = []
        try:
            for kind, count in (("kafka", args.kafka_messages), ("delay", args.dq_jobs)):
                if count <= 0:
                    continue
                results.append(await run_in_process(kind, servers, count, args.latency_messages))
                for mode in args.modes.split(","):
                    results.append(
                        await run_sidecar(
                            mode,
                            kind,
                            servers,
                            count,
                            args.latency_messages,
                            work,
                            args.profile,
                            lean_app=args.lean_app,
                        )
                    )
                print(f"done: {kind}", file=sys.stderr)
        finally:
            servers.stop()
    print(
        f"\nsidecar benchmark: backlog of {args.kafka_messages} Kafka messages (3 partitions) and "
        f"{args.dq_jobs} dq jobs (3 beanstalkd nodes + Redis), concurrency {CONCURRENCY}; then "
        f"{args.latency_messages} of each paced (Kafka 5 ms apart, dq 20 ms), one at a time; "
        f"+bulk: bulk delivery {BULK}; {os.cpu_count()} CPUs\n"
    )
    print(table(results))
    for r in results:
        for note in r.notes:
            print(f"{r.kind} {r.mode}: {note}")
    print(
        "\nmsgs/s: backlog run, first to last arrival; ratio = over in-process.\n"
        "e2e: paced run; Kafka: producer send -> handler (mostly the broker's fetch cycle, noisy); "
        "dq: lateness, due time -> handler.\n"
        "added: what the sidecar puts between the engine and the handler, i.e. sending the "
        "attempt to a trivial app and reading its answer (queue_sidecar_app_call_seconds, "
        "interpolated in its buckets), paced run.\n"
        "CPU s / 1000 msgs: backlog run; = vCPU at 1000 msgs/s; the sidecar process alone, or "
        "for in-process this process (consumer only, producing runs in a child).\n"
        "app CPU s / 1000 msgs: backlog run; the trivial test app's own CPU (Python, on the same "
        "cores as the sidecar and the broker).\n"
        "Dapr's published sidecar figures: +1.2-1.9 ms at p99, 0.2-0.5 vCPU per 1000 msgs/s."
    )


async def transport_only(protocols: list[str], count: int, concurrency: int) -> None:
    """The sidecar's delivery transport alone (``HttpTransport`` / ``GrpcTransport.send``, no engine,
    no broker) against the bench's app in a child process, ``concurrency`` calls in flight, on
    the sidecar's event loop: its CPU per message resolves changes too small for the full runs."""
    from queue_sidecar.delivery.envelope import Envelope  # noqa: PLC0415
    from queue_sidecar.delivery.grpc import GrpcTransport  # noqa: PLC0415
    from queue_sidecar.delivery.http import HttpTransport  # noqa: PLC0415

    print("| app | msgs/s | sidecar CPU ms / msg | app CPU ms / msg |\n|---|---:|---:|---:|")
    for protocol in protocols:
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="transport-bench-") as tmp:
            app = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, __file__, "--serve", protocol, "--port", str(port), "--out", f"{tmp}/rows"]
            )
            try:
                await asyncio.to_thread(wait_for_port, port, 30, app)
                transport: Any = (
                    GrpcTransport("127.0.0.1", port)
                    if protocol == "grpc"
                    else HttpTransport("127.0.0.1", port, "/messages", concurrency)
                )
                body = b"%f|" % time.time() + PAD
                envelopes = [
                    Envelope(
                        kind="kafka", queue="q", id=f"q/0/{i}", attempt=1, body=body, partition=0, offset=i
                    )
                    for i in range(count)
                ]

                async def deliver(transport: Any, left: list[Envelope]) -> None:
                    while left:
                        await transport.send(left.pop(), 5.0)

                warm_up = envelopes[: count // 4]
                await asyncio.gather(*(deliver(transport, warm_up) for _ in range(concurrency)))
                left = list(envelopes)
                cpu0, app_cpu0, start = self_cpu(), proc_cpu(app.pid), time.perf_counter()
                await asyncio.gather(*(deliver(transport, left) for _ in range(concurrency)))
                elapsed, cpu, app_cpu = (
                    time.perf_counter() - start,
                    self_cpu() - cpu0,
                    proc_cpu(app.pid) - app_cpu0,
                )
                await transport.close()
            finally:
                app.kill()
                app.wait()
        print(
            f"| {protocol} | {count / elapsed:,.0f} | {cpu / count * 1000:.4f} "
            f"| {app_cpu / count * 1000:.4f} |"
        )


async def produce(spec: dict[str, Any]) -> None:
    class Given:  # just what the targets' send() reads
        cluster = type("C", (), {"addresses": spec["nodes"]})()
        redis = type("R", (), {"url": spec["redis"]})()
        kafka = type("K", (), {"bootstrap": spec["bootstrap"]})()

    servers: Any = Given()
    target: Target = (
        KafkaTarget(servers, spec["name"], create=False)
        if spec["kind"] == "kafka"
        else DelayTarget(servers, spec["name"])
    )
    await target.send(spec["count"], spec["pace"])


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kafka-messages", type=int, default=3000)
    parser.add_argument("--dq-jobs", type=int, default=600)
    parser.add_argument("--latency-messages", type=int, default=400)
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated sidecar modes (default: {','.join(MODES)})"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"backlog runs: handler calls in flight, app.maxConcurrency (default: {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument("--profile", type=Path, help="write a cProfile file per sidecar run here")
    parser.add_argument(
        "--lean-app",
        action="store_true",
        help="HTTP modes: a bare httptools app instead of aiohttp's server (the app shares the cores)",
    )
    parser.add_argument(
        "--transport-only",
        metavar="APPS",
        help="instead: the delivery transport alone against these apps (e.g. http,grpc), "
        "--kafka-messages messages, --concurrency in flight",
    )
    parser.add_argument("--serve", choices=["http", "lean-http", "grpc"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--produce", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.produce:
        asyncio.run(produce(json.loads(args.produce)))
    elif args.serve:
        asyncio.run(serve_app(args.serve, args.port, args.out))
    elif args.transport_only:
        from queue_sidecar.main import new_event_loop  # noqa: PLC0415

        # The sidecar's own event loop (uvloop where installed), as the sidecar runs.
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(transport_only(args.transport_only.split(","), args.kafka_messages, args.concurrency))
    else:
        global CONCURRENCY  # noqa: PLW0603
        CONCURRENCY = args.concurrency
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
