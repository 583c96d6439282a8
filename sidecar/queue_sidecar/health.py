"""``/healthz``, ``/readyz``, ``/v1/status`` and ``/metrics`` on the health port.

/healthz answers 200 while the process serves at all (kubelet liveness). /readyz answers 200 once
the sidecar serves (config loaded, health and publish APIs up) until it is asked to stop, and
never turns 503 because Redis, a beanstalkd node, a broker or the app is down: a native
sidecar's readiness gates its pod's, so a backend blip would take every consumer pod out of its
Services. Those troubles are in /v1/status (state and reason per queue) and in the
``queue_backend_up`` gauge instead. /metrics is the default Prometheus registry, where the
engines count deliveries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)

Readiness = Callable[[], list[str]]  # reasons the sidecar is not ready; empty when ready
Status = Callable[[], dict[str, Any]]  # the /v1/status document; refreshes the backend gauges


def build_health_app(not_ready_reasons: Readiness, status: Status) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        reasons = not_ready_reasons()
        if reasons:
            return web.json_response({"ready": False, "reasons": reasons}, status=503)
        return web.json_response({"ready": True})

    async def v1_status(_: web.Request) -> web.Response:
        return web.json_response(status())

    async def metrics(_: web.Request) -> web.Response:
        status()  # the backend-up gauges are read from the consumers at scrape time
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/v1/status", v1_status)
    app.router.add_get("/metrics", metrics)
    return app


class HasStats(Protocol):
    async def stats(self) -> object: ...


class HasLag(Protocol):
    async def lag(self) -> object: ...


async def refresh_queue_gauges(
    delay_admins: Mapping[str, HasStats], kafka_consumers: Mapping[str, HasLag], interval: float = 10.0
) -> None:
    """Keep the dq job-count and Kafka lag gauges current (cancel to stop).

    ``DelayAdmin.stats()`` and ``KafkaConsumer.lag()`` set ``queue_dq_jobs`` and
    ``queue_kafka_consumer_lag`` themselves; this only asks them on a timer.
    """
    # Consumers are still joining their groups at first: look again soon, then settle down.
    pauses = iter((1.0, 2.0))
    while True:
        await asyncio.sleep(next(pauses, interval))
        for queue, admin in delay_admins.items():
            try:
                await admin.stats()
            except Exception as exc:  # one queue's trouble must not stop the other gauges
                log.warning("dq stats failed", extra={"queue": queue, "error": str(exc)})
        for queue, consumer in kafka_consumers.items():
            try:
                await consumer.lag()
            except Exception as exc:
                log.warning("kafka lag failed", extra={"queue": queue, "error": str(exc)})
