"""Delivering messages to the app in the pod: over HTTP or gRPC, after the app is up.

:func:`build_delivery` gives the one :class:`AppDelivery` a sidecar uses for all its queues.
"""

from __future__ import annotations

from queue_sidecar.config import AppConfig
from queue_sidecar.delivery.base import AppDelivery, Transport
from queue_sidecar.delivery.envelope import Envelope
from queue_sidecar.delivery.grpc import GrpcTransport
from queue_sidecar.delivery.http import HttpTransport
from queue_sidecar.delivery.readiness import AppProbe

__all__ = ["AppDelivery", "AppProbe", "Envelope", "Transport", "build_delivery"]


def build_delivery(app: AppConfig, probe: AppProbe) -> AppDelivery:
    transport: Transport
    if app.protocol == "grpc":
        transport = GrpcTransport(app.host, app.port)
    else:
        transport = HttpTransport(app.host, app.port, app.path, app.max_concurrency)
    return AppDelivery(transport, probe, app.max_concurrency)
