"""The NetworkPolicy ``<name>-delayqueue``: only the operator and the queue's own client pods
reach its beanstalkd nodes and its provisioned Redis.

Client pods are those the webhook injected a sidecar for this queue into: it labels them
:func:`client_label` (``delayqueue.queue-operator.dev/<name>: client``), in the queue's
namespace. The operator (moving jobs off leaving nodes) is matched by the labels the chart gives
its pods, in any namespace. With ``spec.autoscaling``, KEDA's operator (``app: keda-operator``)
reads the tube's counts too. Owned by the DelayQueue like its other children.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from queue_operator.builders import beanstalkd, redis
from queue_operator.builders.labels import common_labels
from queue_operator.spec import DelayQueueSpec

CLIENT_LABEL_PREFIX = "delayqueue.queue-operator.dev/"
CLIENT = "client"
COMPONENT = "delayqueue-network-policy"
# The chart's operator pods (templates/deployment.yaml).
OPERATOR_POD_LABELS = {
    "app.kubernetes.io/part-of": "queue-operator",
    "app.kubernetes.io/component": "controller",
}
KEDA_POD_LABELS = {"app": "keda-operator"}


def client_label(queue: str) -> dict[str, str]:
    """The label on pods that use DelayQueue ``queue`` (its name is at most 41 characters)."""
    return {f"{CLIENT_LABEL_PREFIX}{queue}": CLIENT}


def network_policy(body: Mapping[str, Any], spec: DelayQueueSpec) -> dict[str, Any]:
    name, namespace = str(body["metadata"]["name"]), str(body["metadata"]["namespace"])
    sources: list[dict[str, Any]] = [
        {"podSelector": {"matchLabels": client_label(name)}},
        {"namespaceSelector": {}, "podSelector": {"matchLabels": dict(OPERATOR_POD_LABELS)}},
    ]
    if spec.autoscaling is not None:
        sources.append({"namespaceSelector": {}, "podSelector": {"matchLabels": dict(KEDA_POD_LABELS)}})
    ports = [{"protocol": "TCP", "port": beanstalkd.PORT}]
    apps = [beanstalkd.APP]
    if spec.redis_provisioned:
        ports.append({"protocol": "TCP", "port": redis.PORT})
        apps.append(redis.APP)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": f"{name}-delayqueue",
            "namespace": namespace,
            "labels": common_labels(beanstalkd.APP, name, COMPONENT),
        },
        "spec": {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/instance": name,
                    "app.kubernetes.io/managed-by": "queue-operator",
                },
                "matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": apps}],
            },
            "policyTypes": ["Ingress"],
            "ingress": [{"from": sources, "ports": ports}],
        },
    }
