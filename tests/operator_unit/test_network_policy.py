"""The DelayQueue's NetworkPolicy and node-list ConfigMap, built from its spec."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from queue_operator.builders import network_policy, nodes
from queue_operator.injection.annotations import QueueRef
from queue_operator.injection.queues import sidecar_queue
from queue_operator.spec import DelayQueueSpec

K8S_VERSION = "1.33.0"


def body(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "queue-operator.dev/v1alpha1",
        "kind": "DelayQueue",
        "metadata": {"name": "reminders", "namespace": "shop"},
        "spec": spec,
    }


@pytest.mark.parametrize("provisioned", [True, False], ids=["provisioned-redis", "own-redis"])
def test_only_client_pods_and_the_operator_reach_the_nodes_and_the_provisioned_redis(
    provisioned: bool,
) -> None:
    resource = body({} if provisioned else {"redis": {"url": "redis://redis:6379/0"}})
    policy = network_policy.network_policy(resource, DelayQueueSpec.from_body(resource))
    kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "reminders"
    (expression,) = spec["podSelector"]["matchExpressions"]
    assert expression["values"] == (["beanstalkd", "redis"] if provisioned else ["beanstalkd"])
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert [p["port"] for p in rule["ports"]] == ([11300, 6379] if provisioned else [11300])
    clients, operator = rule["from"]
    assert clients == {"podSelector": {"matchLabels": {"delayqueue.queue-operator.dev/reminders": "client"}}}
    assert operator["namespaceSelector"] == {}
    assert operator["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "controller"


def test_the_injected_pod_carries_the_client_label_the_policy_admits() -> None:
    resource = body({"redis": {"url": "redis://redis:6379/0"}})
    queue = sidecar_queue(QueueRef("DelayQueue", "reminders"), resource, 0)
    assert queue.labels == {"delayqueue.queue-operator.dev/reminders": "client"}


def test_the_nodes_configmap_lists_active_then_draining_nodes() -> None:
    resource = body({})
    active = nodes.node_endpoints(resource, 2)
    assert active[1] == "reminders-beanstalkd-1.reminders-beanstalkd.shop.svc:11300"
    configmap = nodes.configmap(resource, active, ["x:11300"])
    kubernetes_validate.validate(configmap, K8S_VERSION, strict=True)
    document = json.loads(configmap["data"]["nodes.json"])
    assert [n["state"] for n in document["nodes"]] == ["active", "active", "draining"]
