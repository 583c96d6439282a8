"""What the user applies in the end-to-end bed: a namespace, the two queues, an annotated app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

APP = Path(__file__).resolve().parents[1] / "apps" / "e2e_app.py"
NAMESPACE = "shop"
GROUP_VERSION = "queue-operator.dev/v1alpha1"
# tansu joins a group in ~3 s with these, ~25 s with librdkafka's defaults; a member leaving during a
# rebalance (a rolled pod) holds tansu's rebalance for max.poll.interval.ms (300 s by default).
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500, "max.poll.interval.ms": 10000}


def namespace() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def delay_queue(name: str, replicas: int = 3) -> dict[str, Any]:
    # No spec.redis: the operator provisions the Redis (a StatefulSet the kubelet stand-in runs).
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "DelayQueue",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"replicas": replicas},
    }


def kafka_queue(name: str, broker: str) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "KafkaQueue",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "brokers": [broker],
            "topic": {"partitions": 2},
            "offset": "first",
            "deletionPolicy": "Delete",
            "librdkafka": FAST_GROUP,
        },
    }


def app(name: str, queues: list[str], records: Path) -> dict[str, Any]:
    """The user's Deployment: annotated for injection, its image standing for tests/apps/e2e_app.py."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            # Not RollingUpdate: tansu never completes a rebalance that the old pod's consumer leaves
            # in the middle of (docs/e2e.md); Recreate lets the new pod join a group with no member.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "queue-operator.dev/inject": "true",
                        "queue-operator.dev/queues": ",".join(queues),
                        "queue-operator.dev/app-port": "8080",
                    },
                },
                "spec": {
                    "terminationGracePeriodSeconds": 15,
                    "containers": [
                        {
                            "name": "app",
                            "image": "localhost/e2e-app:dev",
                            "command": ["python", str(APP)],  # the kubelet stand-in runs the venv's python
                            "args": ["--port", "8080", "--records", "/records"],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
                            "volumeMounts": [{"name": "records", "mountPath": "/records"}],
                        }
                    ],
                    "volumes": [{"name": "records", "hostPath": {"path": str(records)}}],
                },
            },
        },
    }
