"""Sidecar injection (SPEC section 3), pure: annotations read, queues resolved, the pod mutated.

``read_request(pod)`` reads the ``queue-operator.dev/*`` annotations, ``sidecar_queue(ref, body, i)``
turns a DelayQueue or KafkaQueue into a queue of the sidecar's config, and ``inject(pod, ...)``
returns the pod with the sidecar. No API calls here: ``queue_operator.webhook`` does the lookups
and serves the admission requests.
"""

from queue_operator.injection.annotations import (
    INJECT,
    SIDECAR_CONFIG,
    InjectionError,
    InjectionRequest,
    QueueRef,
    read_request,
    wants_injection,
)
from queue_operator.injection.pod import (
    CONTAINER,
    PUBLISH_URL_ENV,
    SidecarSettings,
    has_sidecar,
    inject,
    render_config,
)
from queue_operator.injection.queues import SidecarQueue, sidecar_queue

__all__ = [
    "CONTAINER",
    "INJECT",
    "PUBLISH_URL_ENV",
    "SIDECAR_CONFIG",
    "InjectionError",
    "InjectionRequest",
    "QueueRef",
    "SidecarQueue",
    "SidecarSettings",
    "has_sidecar",
    "inject",
    "read_request",
    "render_config",
    "sidecar_queue",
    "wants_injection",
]
