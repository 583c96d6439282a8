"""The publish API served on real loopback ports, over real producers on real servers.

A module shares one beanstalkd cluster (each test has its own tube via ``unique``); tests that
stop servers take their own from the root conftest's fixtures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import greenstalk
import grpc
import pytest
from aiohttp import ClientSession

from harness.servers import BeanstalkdCluster, RedisServer, Tansu, free_port
from queue_engine.dq import DelayProducer
from queue_engine.kq import KafkaPusher
from queue_sidecar.proto import queue_pb2_grpc
from queue_sidecar.publish.delay_jobs import DelayJobs
from queue_sidecar.publish.grpc import start_server
from queue_sidecar.publish.http import serve
from queue_sidecar.publish.http_server import LeanHttpServer
from queue_sidecar.publish.targets import PublishTargets

MAX_JOB_BYTES = 1024
# A broker that went away fails a push in seconds instead of the 30 s default.
FAST_FAILING_PUSH = {"message.timeout.ms": 3000, "socket.connection.setup.timeout.ms": 1000}


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BeanstalkdCluster]:
    cluster = BeanstalkdCluster(tmp_path_factory.mktemp("publish-beanstalkd"), size=3)
    cluster.start()
    yield cluster
    cluster.stop()


@dataclass
class Queues:
    """What the publish servers publish to, and where a test looks for the result."""

    targets: PublishTargets
    cluster: BeanstalkdCluster
    tube: str
    topic: str
    broker: Tansu
    redis: RedisServer

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def tube_counts(self) -> dict[str, int]:
        """Jobs of the test's tube summed over the nodes, by state (ready, delayed, ...)."""
        totals: dict[str, int] = {}
        for address in self.cluster.addresses:
            host, port = address.rsplit(":", 1)
            with greenstalk.Client((host, int(port)), use=self.tube, watch=self.tube) as client:
                try:
                    stats: dict[str, Any] = dict(client.stats_tube(self.tube))
                except greenstalk.NotFoundError:
                    continue
            for state in ("ready", "delayed", "reserved", "buried"):
                totals[state] = totals.get(state, 0) + int(stats[f"current-jobs-{state}"])
        return totals


def make_targets(
    cluster: BeanstalkdCluster, redis: RedisServer, tube: str, broker: Tansu, topic: str
) -> PublishTargets:
    return PublishTargets(
        delay={
            "reminders": DelayProducer(
                cluster.addresses,
                tube,
                redis.url,
                max_job_bytes=MAX_JOB_BYTES,
                connect_timeout=1.0,
                name="reminders",
            )
        },
        kafka={"orders": KafkaPusher([broker.bootstrap], topic, extra=FAST_FAILING_PUSH, name="orders")},
        delay_jobs={
            "reminders": DelayJobs("reminders", cluster.addresses, tube, redis.url, connect_timeout=1.0)
        },
    )


@pytest.fixture
async def queues(
    module_cluster: BeanstalkdCluster, shared_redis: RedisServer, kafka_broker: Tansu, unique: str
) -> AsyncIterator[Queues]:
    targets = make_targets(module_cluster, shared_redis, unique, kafka_broker, unique)
    yield Queues(targets, module_cluster, unique, unique, kafka_broker, shared_redis)
    await targets.close()


@pytest.fixture
async def own_queues(
    beanstalk_cluster: BeanstalkdCluster, redis_server: RedisServer, own_kafka_broker: Tansu, unique: str
) -> AsyncIterator[Queues]:
    """Servers of this test alone, to stop and kill."""
    targets = make_targets(beanstalk_cluster, redis_server, unique, own_kafka_broker, unique)
    yield Queues(targets, beanstalk_cluster, unique, unique, own_kafka_broker, redis_server)
    await targets.close()


async def _serve_http(targets: PublishTargets) -> tuple[LeanHttpServer, str]:
    port = free_port()
    server = await serve(targets, "127.0.0.1", port)
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture
async def http(queues: Queues) -> AsyncIterator[tuple[ClientSession, Queues]]:
    """A client session whose base URL is the publish API."""
    server, url = await _serve_http(queues.targets)
    async with ClientSession(base_url=url) as session:
        yield session, queues
    await server.close()


@pytest.fixture
async def own_http(own_queues: Queues) -> AsyncIterator[tuple[ClientSession, Queues]]:
    server, url = await _serve_http(own_queues.targets)
    async with ClientSession(base_url=url) as session:
        yield session, own_queues
    await server.close()


async def _serve_grpc(targets: PublishTargets) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    port = free_port()
    server = await start_server(targets, "127.0.0.1", port)
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


@pytest.fixture
async def grpc_publisher(queues: Queues) -> AsyncIterator[tuple[queue_pb2_grpc.PublisherStub, Queues]]:
    server, channel = await _serve_grpc(queues.targets)
    yield queue_pb2_grpc.PublisherStub(channel), queues  # type: ignore[no-untyped-call]
    await channel.close()
    await server.stop(1)


@pytest.fixture
async def own_grpc_publisher(
    own_queues: Queues,
) -> AsyncIterator[tuple[queue_pb2_grpc.PublisherStub, Queues]]:
    server, channel = await _serve_grpc(own_queues.targets)
    yield queue_pb2_grpc.PublisherStub(channel), own_queues  # type: ignore[no-untyped-call]
    await channel.close()
    await server.stop(1)
