"""Fixtures that give tests real servers (see harness/servers.py).

Session-scoped servers are shared by tests that only read and write (each test uses its own
tube / topic / key prefix via ``unique``); function-scoped ones are for tests that stop, kill
or restart them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.servers import BeanstalkdCluster, MotoS3, RedisServer, Tansu

pytest_plugins = ["harness.kube_fixtures"]


@pytest.fixture
def unique() -> str:
    """A short name unique to this test: use it for tubes, topics, groups and key prefixes."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def beanstalk_cluster(tmp_path: Path) -> Iterator[BeanstalkdCluster]:
    """Three fresh beanstalkd nodes with binlogs, yours to kill and restart."""
    cluster = BeanstalkdCluster(tmp_path / "beanstalkd", size=3)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh Redis, yours to stop and restart."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis shared by the session; do not stop it, and prefix your keys with ``unique``."""
    server = RedisServer(tmp_path_factory.mktemp("shared-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    """An in-memory tansu broker shared by the session; use ``unique`` topic and group names."""
    broker = Tansu(tmp_path_factory.mktemp("shared-tansu"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def own_kafka_broker(tmp_path: Path) -> Iterator[Tansu]:
    """A fresh in-memory broker, yours to stop (its log is lost on restart)."""
    broker = Tansu(tmp_path / "tansu")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def durable_kafka_broker(tmp_path: Path) -> Iterator[Tansu]:
    """A broker whose log lives in a local S3 (moto), so it survives kill and restart."""
    s3 = MotoS3(tmp_path / "moto")
    s3.start()
    broker = Tansu(tmp_path / "tansu", s3=s3)
    broker.start()
    yield broker
    broker.stop()
    s3.stop()
