"""The operator's own Prometheus metrics, served on ``--metrics-port`` (``/metrics``).

What a person running the operator asks: is there a leader, do reconciliations succeed and how
long they take, which queues are not Ready, and how the webhook answers. Queue traffic itself is
counted by the sidecars. The registry is prometheus_client's default, so the process collectors
(memory, CPU, open files) come along.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import kopf
import prometheus_client
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILIATIONS = prometheus_client.Counter(
    "queue_operator_reconciliations_total",
    "Handler runs by resource kind, handler (reconcile, observe) and result "
    "(success, retry: a transient failure retried with backoff, invalid: a spec to fix, error).",
    ["kind", "handler", "result"],
)
RECONCILE_SECONDS = prometheus_client.Histogram(
    "queue_operator_reconcile_duration_seconds",
    "Time one handler run took.",
    ["kind", "handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LEADER = prometheus_client.Gauge(
    "queue_operator_leader",
    "1 while this controller replica holds the leader Lease (or runs without election), else 0.",
)
ADMISSIONS = prometheus_client.Counter(
    "queue_operator_webhook_admissions_total",
    "AdmissionReviews answered by result (injected, unchanged, refused, error).",
    ["result"],
)
ADMISSION_SECONDS = prometheus_client.Histogram(
    "queue_operator_webhook_admission_duration_seconds",
    "Time from an AdmissionReview's arrival to its answer, inside the webhook.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)


class QueueReadiness(Collector):
    """``queue_operator_queue_ready{kind,namespace,name}``: 1 when the queue's Ready condition is
    True. Kept from the watch events, so a deleted queue's series goes with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[tuple[str, str, str], bool] = {}

    def seen(self, kind: str, namespace: str, name: str, status: Mapping[str, Any] | None) -> None:
        with self._lock:
            self._ready[(kind, namespace, name)] = ready_in(status)

    def gone(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._ready.pop((kind, namespace, name), None)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "queue_operator_queue_ready",
            "1 while the queue resource's Ready condition is True, else 0.",
            labels=["kind", "namespace", "name"],
        )
        with self._lock:
            items = sorted(self._ready.items())
        for (kind, namespace, name), ready in items:
            family.add_metric([kind, namespace, name], 1.0 if ready else 0.0)
        yield family


def ready_in(status: Mapping[str, Any] | None) -> bool:
    conditions = (status or {}).get("conditions") or []
    return any(
        isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
    )


READINESS = QueueReadiness()
prometheus_client.REGISTRY.register(READINESS)


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` from a daemon thread (also while a follower waits for the Lease)."""
    prometheus_client.start_http_server(port, addr=host)


def instrumented(kind: str, handler: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a synchronous kopf handler) counted and timed; kopf sees the same outcomes."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = "error"
        try:
            value = fn(*args, **kwargs)
            result = "success"
            return value
        except kopf.TemporaryError:
            result = "retry"
            raise
        except kopf.PermanentError:
            result = "invalid"
            raise
        finally:
            RECONCILIATIONS.labels(kind, handler, result).inc()
            RECONCILE_SECONDS.labels(kind, handler).observe(time.perf_counter() - started)

    return run


def track_readiness(kind: str) -> Callable[..., Awaitable[None]]:
    """A kopf event handler keeping :data:`READINESS` in step with the watch (async: a dict
    update needs no worker thread)."""

    async def on_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        namespace, name = str(body.metadata.namespace), str(body.metadata.name)
        if type == "DELETED":
            READINESS.gone(kind, namespace, name)
        else:
            READINESS.seen(kind, namespace, name, body.get("status"))

    return on_event


def admission_result(response: Any) -> str:
    """injected (a patch), unchanged (allowed as it is) or refused, from the review kopf built."""
    answer = response.get("response") if isinstance(response, Mapping) else None
    if not isinstance(answer, Mapping):
        return "error"
    if not answer.get("allowed"):
        return "refused"
    return "injected" if answer.get("patch") else "unchanged"
