"""The RedisDurable condition is asked in the background, once per Redis, never on a handler's path.

A Redis that answers slowly (here a real TCP listener that accepts and never replies, as a
firewalled or overloaded Redis does) must not hold up the reconciles of the queues using it:
their children and status come at once with ``RedisDurable`` ``Unknown/Checking``, and one
check for all of them reports ``Unknown/RedisUnreachable`` when it gives up. The verdict on a
Redis that answers (``False`` without AOF) is in tests/operator/test_elastic_delayqueue.py.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from harness.kube_operator import Cluster, OperatorProcess, eventually

PLURAL = "delayqueues"
QUEUES = 12


class SilentRedis:
    """Accepts connections, counts them, never answers (until closed)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._held.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self._held:
            connection.close()


@pytest.fixture
def silent_redis() -> Iterator[SilentRedis]:
    server = SilentRedis()
    yield server
    server.close()


def redis_condition(cluster: Cluster, name: str) -> dict[str, Any] | None:
    conditions = (cluster.get(PLURAL, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "RedisDurable"), None)


def test_a_slow_redis_is_checked_once_in_the_background_for_all_its_queues(
    cluster: Cluster, operator: OperatorProcess, silent_redis: SilentRedis
) -> None:
    url = f"redis://127.0.0.1:{silent_redis.port}/0"
    names = [f"slow-{i:02d}" for i in range(QUEUES)]
    for name in names:
        cluster.create(
            {
                "apiVersion": "queue-operator.dev/v1alpha1",
                "kind": "DelayQueue",
                "metadata": {"name": name},
                "spec": {"replicas": 1, "redis": {"url": url}},
            },
        )
    # Each reconcile wrote its status before the check (which waits out a 3 s read timeout) ended.
    first = {
        name: eventually(lambda n=name: redis_condition(cluster, n), what=f"{name} status") for name in names
    }
    assert {(c["status"], c["reason"]) for c in first.values()} == {("Unknown", "Checking")}, first
    for name in names:
        assert cluster.ready(PLURAL, name)["reason"] == "NodesNotReady"

    def gave_up() -> bool:
        return all((redis_condition(cluster, n) or {}).get("reason") == "RedisUnreachable" for n in names)

    eventually(gave_up, timeout=30, what="every queue reports the one check's verdict")
    message = (redis_condition(cluster, names[0]) or {})["message"]
    assert message.startswith("Redis not checked: ") and "redis://" not in message, message
    # One check for the twelve queues (redis-py retries a failed connection once).
    assert 1 <= silent_redis.accepted <= 2, silent_redis.accepted

    # A status refresh from pods becoming ready keeps the condition (it used to drop it).
    cluster.apps.patch_namespaced_stateful_set_status(
        f"{names[0]}-beanstalkd",
        cluster.namespace,
        {"status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}},
    )
    eventually(lambda: cluster.ready(PLURAL, names[0])["status"] == "True", what="Ready=True")
    assert (redis_condition(cluster, names[0]) or {}).get("reason") == "RedisUnreachable"
    assert "Traceback" not in operator.log()
