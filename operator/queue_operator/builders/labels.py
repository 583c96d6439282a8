"""The ``app.kubernetes.io/*`` labels every child object carries."""

from __future__ import annotations

PART_OF = "queue-operator"
MANAGED_BY = "queue-operator"


def selector_labels(app: str, instance: str) -> dict[str, str]:
    """The labels that pick a resource's pods; they never change, so selectors stay valid."""
    return {"app.kubernetes.io/name": app, "app.kubernetes.io/instance": instance}


def common_labels(app: str, instance: str, component: str) -> dict[str, str]:
    return {
        **selector_labels(app, instance),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
