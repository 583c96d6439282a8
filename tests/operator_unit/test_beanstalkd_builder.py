"""The children of a DelayQueue, built from its spec: what Kubernetes would run."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from queue_operator.builders import beanstalkd
from queue_operator.spec import DEFAULT_BEANSTALKD_IMAGE, DelayQueueSpec

K8S_VERSION = "1.33.0"
SUPPORTED_VERSIONS = ["1.27.0", K8S_VERSION, "1.35.0"]  # oldest supported, CI default, newest


def body(
    spec: dict[str, Any] | None = None, name: str = "reminders", namespace: str = "shop"
) -> dict[str, Any]:
    return {
        "apiVersion": "queue-operator.dev/v1alpha1",
        "kind": "DelayQueue",
        "metadata": {"name": name, "namespace": namespace, "uid": "0b0e6c1a-0000-4000-8000-000000000001"},
        "spec": {"redis": {"url": "redis://redis:6379/0"}, **(spec or {})},
    }


def build(spec: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, dict[str, Any]]:
    resource = body(spec, **kwargs)
    return {obj["kind"]: obj for obj in beanstalkd.children(resource, DelayQueueSpec.from_body(resource))}


def container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = objects["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    assert isinstance(only, dict)
    return only


FULL_SPEC = {
    "replicas": 5,
    "image": "registry.example/beanstalkd:1.13",
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
    "maxJobBytes": 262144,
    "persistence": {"size": "5Gi", "storageClassName": "fast-ssd", "fsyncMillis": 0},
}


@pytest.mark.parametrize(
    "spec",
    [
        {},
        FULL_SPEC,
        {"replicas": 1, "persistence": {"enabled": False}},
        {"persistence": {"fsyncMillis": 250}, "resources": {"limits": {"cpu": 2}}},
    ],
    ids=["defaults", "full", "ephemeral", "fsync"],
)
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_child_passes_strict_kubernetes_validation(spec: dict[str, Any], version: str) -> None:
    objects = build(spec)
    assert list(objects) == ["Service", "StatefulSet", "PodDisruptionBudget"]
    for obj in objects.values():
        kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_would_catch_a_misspelt_field() -> None:
    sts = build()["StatefulSet"]
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


def test_children_names_namespace_labels_and_no_owner() -> None:
    for obj in build().values():
        meta = obj["metadata"]
        assert (meta["name"], meta["namespace"]) == ("reminders-beanstalkd", "shop")
        assert meta["labels"] == {
            "app.kubernetes.io/name": "beanstalkd",
            "app.kubernetes.io/instance": "reminders",
            "app.kubernetes.io/component": "delayqueue-node",
            "app.kubernetes.io/part-of": "queue-operator",
            "app.kubernetes.io/managed-by": "queue-operator",
        }
        assert "ownerReferences" not in meta  # the runtime adopts


def test_selectors_pick_exactly_this_queues_pods() -> None:
    objects = build()
    sts = objects["StatefulSet"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    selector = {"app.kubernetes.io/name": "beanstalkd", "app.kubernetes.io/instance": "reminders"}
    assert sts["spec"]["selector"] == {"matchLabels": selector}
    assert objects["Service"]["spec"]["selector"] == selector
    assert objects["PodDisruptionBudget"]["spec"]["selector"] == {"matchLabels": selector}
    assert selector.items() <= pod_labels.items()
    other = build(name="invoices")["StatefulSet"]["spec"]["selector"]["matchLabels"]
    assert other != selector


def test_headless_service_names_every_node_even_before_ready() -> None:
    service = build()["Service"]["spec"]
    assert service["clusterIP"] == "None"
    assert service["publishNotReadyAddresses"] is True
    assert service["ports"] == [
        {"name": "beanstalk", "port": 11300, "targetPort": "beanstalk", "protocol": "TCP"}
    ]


def test_statefulset_defaults() -> None:
    objects = build()
    sts = objects["StatefulSet"]["spec"]
    assert sts["replicas"] == 3
    assert sts["serviceName"] == objects["Service"]["metadata"]["name"]
    c = container(objects)
    assert c["image"] == DEFAULT_BEANSTALKD_IMAGE
    assert c["command"] == ["beanstalkd"]
    assert c["args"] == ["-l", "0.0.0.0", "-p", "11300", "-z", "65535", "-b", "/var/lib/beanstalkd"]
    assert c["volumeMounts"] == [{"name": "data", "mountPath": "/var/lib/beanstalkd"}]
    assert c["resources"] == beanstalkd.DEFAULT_RESOURCES
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    # Deleting the DelayQueue keeps the volumes (and their pending jobs) by default.
    assert sts["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_delete_claim_deletes_the_volumes_with_the_resource() -> None:
    objects = build({**FULL_SPEC, "persistence": {**FULL_SPEC["persistence"], "deleteClaim": True}})
    policy = objects["StatefulSet"]["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert policy == {"whenDeleted": "Delete", "whenScaled": "Retain"}


def test_statefulset_follows_every_spec_field() -> None:
    objects = build(FULL_SPEC)
    sts = objects["StatefulSet"]["spec"]
    assert sts["replicas"] == 5
    c = container(objects)
    assert c["image"] == "registry.example/beanstalkd:1.13"
    assert c["args"] == [
        "-l",
        "0.0.0.0",
        "-p",
        "11300",
        "-z",
        "262144",
        "-b",
        "/var/lib/beanstalkd",
        "-f",
        "0",
    ]
    assert c["resources"] == FULL_SPEC["resources"]
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["spec"]["resources"] == {"requests": {"storage": "5Gi"}}
    assert claim["spec"]["storageClassName"] == "fast-ssd"


def test_without_persistence_there_is_no_binlog_and_no_volume() -> None:
    objects = build({"persistence": {"enabled": False, "fsyncMillis": 10}})
    sts = objects["StatefulSet"]["spec"]
    assert "volumeClaimTemplates" not in sts
    c = container(objects)
    assert c["args"] == ["-l", "0.0.0.0", "-p", "11300", "-z", "65535"]  # -f means nothing without -b
    assert "volumeMounts" not in c


def test_pods_run_unprivileged_with_a_read_only_root() -> None:
    objects = build()
    pod = objects["StatefulSet"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]  # can write the PVC
    sc = container(objects)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_probes_check_the_beanstalk_port() -> None:
    c = container(build())
    assert c["ports"] == [{"name": "beanstalk", "containerPort": 11300, "protocol": "TCP"}]
    assert c["readinessProbe"]["tcpSocket"] == {"port": "beanstalk"}
    assert c["livenessProbe"]["tcpSocket"] == {"port": "beanstalk"}


def test_disruption_budget_lets_one_node_go_at_a_time() -> None:
    assert build()["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_endpoints_are_stable_dns_names_one_per_node() -> None:
    resource = body({"replicas": 3})
    spec = DelayQueueSpec.from_body(resource)
    assert beanstalkd.endpoints(resource, spec) == [
        "reminders-beanstalkd-0.reminders-beanstalkd.shop.svc:11300",
        "reminders-beanstalkd-1.reminders-beanstalkd.shop.svc:11300",
        "reminders-beanstalkd-2.reminders-beanstalkd.shop.svc:11300",
    ]
    # They name the pods the StatefulSet creates, under the Service that governs them.
    sts, svc = build({"replicas": 3})["StatefulSet"], build()["Service"]
    host = beanstalkd.endpoints(resource, spec)[1].split(":")[0]
    assert host.split(".")[:3] == [f"{sts['metadata']['name']}-1", svc["metadata"]["name"], "shop"]
    scaled = DelayQueueSpec.from_body(body({"replicas": 5}))
    assert beanstalkd.endpoints(resource, scaled)[:3] == beanstalkd.endpoints(resource, spec)
    # No cluster domain: the names resolve in a cluster whose domain is not cluster.local too.
    assert all(endpoint.endswith(".shop.svc:11300") for endpoint in beanstalkd.endpoints(resource, spec))


def test_building_is_pure() -> None:
    resource = body(FULL_SPEC)
    before = copy.deepcopy(resource)
    spec = DelayQueueSpec.from_body(resource)
    first = beanstalkd.children(resource, spec)
    first[1]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "9Gi"
    assert resource == before
    assert beanstalkd.children(resource, spec) == beanstalkd.children(copy.deepcopy(resource), spec)
    assert container(build(FULL_SPEC))["resources"]["limits"]["memory"] == "1Gi"


def test_default_resources_are_not_shared_between_children() -> None:
    a = container(build())
    a["resources"]["requests"]["cpu"] = "8"
    assert container(build())["resources"]["requests"]["cpu"] == "50m"
