"""The operator's runtime knobs and the kopf settings made from them."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import kopf
from kopf._core.intents.handlers import TimerHandler

from queue_operator import metrics
from queue_operator.redis_check import RedisChecks

if TYPE_CHECKING:
    from queue_operator.topics import AdminPool

GROUP = "queue-operator.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FINALIZER = f"{GROUP}/finalizer"
KINDS = {"delayqueues": "DelayQueue", "kafkaqueues": "KafkaQueue"}
STATEFULSET_SELECTOR = "app.kubernetes.io/managed-by=queue-operator,app.kubernetes.io/name=beanstalkd"


@dataclass(frozen=True)
class Options:
    """Timings in seconds; the defaults suit a cluster, tests shorten them."""

    reconcile_interval: float = 60.0  # the periodic check of actual against desired state
    retry_delay: float = 10.0  # first wait before retrying a step that failed for a transient reason
    retry_delay_max: float = 300.0  # the waits double up to this
    watch_timeout: float = 300.0  # server-side watch timeout; kopf re-lists and re-watches after it
    kafka_timeout: float = 5.0  # bound of each call to the Kafka brokers
    delete_retries: int = 30  # tries to delete topics before the finalizer is released anyway
    delete_timeout: float = 300.0  # and the time since deletion after which it is released anyway
    workers: int = 8  # threads for the (blocking) handlers
    # Before a leaving node's jobs move: every sidecar must have seen it draining. Mounted
    # ConfigMaps reach pods within the kubelet's sync period (a minute by default) plus its cache.
    drain_grace: float = 120.0

    def backoff(self, retry: int) -> float:
        """The wait before retry number ``retry + 1``: doubling from retry_delay, capped."""
        return float(min(self.retry_delay * 2 ** min(retry, 30), max(self.retry_delay, self.retry_delay_max)))


def register_level_based(
    registry: kopf.OperatorRegistry,
    plural: str,
    options: Options,
    reconcile: Callable[..., Any],
    observe: Callable[..., Any],
) -> None:
    """The shape both resources share: one ``reconcile`` for create, spec update and resume,
    and an ``observe`` timer that compares what exists with the spec and writes status."""
    on: dict[str, Any] = {"registry": registry, "backoff": options.retry_delay}
    kind = KINDS[plural]
    reconcile = metrics.instrumented(kind, "reconcile", reconcile)
    observe = metrics.instrumented(kind, "observe", observe)
    kopf.on.event(GROUP, VERSION, plural, id="readiness-metric", registry=registry)(
        metrics.track_readiness(kind)
    )
    kopf.on.create(GROUP, VERSION, plural, id="reconcile", **on)(reconcile)
    kopf.on.resume(GROUP, VERSION, plural, id="reconcile", **on)(reconcile)
    kopf.on.update(GROUP, VERSION, plural, id="reconcile", field="spec", **on)(reconcile)
    kopf.timer(
        GROUP,
        VERSION,
        plural,
        id="observe",
        interval=options.reconcile_interval,
        initial_delay=options.reconcile_interval,
        **on,
    )(observe)
    _timers_without_finalizer(registry)


def _timers_without_finalizer(registry: kopf.OperatorRegistry) -> None:
    """Take back the finalizer kopf gives every timer (nolar/kopf#1074).

    kopf blocks deletion of any object with a timer, so that it can stop the timer first. Ours
    only read and write status, and kopf stops a timer by itself when its object's DELETED
    event arrives. With the finalizer, deleting a resource, its namespace or the CRDs would hang
    while the operator is down or uninstalled; finalizers are kept only for what must be cleaned
    up outside Kubernetes (a KafkaQueue's topics with ``deletionPolicy: Delete``).
    kopf has no public switch for this, hence the replacement of its (frozen) handler records.
    """
    spawning = registry._spawning
    spawning._handlers = [
        dataclasses.replace(handler, requires_finalizer=False)
        if isinstance(handler, TimerHandler) and handler.requires_finalizer
        else handler
        for handler in spawning._handlers
    ]


def operator_settings(options: Options) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Only our beanstalkd StatefulSets are watched, selected by the API server: the cost follows
    # our resources, not every StatefulSet of the cluster.
    settings.watching.label_selectors["apps", "statefulsets"] = STATEFULSET_SELECTOR
    settings.watching.server_timeout = int(options.watch_timeout)
    settings.watching.client_timeout = int(options.watch_timeout) + 10
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.execution.max_workers = options.workers
    # A resource's worker task (and the last event it holds) goes 1 s after its last event, not
    # kopf's 5 s: after a burst of creations, memory is given back sooner; a later event just
    # starts a new worker.
    settings.batching.idle_timeout = 1.0
    # Handler successes are logged; only warnings and errors become Kubernetes events.
    settings.posting.level = logging.WARNING
    return settings


class Runtime:
    """What every handler needs, handed over through kopf's ``memo``."""

    def __init__(self, options: Options, kube: Any) -> None:
        self.options = options
        self.kube = kube
        self._admins: AdminPool | None = None
        self._admins_lock = threading.Lock()
        self.redis_checks = RedisChecks()

    @property
    def admins(self) -> AdminPool:
        """The shared Kafka admin clients, made (and the Kafka client loaded) at the first
        KafkaQueue: an operator with only DelayQueues never loads librdkafka."""
        with self._admins_lock:  # handlers run on several threads: one pool for all
            if self._admins is None:
                from queue_operator.topics import AdminPool  # noqa: PLC0415 - see above

                self._admins = AdminPool()
            return self._admins
