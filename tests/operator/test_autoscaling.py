"""``spec.autoscaling``: the operator keeps a KEDA ScaledObject per queue, as KEDA documents it.

The real ``queue-operator`` on the API emulator, with KEDA's ScaledObject kind served (KEDA
itself cannot run here: what is checked is what the operator writes, field by field against
KEDA's scaler documentation, and that it follows the queue).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from harness.kube import KubeApi
from harness.kube_operator import Cluster, OperatorProcess, eventually, example
from harness.servers import Tansu

from .test_kafkaqueue import kafkaqueue

KEDA_CRD = Path(__file__).parent / "crds" / "keda-scaledobjects.yaml"
SCALING = {"target": {"name": "worker"}, "minReplicas": 0, "maxReplicas": 7, "threshold": 5}


def scaled_object(cluster: Cluster, name: str) -> dict[str, Any] | None:
    from kubernetes import client  # noqa: PLC0415

    api = client.CustomObjectsApi(cluster.api)
    try:
        found: dict[str, Any] = api.get_namespaced_custom_object(
            "keda.sh", "v1alpha1", cluster.namespace, "scaledobjects", name
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return found


def test_a_delayqueue_scales_its_consumers_on_each_nodes_backlog(
    kube: KubeApi, cluster: Cluster, operator: OperatorProcess
) -> None:
    kube.apply_crds([KEDA_CRD])
    docs = copy.deepcopy(example("delayqueue.yaml"))
    docs[-1]["spec"]["autoscaling"] = SCALING
    cluster.apply(docs)
    so = eventually(lambda: scaled_object(cluster, "delayqueue-reminders"), what="the ScaledObject")
    owner = cluster.get("delayqueues", "reminders")["metadata"]["uid"]
    assert [r["uid"] for r in so["metadata"]["ownerReferences"]] == [owner]
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 7)
    # KEDA's beanstalkd scaler: server, tube, includeDelayed, value (and timeout), one per node.
    assert [t["type"] for t in spec["triggers"]] == ["beanstalkd"] * 3
    assert spec["triggers"][0]["metadata"] == {
        "server": f"reminders-beanstalkd-0.reminders-beanstalkd.{cluster.namespace}.svc:11300",
        "tube": "reminders",
        "includeDelayed": "false",
        "value": "5",
        "timeout": "5",
    }
    # It follows the queue: more nodes, more triggers; a new threshold.
    cluster.patch("delayqueues", "reminders", {"spec": {"replicas": 5, "autoscaling": {"threshold": 20}}})
    eventually(
        lambda: (
            [
                t["metadata"]["value"]
                for t in scaled_object(cluster, "delayqueue-reminders")["spec"]["triggers"]
            ]
            == ["20"] * 5
        ),
        what="five triggers at 20",
    )
    # Removing spec.autoscaling removes the ScaledObject.
    cluster.patch("delayqueues", "reminders", {"spec": {"autoscaling": None}})
    eventually(lambda: scaled_object(cluster, "delayqueue-reminders") is None, what="deleted")


def test_a_kafkaqueue_scales_on_its_groups_lag_and_goes_with_the_queue(
    kube: KubeApi, cluster: Cluster, operator: OperatorProcess, kafka_broker: Tansu, unique: str
) -> None:
    kube.apply_crds([KEDA_CRD])
    scaling = {
        **SCALING,
        "target": {"kind": "StatefulSet", "name": "billing"},
        "authenticationRef": {"name": "kafka-auth"},
    }
    cluster.apply(kafkaqueue(kafka_broker, unique, offset="first", autoscaling=scaling))
    so = eventually(lambda: scaled_object(cluster, "kafkaqueue-orders"), what="the ScaledObject")
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "billing"}
    (trigger,) = spec["triggers"]
    # KEDA's kafka scaler: bootstrapServers, consumerGroup, topic, lagThreshold.
    assert trigger["type"] == "kafka"
    assert trigger["metadata"] == {
        "bootstrapServers": kafka_broker.bootstrap,
        "consumerGroup": f"{cluster.namespace}.orders",
        "topic": f"{unique}.orders",
        "lagThreshold": "5",
        "offsetResetPolicy": "earliest",
    }
    assert trigger["authenticationRef"] == {"name": "kafka-auth"}
    eventually(lambda: cluster.ready("kafkaqueues", "orders").get("status") == "True", what="Ready")
    # Owned by the queue: deleting the queue deletes it (garbage collection).
    cluster.delete("kafkaqueues", "orders")
    eventually(lambda: scaled_object(cluster, "kafkaqueue-orders") is None, what="collected with the queue")


def test_without_keda_the_queue_says_what_is_missing(
    cluster: Cluster, operator: OperatorProcess, kafka_broker: Tansu, unique: str
) -> None:
    cluster.apply(kafkaqueue(kafka_broker, unique, autoscaling=SCALING))
    degraded = eventually(
        lambda: (
            (c := cluster.condition("kafkaqueues", "orders", "Degraded")).get("reason") == "AutoscalingFailed"
            and c
        ),
        what="reported",
    )
    assert "needs KEDA" in degraded["message"] and "remove spec.autoscaling" in degraded["message"]
    assert cluster.ready("kafkaqueues", "orders")["status"] == "True", "the queue itself still works"
