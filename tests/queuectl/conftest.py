"""``queuectl`` run as a subprocess against a sidecar config file pointing at real servers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.servers import BeanstalkdCluster, RedisServer, Tansu

QUEUECTL = str(Path(sys.executable).parent / "queuectl")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def queuectl(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> Result:
    done = subprocess.run(
        [QUEUECTL, *args], input=stdin, capture_output=True, timeout=120, check=False, env=env
    )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


@dataclass
class Setup:
    """A config file naming a DelayQueue ``reminders`` and a KafkaQueue ``orders`` of this test."""

    path: Path
    cluster: BeanstalkdCluster
    redis: RedisServer
    broker: Tansu
    tube: str
    topic: str

    @property
    def group(self) -> str:
        return f"{self.topic}-app"

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic}.dlq"

    def run(self, *args: str, stdin: bytes | None = None) -> Result:
        return queuectl("--config", str(self.path), *args, stdin=stdin)


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BeanstalkdCluster]:
    cluster = BeanstalkdCluster(tmp_path_factory.mktemp("queuectl-beanstalkd"), size=3)
    cluster.start()
    yield cluster
    cluster.stop()


def write_config(path: Path, *, nodes: Sequence[str], redis_url: str, bootstrap: str, name: str) -> Path:
    """A config whose tube and topic are ``name``."""
    tube = topic = name
    config = {
        "app": {"port": 8080},
        "queues": [
            {
                "kind": "DelayQueue",
                "name": "reminders",
                "nodes": list(nodes),
                "tube": tube,
                "redis": {"url": redis_url},
                "maxJobBytes": 1024,
            },
            {
                "kind": "KafkaQueue",
                "name": "orders",
                "brokers": [bootstrap],
                "topic": topic,
                "group": f"{topic}-app",
                "offset": "first",
                "deadLetterTopic": f"{topic}.dlq",
            },
        ],
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.fixture
def setup(
    tmp_path: Path,
    module_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    kafka_broker: Tansu,
    unique: str,
) -> Setup:
    path = write_config(
        tmp_path / "sidecar.yaml",
        nodes=module_cluster.addresses,
        redis_url=shared_redis.url,
        bootstrap=kafka_broker.bootstrap,
        name=unique,
    )
    return Setup(path, module_cluster, shared_redis, kafka_broker, unique, unique)
