"""The publish API as the real ``queue-sidecar`` process serves it: loopback only, HTTP and gRPC.

No app runs: the sidecar serves publishing before the app is up (it only delays consuming).
"""

from __future__ import annotations

import contextlib
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from harness.servers import BeanstalkdCluster, ManagedProcess, RedisServer, Tansu, free_port, wait_for_port
from queue_sidecar.proto import queue_pb2, queue_pb2_grpc

SIDECAR = str(Path(sys.executable).parent / "queue-sidecar")


class Sidecar(ManagedProcess):
    name = "queue-sidecar"

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        super().__init__(workdir, config["publish"]["port"])
        self.config_path = workdir / "sidecar.yaml"
        self.config_path.write_text(json.dumps(config))

    def argv(self) -> Sequence[str]:
        return [SIDECAR, "--config", str(self.config_path)]


@pytest.fixture
def sidecar(
    tmp_path: Path,
    module_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    kafka_broker: Tansu,
    unique: str,
) -> Iterator[tuple[str, int]]:
    grpc_port = free_port()
    config = {
        "app": {"port": free_port()},  # nothing listens: publishing must not need the app
        "publish": {"port": free_port(), "grpcPort": grpc_port},
        "health": {"port": free_port()},
        "queues": [
            {
                "kind": "DelayQueue",
                "name": "reminders",
                "nodes": module_cluster.addresses,
                "tube": unique,
                "redis": {"url": shared_redis.url},
                "maxJobBytes": 1024,
            },
            {
                "kind": "KafkaQueue",
                "name": "orders",
                "brokers": [kafka_broker.bootstrap],
                "topic": unique,
                "librdkafka": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
            },
        ],
    }
    process = Sidecar(tmp_path / "sidecar", config)
    process.start(timeout=60)
    wait_for_port(grpc_port, 30)  # start() waits for the HTTP port; gRPC may come up a moment later
    yield f"http://127.0.0.1:{process.port}", grpc_port
    process.stop()


def _call(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body if method != "GET" else None, method=method)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_http_round_trips_and_errors(sidecar: tuple[str, int]) -> None:
    url, _ = sidecar
    status, created = _call("POST", f"{url}/v1/delayqueues/reminders/jobs?delay=1m", b"x")
    assert status == 201, created
    assert _call("DELETE", f"{url}/v1/delayqueues/reminders/jobs/{created['id']}")[0] == 204
    status, pushed = _call("POST", f"{url}/v1/kafkaqueues/orders/messages", b"m", {"X-Kafka-Key": "k"})
    assert status == 201 and {"partition", "offset"} <= set(pushed)

    status, body = _call("POST", f"{url}/v1/delayqueues/nope/jobs?delay=1s", b"x")
    assert status == 404 and "reminders" in body["error"]
    status, body = _call("POST", f"{url}/v1/delayqueues/reminders/jobs?delay=later", b"x")
    assert status == 400 and "500ms" in body["error"]
    status, body = _call("POST", f"{url}/v1/delayqueues/reminders/jobs?delay=1s", b"x" * 2000)
    assert status == 413 and "at most" in body["error"]
    status, body = _call("GET", f"{url}/v1/kafkaqueues/orders/messages")
    assert status == 405 and "POST" in body["error"]


async def test_grpc_publisher(sidecar: tuple[str, int]) -> None:
    _, port = sidecar
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = queue_pb2_grpc.PublisherStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.Push(queue_pb2.PushRequest(queue="orders", body=b"g"))
        assert reply.offset >= 0
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.Delay(queue_pb2.DelayRequest(queue="orders", body=b"g"))
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the IPv4 and IPv6 sockets listening on ``port``, from /proc/net."""
    addresses: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                    addresses.add(address)
    return addresses


# 127.0.0.1, ::1 and ::ffff:127.0.0.1 as the kernel prints them in /proc/net/tcp and tcp6.
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def test_publish_ports_are_loopback_only(sidecar: tuple[str, int]) -> None:
    url, grpc_port = sidecar
    http_port = int(url.rsplit(":", 1)[1])
    for port in (http_port, grpc_port):
        bound = _listening_addresses(port)
        assert bound, f"nothing listens on {port}"
        assert bound <= LOOPBACK, f"port {port} listens on {bound}, not only on loopback"
