"""The Redis a DelayQueue gets when its spec names none: its de-duplication store, made durable.

Pure functions, like ``builders.beanstalkd``. The objects, all named ``<queue>-redis`` and
owned by the DelayQueue:

- a Secret (labelled ``queue-operator.dev/secret: "true"``) with a generated ``password`` and
  the ``url`` the sidecars use (``redis://:PASSWORD@<queue>-redis.<namespace>.svc:6379/0``); it
  is created once and never rewritten, so the password stays what the running Redis has;
- a Service in front of the one Redis pod;
- a StatefulSet of one pinned official Redis: append-only file on a PersistentVolumeClaim,
  fsync every second (``appendfsync everysec``), ``maxmemory-policy noeviction`` with a
  ``maxmemory`` below the container limit (a full Redis refuses writes, which publishers see,
  rather than evicting tombstones or being OOM-killed in a loop), the password from the Secret
  through an environment reference (never a value in the pod spec).

Why these settings: the dq engine's guarantees (a revoked job never runs, a finished one never
runs twice) rest on Redis keeping every record; eviction or a restart without persistence
would lose them (see the engine's ``durability_warnings``).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from typing import Any

from queue_operator.builders.labels import common_labels, selector_labels
from queue_operator.kube import SECRET_LABEL
from queue_operator.spec import PROVISIONED_REDIS_KEY, DelayQueueSpec, provisioned_redis_name

APP = "redis"
COMPONENT = "delayqueue-redis"
IMAGE = "docker.io/library/redis:7.2.7-bookworm"
PORT = 6379
PASSWORD_KEY = "password"
DATA_DIR = "/data"
RUN_AS = 999  # the official image's redis user
MEMORY_LIMIT_MI = 256
MAXMEMORY_MB = 200  # below the limit: Redis refuses writes before the kernel kills it
VOLUME_SIZE = "1Gi"


def children(body: Mapping[str, Any], spec: DelayQueueSpec) -> list[dict[str, Any]]:
    """[Service, StatefulSet] when the Redis is provisioned; the Secret is made by :func:`secret`."""
    if not spec.redis_provisioned:
        return []
    return [service(body), statefulset(body, spec)]


def host(body: Mapping[str, Any]) -> str:
    """The Service's name, without a cluster domain (pods search ``svc.<domain>``)."""
    meta = body["metadata"]
    return f"{provisioned_redis_name(meta['name'])}.{meta['namespace']}.svc"


def secret(body: Mapping[str, Any]) -> dict[str, Any]:
    """A new Secret with a fresh password: create it only when none exists."""
    password = secrets.token_urlsafe(32)
    url = f"redis://:{password}@{host(body)}:{PORT}/0"
    metadata = _metadata(body)
    metadata["labels"] = {**metadata["labels"], SECRET_LABEL: "true"}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "data": {
            PASSWORD_KEY: base64.b64encode(password.encode()).decode(),
            PROVISIONED_REDIS_KEY: base64.b64encode(url.encode()).decode(),
        },
    }


def service(body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(body),
        "spec": {
            "selector": selector_labels(APP, body["metadata"]["name"]),
            "ports": [{"name": APP, "port": PORT, "targetPort": APP, "protocol": "TCP"}],
        },
    }


def redis_args() -> list[str]:
    """redis-server's command line; ``$(REDIS_PASSWORD)`` is expanded by the kubelet."""
    return [
        "--port",
        str(PORT),
        "--dir",
        DATA_DIR,
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory",
        f"{MAXMEMORY_MB}mb",
        "--maxmemory-policy",
        "noeviction",
        "--requirepass",
        "$(REDIS_PASSWORD)",
    ]


def statefulset(body: Mapping[str, Any], spec: DelayQueueSpec) -> dict[str, Any]:
    name = body["metadata"]["name"]
    secret_name = provisioned_redis_name(name)
    container: dict[str, Any] = {
        "name": APP,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["redis-server"],
        "args": redis_args(),
        "env": [
            {
                "name": "REDIS_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": secret_name, "key": PASSWORD_KEY}},
            }
        ],
        "ports": [{"name": APP, "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": APP}, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"tcpSocket": {"port": APP}, "initialDelaySeconds": 10, "periodSeconds": 10},
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": f"{MEMORY_LIMIT_MI}Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}],
    }
    pod: dict[str, Any] = {
        "containers": [container],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": False,
    }
    sts_spec: dict[str, Any] = {
        "serviceName": provisioned_redis_name(name),
        "replicas": 1,
        "selector": {"matchLabels": selector_labels(APP, name)},
        "template": {"metadata": {"labels": common_labels(APP, name, COMPONENT)}, "spec": pod},
    }
    if spec.persistence_enabled:
        claim: dict[str, Any] = {
            "metadata": {"name": "data", "labels": common_labels(APP, name, COMPONENT)},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": VOLUME_SIZE}}},
        }
        if spec.storage_class_name:
            claim["spec"]["storageClassName"] = spec.storage_class_name
        sts_spec["volumeClaimTemplates"] = [claim]
        when_deleted = "Delete" if spec.delete_claim else "Retain"
        sts_spec["persistentVolumeClaimRetentionPolicy"] = {
            "whenDeleted": when_deleted,
            "whenScaled": "Retain",
        }
    else:
        pod["volumes"] = [{"name": "data", "emptyDir": {}}]
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _metadata(body), "spec": sts_spec}


def _metadata(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {
        "name": provisioned_redis_name(meta["name"]),
        "namespace": meta["namespace"],
        "labels": common_labels(APP, meta["name"], COMPONENT),
    }
