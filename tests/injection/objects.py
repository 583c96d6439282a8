"""Pods and queue resources as the webhook sees them."""

from __future__ import annotations

from typing import Any

NAMESPACE = "shop"


def pod(annotations: dict[str, str], containers: int = 1) -> dict[str, Any]:
    """A pod as in an AdmissionReview of a controller-created pod: no name, no namespace."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "worker-", "annotations": dict(annotations)},
        "spec": {
            "containers": [
                {
                    "name": f"app{i}" if i else "app",
                    "image": "example/app:1",
                    "ports": [{"containerPort": 8080}],
                }
                for i in range(containers)
            ]
        },
    }


def delay_queue(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "queue-operator.dev/v1alpha1",
        "kind": "DelayQueue",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"redis": {"url": "redis://redis:6379/0"}, **spec},
    }


def kafka_queue(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "queue-operator.dev/v1alpha1",
        "kind": "KafkaQueue",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"brokers": ["kafka-0.kafka:9092"], **spec},
    }
