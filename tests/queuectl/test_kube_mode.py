"""queuectl against a kube context: queues read from DelayQueue / KafkaQueue resources and Secrets.

The Kubernetes API is the emulator (or the cluster named by QUEUE_OPERATOR_TEST_KUBECONFIG);
the queues' servers are real. No operator runs here, so the test writes the DelayQueue's
``status.endpoints`` itself, as the operator would once its nodes are up.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client
from publish.records import read_at
from queuectl.conftest import Result, queuectl

from harness.kube import KUBECONFIG_TEMPLATE, KubeApi
from harness.servers import BeanstalkdCluster, RedisServer, Tansu, free_port
from queue_sidecar.config import KafkaQueueConfig
from queue_sidecar.ctl.kube import KubeSource

CRDS = Path(__file__).resolve().parents[2] / "crds"
GROUP, VERSION = "queue-operator.dev", "v1alpha1"


def _secret(name: str, data: Mapping[str, str]) -> client.V1Secret:
    """A Secret whose ``data`` values are already base64, as the API stores them."""
    return client.V1Secret(metadata=client.V1ObjectMeta(name=name), type="Opaque", data=dict(data))


@dataclass
class Cluster:
    kube: KubeApi
    namespace: str
    context: str

    def run(self, *args: str) -> Result:
        env = {**os.environ, "KUBECONFIG": str(self.kube.kubeconfig_path)}
        return queuectl("--context", self.context, "--namespace", self.namespace, *args, env=env)

    def run_with_kubeconfig_option(self, *args: str) -> Result:
        kubeconfig = str(self.kube.kubeconfig_path)
        return queuectl(
            "--kubeconfig", kubeconfig, "-n", self.namespace, *args, env={**os.environ, "KUBECONFIG": ""}
        )


@pytest.fixture
def cluster(
    kube: KubeApi,
    module_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    kafka_broker: Tansu,
    unique: str,
) -> Iterator[Cluster]:
    kube.apply_crds(sorted(CRDS.glob("*.yaml")))
    kube.create_namespace(unique)
    with kube.client() as api:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        redis_url = base64.b64encode(shared_redis.url.encode()).decode()
        core.create_namespaced_secret(unique, _secret("redis", {"url": redis_url}))
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            unique,
            "delayqueues",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "DelayQueue",
                "metadata": {"name": "reminders"},
                "spec": {"tube": unique, "redis": {"secretRef": {"name": "redis", "key": "url"}}},
            },
        )
        custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            unique,
            "delayqueues",
            "reminders",
            {"status": {"endpoints": module_cluster.addresses, "readyReplicas": 3}},
        )
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            unique,
            "delayqueues",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "DelayQueue",
                "metadata": {"name": "pending"},
                "spec": {"redis": {"url": shared_redis.url}},
            },
        )
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            unique,
            "kafkaqueues",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "KafkaQueue",
                "metadata": {"name": "orders"},
                "spec": {"brokers": [kafka_broker.bootstrap], "topic": {"name": unique}},
            },
        )
    yield Cluster(kube, unique, "emulator")


def test_publish_and_inspect_through_a_kube_context(
    cluster: Cluster, module_cluster: BeanstalkdCluster, kafka_broker: Tansu, unique: str
) -> None:
    published = cluster.run("delay", "reminders", "from the cluster", "--in", "1m", "-o", "json")
    assert published.code == 0, published.err
    stats = cluster.run("stats", "reminders", "-o", "json")
    assert stats.code == 0, stats.err
    nodes = stats.json()["nodes"]
    assert [n["node"] for n in nodes] == module_cluster.addresses  # from status.endpoints
    assert sum(n["delayed"] for n in nodes) == 3
    job = cluster.run("get", "dq/reminders", published.json()["id"], "-o", "yaml")
    assert job.code == 0, job.err
    assert "state: delayed" in job.out.splitlines() and "body: from the cluster" in job.out
    revoked = cluster.run("revoke", "delayqueue/reminders", published.json()["id"])
    assert revoked.code == 0, revoked.err
    assert "(it was delayed)" in revoked.out
    assert cluster.run("buried", "reminders", "-o", "json").json()["total"] == 0

    pushed = cluster.run("push", "orders", "hello", "--key", "k", "-o", "json")
    assert pushed.code == 0, pushed.err
    where = pushed.json()
    assert where["topic"] == unique  # spec.topic.name, not the resource's name
    record = read_at(kafka_broker.bootstrap, unique, where["partition"], where["offset"])
    assert (record.value, record.key) == (b"hello", b"k")
    lag = cluster.run("stats", "kq/orders", "-o", "json")
    assert lag.code == 0, lag.err
    # spec.group defaults to <namespace>.<name>, as the operator and the webhook have it
    assert lag.json()["group"] == f"{cluster.namespace}.orders"


def test_kubeconfig_option_and_the_current_context(cluster: Cluster) -> None:
    result = cluster.run_with_kubeconfig_option("stats", "reminders")
    assert result.code == 0, result.err
    assert "DelayQueue reminders" in result.out


def test_unknown_queue_names_the_resources_in_the_namespace(cluster: Cluster) -> None:
    result = cluster.run("stats", "remindrs")
    assert result.code == 1
    assert "namespace" in result.err and cluster.namespace in result.err
    assert "delayqueue/pending, delayqueue/reminders, kafkaqueue/orders" in result.err


def test_a_delay_queue_without_endpoints_says_it_is_not_provisioned(cluster: Cluster) -> None:
    result = cluster.run("stats", "pending")
    assert result.code == 1
    assert "status.endpoints" in result.err


def test_no_kubeconfig_says_how_to_point_queuectl_at_queues(tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "missing")}
    result = queuectl("stats", "reminders", env=env)
    assert result.code == 1
    assert "--config" in result.err and "KUBECONFIG" in result.err


def test_kafka_auth_comes_from_the_secrets_and_the_ca_file_is_removed(kube: KubeApi, unique: str) -> None:
    kube.apply_crds(sorted(CRDS.glob("*.yaml")))
    kube.create_namespace(unique)
    with kube.client() as api:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        creds = {"user": base64.b64encode(b"app").decode(), "pass": base64.b64encode(b"s3cret").decode()}
        core.create_namespaced_secret(unique, _secret("kafka-user", creds))
        pem = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n...\n").decode()
        core.create_namespaced_secret(unique, _secret("kafka-ca", {"ca.crt": pem}))
        sasl_ref = {"name": "kafka-user", "usernameKey": "user", "passwordKey": "pass"}
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            unique,
            "kafkaqueues",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "KafkaQueue",
                "metadata": {"name": "secure"},
                "spec": {
                    "brokers": ["kafka-0.kafka:9093"],
                    "auth": {
                        "sasl": {"mechanism": "SCRAM-SHA-512", "secretRef": sasl_ref},
                        "tls": {"caSecretRef": {"name": "kafka-ca"}},
                    },
                },
            },
        )
    source = KubeSource("emulator", unique, kubeconfig=str(kube.kubeconfig_path))
    queue = source.find("secure", None)
    assert isinstance(queue, KafkaQueueConfig)
    assert (queue.topic, queue.group, queue.dead_letter_topic) == ("secure", f"{unique}.secure", "secure.dlq")
    settings = queue.security()
    assert settings is not None
    librdkafka = settings.librdkafka_config()
    assert librdkafka["sasl.username"] == "app" and librdkafka["sasl.password"] == "s3cret"
    assert librdkafka["security.protocol"] == "SASL_SSL"
    ca = Path(librdkafka["ssl.ca.location"])
    assert ca.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert ca.stat().st_mode & 0o077 == 0  # readable by its owner only
    assert "s3cret" not in repr(queue)
    source.close()
    assert not ca.exists()


def test_an_unreachable_api_is_reported_with_its_address(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG_TEMPLATE.format(url=f"http://127.0.0.1:{port}"))
    result = queuectl("--kubeconfig", str(kubeconfig), "stats", "reminders", "--timeout", "2s")
    assert result.code == 1
    assert f"127.0.0.1:{port}" in result.err and "unreachable" in result.err
    assert "Traceback" not in result.err
