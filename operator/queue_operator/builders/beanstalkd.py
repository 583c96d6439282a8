"""The children of a DelayQueue: a headless Service, a beanstalkd StatefulSet and a PodDisruptionBudget.

All three are named ``<name>-beanstalkd``; node ``i`` is reachable at
``<name>-beanstalkd-<i>.<name>-beanstalkd.<namespace>.svc:11300``, a name that stays the same
across restarts and rescheduling and resolves whatever the cluster domain is (pods search
``svc.<cluster domain>``). No owner references here: the runtime adopts.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from queue_operator.builders.labels import common_labels, selector_labels
from queue_operator.spec import DelayQueueSpec, SpecError

APP = "beanstalkd"
COMPONENT = "delayqueue-node"
PORT = 11300
PORT_NAME = "beanstalk"
DATA_VOLUME = "data"
DATA_DIR = "/var/lib/beanstalkd"
# nobody:nogroup; beanstalkd needs no privileges and fsGroup makes the PVC writable for it.
RUN_AS = 65534
DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "512Mi"},
}


def child_name(body: Mapping[str, Any]) -> str:
    """Name of the StatefulSet, the headless Service and the PodDisruptionBudget."""
    return f"{body['metadata']['name']}-{APP}"


def children(body: Mapping[str, Any], spec: DelayQueueSpec) -> list[dict[str, Any]]:
    """[headless Service, StatefulSet, PodDisruptionBudget], in the order to create them."""
    return [service(body), statefulset(body, spec), pod_disruption_budget(body)]


def endpoints(body: Mapping[str, Any], spec: DelayQueueSpec) -> list[str]:
    """One ``host:port`` per node, by stable DNS name, in node order.

    No cluster domain: ``cluster.local`` is only the default, and pods' resolv.conf searches
    ``svc.<cluster domain>``, so ``<pod>.<service>.<namespace>.svc`` works in every cluster.
    """
    name, namespace = child_name(body), _namespace(body)
    return [f"{name}-{i}.{name}.{namespace}.svc:{PORT}" for i in range(spec.replicas)]


def beanstalkd_args(spec: DelayQueueSpec) -> list[str]:
    """Command line flags, see beanstalkd(1)."""
    args = ["-l", "0.0.0.0", "-p", str(PORT), "-z", str(spec.max_job_bytes)]
    if spec.persistence_enabled:
        args += ["-b", DATA_DIR]
        # -f only means something with a binlog; without it beanstalkd fsyncs every 50 ms.
        if spec.fsync_millis is not None:
            args += ["-f", str(spec.fsync_millis)]
    return args


def service(body: Mapping[str, Any]) -> dict[str, Any]:
    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(body),
        "spec": {
            "clusterIP": "None",
            # Nodes get DNS names before they are ready: clients and peers find a node that
            # is starting up and let their own retries handle it.
            "publishNotReadyAddresses": True,
            "selector": selector_labels(APP, name),
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def statefulset(body: Mapping[str, Any], spec: DelayQueueSpec) -> dict[str, Any]:
    name = body["metadata"]["name"]
    labels = common_labels(APP, name, COMPONENT)
    sts_spec: dict[str, Any] = {
        "serviceName": child_name(body),
        "replicas": spec.replicas,
        # Nodes are independent beanstalkd servers: start and stop them all at once.
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "RollingUpdate"},
        "selector": {"matchLabels": selector_labels(APP, name)},
        "template": {"metadata": {"labels": labels}, "spec": _pod_spec(body, spec)},
    }
    if spec.persistence_enabled:
        sts_spec["volumeClaimTemplates"] = [_volume_claim(body, spec)]
        # A scaled-down node's binlog may still hold jobs: keep its PVC until a person decides.
        # Deleting the DelayQueue keeps them too (its pending jobs survive) unless deleteClaim.
        when_deleted = "Delete" if spec.delete_claim else "Retain"
        sts_spec["persistentVolumeClaimRetentionPolicy"] = {
            "whenDeleted": when_deleted,
            "whenScaled": "Retain",
        }
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _metadata(body), "spec": sts_spec}


def pod_disruption_budget(body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(body),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(APP, body["metadata"]["name"])},
        },
    }


def _pod_spec(body: Mapping[str, Any], spec: DelayQueueSpec) -> dict[str, Any]:
    name = body["metadata"]["name"]
    container: dict[str, Any] = {
        "name": APP,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["beanstalkd"],
        "args": beanstalkd_args(spec),
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": PORT_NAME}, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {
            "tcpSocket": {"port": PORT_NAME},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        # Copied: callers may patch what they get without changing the next build.
        "resources": copy.deepcopy(spec.resources or DEFAULT_RESOURCES),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.persistence_enabled:
        container["volumeMounts"] = [{"name": DATA_VOLUME, "mountPath": DATA_DIR}]
    return {
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # Spread the nodes over machines so that losing one machine loses at most one copy.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(APP, name)},
            }
        ],
        "containers": [container],
    }


def _volume_claim(body: Mapping[str, Any], spec: DelayQueueSpec) -> dict[str, Any]:
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.persistence_size}},
    }
    if spec.storage_class_name is not None:
        claim_spec["storageClassName"] = spec.storage_class_name
    labels = common_labels(APP, body["metadata"]["name"], COMPONENT)
    return {"metadata": {"name": DATA_VOLUME, "labels": labels}, "spec": claim_spec}


def _metadata(body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": child_name(body),
        "namespace": _namespace(body),
        "labels": common_labels(APP, body["metadata"]["name"], COMPONENT),
    }


def _namespace(body: Mapping[str, Any]) -> str:
    namespace = (body.get("metadata") or {}).get("namespace")
    if not isinstance(namespace, str) or not namespace:
        raise SpecError("metadata.namespace is missing; DelayQueue is a namespaced resource")
    return namespace
