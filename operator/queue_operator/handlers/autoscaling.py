"""Keep a queue's KEDA ScaledObject as ``spec.autoscaling`` says: applied, updated, or deleted."""

from __future__ import annotations

from typing import Any

import kopf

from queue_operator.builders import scaling
from queue_operator.kube import Kube, KubeError


def sync(kube: Kube, queue: kopf.Body, scaled: dict[str, Any] | None) -> str | None:
    """Apply ``scaled`` (owned by ``queue``), or delete the queue's ScaledObject when None.

    Returns what went wrong, for a condition; a cluster without KEDA is named as such.
    """
    meta = queue["metadata"]
    name = scaling.name_of(str(queue.get("kind") or ""), meta["name"])
    try:
        if scaled is None:
            kube.delete(scaling.API_VERSION, scaling.KIND, meta["namespace"], name)
            return None
        kopf.adopt(scaled, owner=queue)
        kube.apply(scaled)
    except KubeError as exc:
        if scaled is None and exc.status == 404:
            return None  # no KEDA, hence no ScaledObject to delete
        if exc.status == 404:
            return (
                f"spec.autoscaling needs KEDA: this cluster serves no {scaling.KIND} "
                f"({scaling.API_VERSION}); install KEDA (2.16 or newer) or remove spec.autoscaling"
            )
        return f"applying {scaling.KIND} {name} failed: {exc}"
    return None
