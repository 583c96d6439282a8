"""A DelayQueue without ``spec.redis``: the operator provisions a durable Redis for it.

The operator runs for real on the API emulator; the Redis it describes is then run for real,
from the command line, environment and Secret the operator wrote (as a kubelet would), and
SIGKILLed and restarted from its append-only file.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis as redis_client

from harness import tools
from harness.kube_operator import Cluster, OperatorProcess, eventually, example
from harness.servers import ManagedProcess
from queue_engine.dq.redis_client import durability_warnings

PLURAL = "delayqueues"


def without_redis() -> list[dict[str, Any]]:
    docs = copy.deepcopy(example("delayqueue.yaml"))
    docs = [d for d in docs if d["kind"] == "DelayQueue"]
    docs[0]["spec"].pop("redis", None)
    return docs


def secret_data(cluster: Cluster, name: str) -> dict[str, str]:
    secret = cluster.core.read_namespaced_secret(name, cluster.namespace)
    return {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}


def set_ready(cluster: Cluster, name: str, replicas: int) -> None:
    status = {"replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas}
    cluster.apps.patch_namespaced_stateful_set_status(name, cluster.namespace, {"status": status})


def test_a_delayqueue_without_redis_gets_its_own_with_a_generated_password(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    cluster.apply(without_redis())
    statefulset = eventually(
        lambda: cluster.apps.read_namespaced_stateful_set("reminders-redis", cluster.namespace),
        what="the Redis StatefulSet",
    )
    owner = cluster.get(PLURAL, "reminders")["metadata"]["uid"]
    secret = cluster.core.read_namespaced_secret("reminders-redis", cluster.namespace)
    service = cluster.core.read_namespaced_service("reminders-redis", cluster.namespace)
    for child in (statefulset, secret, service):
        assert [ref.uid for ref in child.metadata.owner_references] == [owner]
    assert secret.metadata.labels["queue-operator.dev/secret"] == "true"
    data = secret_data(cluster, "reminders-redis")
    password = data["password"]
    assert len(password) >= 32
    assert data["url"] == f"redis://:{password}@reminders-redis.{cluster.namespace}.svc:6379/0"

    # No secret value in the pod spec: the password comes through an environment reference.
    pod_spec = cluster.api.sanitize_for_serialization(statefulset.spec.template)
    assert password not in json.dumps(pod_spec)
    (container,) = pod_spec["spec"]["containers"]
    assert container["env"] == [
        {
            "name": "REDIS_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "reminders-redis", "key": "password"}},
        }
    ]
    assert re.match(r"docker\.io/library/redis:\d+\.\d+\.\d+-", container["image"]), "pinned"
    claim = statefulset.spec.volume_claim_templates[0]
    assert claim.spec.resources.requests["storage"] == "1Gi"

    # Ready only once the nodes and the Redis are.
    set_ready(cluster, "reminders-beanstalkd", 3)
    waiting = eventually(
        lambda: (c := cluster.ready(PLURAL, "reminders")).get("reason") == "RedisNotReady" and c,
        what="waiting for the Redis",
    )
    assert waiting["status"] == "False"
    set_ready(cluster, "reminders-redis", 1)
    eventually(lambda: cluster.ready(PLURAL, "reminders").get("status") == "True", what="Ready")

    # A later change re-applies everything but keeps the password the running Redis has.
    cluster.patch(PLURAL, "reminders", {"spec": {"replicas": 5}})
    eventually(
        lambda: (
            cluster.apps.read_namespaced_stateful_set("reminders-beanstalkd", cluster.namespace).spec.replicas
            == 5
        ),
        what="scaled",
    )
    assert secret_data(cluster, "reminders-redis")["password"] == password


class RedisFromPodSpec(ManagedProcess):
    """redis-server with the command line and environment of the operator's pod spec."""

    name = "redis"

    def __init__(self, workdir: Path, container: dict[str, Any], env: dict[str, str]) -> None:
        super().__init__(workdir)
        self.container, self.variables = container, env

    def argv(self) -> Sequence[str]:
        args = [
            re.sub(r"\$\((\w+)\)", lambda m: self.variables[m.group(1)], a) for a in self.container["args"]
        ]
        # The pod's own address and data volume, here: a loopback port and a work directory.
        args[args.index("--port") + 1] = str(self.port)
        args[args.index("--dir") + 1] = str(self.workdir)
        return [tools.redis_server(), *args, "--bind", "127.0.0.1"]


def test_the_provisioned_redis_is_durable_and_refuses_strangers(
    cluster: Cluster, operator: OperatorProcess, tmp_path: Path
) -> None:
    cluster.apply(without_redis())
    statefulset = eventually(
        lambda: cluster.apps.read_namespaced_stateful_set("reminders-redis", cluster.namespace),
        what="the Redis StatefulSet",
    )
    pod_spec = cluster.api.sanitize_for_serialization(statefulset.spec.template)["spec"]
    (container,) = pod_spec["containers"]
    assert container["command"] == ["redis-server"]
    data = secret_data(cluster, "reminders-redis")
    server = RedisFromPodSpec(tmp_path / "redis", container, {"REDIS_PASSWORD": data["password"]})
    server.start()
    try:
        url = data["url"].replace(f"reminders-redis.{cluster.namespace}.svc:6379", server.address)
        stranger = redis_client.Redis(port=server.port)
        try:
            stranger.ping()
            raise AssertionError("a client without the password was let in")
        except redis_client.AuthenticationError:
            pass
        assert asyncio.run(_warnings(url)) == [], "the engine finds nothing that could lose records"
        client = redis_client.Redis.from_url(url)
        client.set("dq:reminders:revoked:job-1", "1")
        time.sleep(1.5)  # appendfsync everysec
        server.kill()  # SIGKILL: no shutdown save
        server.start()
        assert redis_client.Redis.from_url(url).get("dq:reminders:revoked:job-1") == b"1"
    finally:
        server.stop()


async def _warnings(url: str) -> list[str]:
    from redis.asyncio import Redis  # noqa: PLC0415

    client = Redis.from_url(url)
    try:
        return await durability_warnings(client)
    finally:
        await client.aclose()
