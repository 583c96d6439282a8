"""The pod with its sidecar: pure, idempotent, the pod in and the mutated copy out.

The sidecar runs as a native sidecar (an init container with ``restartPolicy: Always``,
Kubernetes 1.29 and later): it starts before the app containers and its startup probe holds
them back until it serves, so ``QUEUE_PUBLISH_URL`` works from the app's first request; it stops
after them, so the app can still publish while it shuts down; and a Job's pod completes when its
app containers do, which a plain second container would prevent.

Its config is the rendered YAML in the pod annotation ``queue-operator.dev/sidecar-config``,
mounted as a file with a downward API volume: no per-pod ConfigMap to create, own or clean up.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from queue_operator.injection.annotations import HEALTH_PORT, SIDECAR_CONFIG, InjectionRequest
from queue_operator.injection.queues import SidecarQueue

# libyaml's emitter when present: the config's YAML is most of the time an injection takes.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

CONTAINER = "queue-sidecar"
CONFIG_VOLUME = "queue-sidecar-config"
CONFIG_DIR = "/etc/queue-sidecar"
CONFIG_FILE = "config.yaml"
PUBLISH_URL_ENV = "QUEUE_PUBLISH_URL"
PUBLISH_PORT_NAME = "queue-publish"
HEALTH_PORT_NAME = "queue-health"
DEFAULT_IMAGE = "ghcr.io/queue-operator/queue-operator:latest"
RUN_AS = 65532  # a non-root uid; the sidecar needs no privileges and writes no files
DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
}


@dataclass(frozen=True)
class SidecarSettings:
    """What the operator decides for every injected sidecar (flags and chart values)."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    resources: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_RESOURCES))
    # Added to the pod's imagePullSecrets when the sidecar's image is in a private registry.
    image_pull_secrets: tuple[str, ...] = ()


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    """The pod already carries the sidecar (injected before, or written by hand)."""
    spec = pod.get("spec") or {}
    return any(
        isinstance(c, Mapping) and c.get("name") == CONTAINER
        for part in ("initContainers", "containers")
        for c in (spec.get(part) or [])
    )


def render_config(request: InjectionRequest, queues: Sequence[SidecarQueue]) -> dict[str, Any]:
    """The sidecar's config (SPEC section 6), as the mapping its YAML file holds."""
    return {
        "app": {
            "protocol": request.app_protocol,
            "port": request.app_port,
            "path": request.app_path,
            "maxConcurrency": request.max_concurrency,
        },
        "publish": {"port": request.publish_port},
        "health": {"port": HEALTH_PORT},
        "queues": [_with_bulk(queue.config, request.bulk) for queue in queues],
    }


def _with_bulk(queue: dict[str, Any], bulk: dict[str, Any] | None) -> dict[str, Any]:
    """The pod's bulk annotations win over the queue resource's ``spec.delivery.bulk``."""
    if bulk is None:
        return queue
    return {**queue, "delivery": {**queue.get("delivery", {}), "bulk": dict(bulk)}}


def inject(
    pod: Mapping[str, Any],
    request: InjectionRequest,
    queues: Sequence[SidecarQueue],
    settings: SidecarSettings,
) -> dict[str, Any]:
    """A copy of ``pod`` with the sidecar, its config and volumes, and the publish URL in each app.

    A pod that already has the sidecar keeps it (and its config) as it is; only app containers
    added since (by a later webhook) get ``QUEUE_PUBLISH_URL``. So ``inject(inject(p)) == inject(p)``.
    """
    result: dict[str, Any] = copy.deepcopy(dict(pod))
    spec = result.setdefault("spec", {})
    if not has_sidecar(result):
        config = yaml.dump(render_config(request, queues), Dumper=_DUMPER, sort_keys=False)
        result.setdefault("metadata", {}).setdefault("annotations", {})[SIDECAR_CONFIG] = config
        labels = result["metadata"].setdefault("labels", {})
        for queue in queues:
            labels.update(queue.labels)
        volumes = spec.setdefault("volumes", [])
        for volume in [_config_volume(), *(v for q in queues for v in q.volumes)]:
            if not any(v.get("name") == volume["name"] for v in volumes):
                volumes.append(volume)
        # First: init containers after it may publish too.
        spec["initContainers"] = [_container(request, queues, settings), *(spec.get("initContainers") or [])]
        if settings.image_pull_secrets:
            pull = spec.setdefault("imagePullSecrets", [])
            for name in settings.image_pull_secrets:
                if not any(isinstance(s, Mapping) and s.get("name") == name for s in pull):
                    pull.append({"name": name})
    publish_url = {"name": PUBLISH_URL_ENV, "value": f"http://127.0.0.1:{request.publish_port}"}
    for container in spec.get("containers") or []:
        env = container.setdefault("env", [])
        if not any(e.get("name") == PUBLISH_URL_ENV for e in env):
            env.append(dict(publish_url))
    return result


def _config_volume() -> dict[str, Any]:
    field_path = f"metadata.annotations['{SIDECAR_CONFIG}']"
    return {
        "name": CONFIG_VOLUME,
        "downwardAPI": {"items": [{"path": CONFIG_FILE, "fieldRef": {"fieldPath": field_path}}]},
    }


def _container(
    request: InjectionRequest, queues: Sequence[SidecarQueue], settings: SidecarSettings
) -> dict[str, Any]:
    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": HEALTH_PORT_NAME},
            "periodSeconds": period,
            "failureThreshold": failures,
        }

    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",  # a native sidecar
        "command": ["queue-sidecar", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "ports": [
            {"name": PUBLISH_PORT_NAME, "containerPort": request.publish_port, "protocol": "TCP"},
            {"name": HEALTH_PORT_NAME, "containerPort": HEALTH_PORT, "protocol": "TCP"},
        ],
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            *(m for q in queues for m in q.mounts),
        ],
        "startupProbe": probe("/healthz", 1, 60),
        "livenessProbe": probe("/healthz", 10, 3),
        "readinessProbe": probe("/readyz", 5, 2),
        "resources": copy.deepcopy(settings.resources),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    return container
