"""``spec.persistence.deleteClaim``: the nodes' (and the provisioned Redis's) volumes outlive a
deleted DelayQueue by default, and go with it when asked.

The test plays the StatefulSet controller for the volumes: it creates each replica's PVC as the
real controller does, with an owner reference to the StatefulSet only when the StatefulSet's
``persistentVolumeClaimRetentionPolicy.whenDeleted`` is ``Delete``. Deleting the DelayQueue then
garbage-collects its StatefulSets (they are owned by it), and with them the PVCs they own.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from harness.kube_operator import Cluster, OperatorProcess, eventually

NAME = "reminders"


def delay_queue(delete_claim: bool | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"replicas": 2}  # no spec.redis: a provisioned Redis with its own PVC
    if delete_claim is not None:
        spec["persistence"] = {"deleteClaim": delete_claim}
    return {
        "apiVersion": "queue-operator.dev/v1alpha1",
        "kind": "DelayQueue",
        "metadata": {"name": NAME},
        "spec": spec,
    }


def create_claims_as_the_controller_would(cluster: Cluster, statefulset: str) -> list[str]:
    sts = cluster.apps.read_namespaced_stateful_set(statefulset, cluster.namespace)
    policy = sts.spec.persistent_volume_claim_retention_policy
    assert policy is not None and policy.when_scaled == "Retain"
    names = []
    for template in sts.spec.volume_claim_templates or []:
        for ordinal in range(sts.spec.replicas):
            name = f"{template.metadata.name}-{statefulset}-{ordinal}"
            metadata: dict[str, Any] = {"name": name}
            if policy.when_deleted == "Delete":
                metadata["ownerReferences"] = [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "StatefulSet",
                        "name": statefulset,
                        "uid": sts.metadata.uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ]
            claim = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": metadata,
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            }
            cluster.core.create_namespaced_persistent_volume_claim(cluster.namespace, claim)
            names.append(name)
    return names


def claims(cluster: Cluster) -> set[str]:
    items = cluster.core.list_namespaced_persistent_volume_claim(cluster.namespace).items
    return {item.metadata.name for item in items}


@pytest.mark.parametrize("delete_claim", [None, False, True], ids=["default", "false", "true"])
def test_deleting_a_delayqueue_keeps_its_volumes_unless_delete_claim(
    cluster: Cluster, operator: OperatorProcess, delete_claim: bool | None
) -> None:
    cluster.apply([delay_queue(delete_claim)])
    statefulsets = [f"{NAME}-beanstalkd", f"{NAME}-redis"]
    for name in statefulsets:
        eventually(lambda n=name: cluster.apps.read_namespaced_stateful_set(n, cluster.namespace), what=name)
    # The NetworkPolicy is a child too: owned by the DelayQueue, gone with it.
    owner = cluster.get("delayqueues", NAME)["metadata"]["uid"]
    networking = client.NetworkingV1Api(cluster.api)
    policy = eventually(
        lambda: networking.read_namespaced_network_policy(f"{NAME}-delayqueue", cluster.namespace),
        what="the NetworkPolicy",
    )
    assert [ref.uid for ref in policy.metadata.owner_references] == [owner]
    created = {c for name in statefulsets for c in create_claims_as_the_controller_would(cluster, name)}
    assert created == {
        f"data-{NAME}-beanstalkd-0",
        f"data-{NAME}-beanstalkd-1",
        f"data-{NAME}-redis-0",
    }
    cluster.delete("delayqueues", NAME)
    eventually(lambda: cluster.gone("delayqueues", NAME), what="the DelayQueue gone")
    eventually(
        lambda: not cluster.apps.list_namespaced_stateful_set(cluster.namespace).items,
        what="its StatefulSets garbage-collected",
    )
    eventually(
        lambda: not networking.list_namespaced_network_policy(cluster.namespace).items,
        what="its NetworkPolicy garbage-collected",
    )
    if delete_claim:
        eventually(lambda: not claims(cluster), what="the PVCs deleted with it")
    else:
        assert claims(cluster) == created, "pending jobs (and Redis records) survive the deletion"
