"""The sidecar's life: open the queues, serve health and publish, wait for the app, consume, drain.

Order matters. Health and publish start first (publishing needs no app; /readyz must answer
while waiting). Consumers start only once the app accepts connections, so no message is taken
from a queue before someone can handle it. On stop, consumers stop taking messages and finish
(or hand back) what is in flight within the grace period; only then do the app connection and
the publish API close, since an app may still publish while handling its last messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc
from aiohttp import web
from prometheus_client import Gauge

from queue_engine.dq import DelayAdmin, DelayConsumer, DelayProducer
from queue_engine.dq.membership import Membership, NodesFileWatcher
from queue_engine.kq import KafkaConsumer, KafkaPusher
from queue_engine.policy import DeliveryPolicy
from queue_sidecar.config import DelayQueueConfig, KafkaQueueConfig, SidecarConfig
from queue_sidecar.delivery import AppDelivery, AppProbe, build_delivery
from queue_sidecar.health import build_health_app, refresh_queue_gauges
from queue_sidecar.publish.broker_watch import BrokerWatch
from queue_sidecar.publish.delay_jobs import DelayJobs
from queue_sidecar.publish.group_start import GroupStart
from queue_sidecar.publish.grpc import start_server as start_publish_grpc
from queue_sidecar.publish.http import serve as serve_publish_http
from queue_sidecar.publish.http_server import LeanHttpServer
from queue_sidecar.publish.targets import PublishTargets

log = logging.getLogger(__name__)

BACKEND_UP = Gauge(
    "queue_backend_up",
    "1 when the queue's backend (beanstalkd nodes and Redis, or the Kafka brokers) can be used, else 0",
    ["queue", "kind"],
)

GAUGE_REFRESH_SECONDS = 10.0
# A consumer that fails (brokers unreachable at start, ...) is rebuilt after this backoff, while
# the health and publish servers keep serving and /readyz says why.
RESTART_INITIAL_SECONDS = 1.0
RESTART_MAX_SECONDS = 30.0
STABLE_RUN_SECONDS = 60.0  # a consumer that ran this long starts its next backoff afresh
# Jobs in flight at once per delay queue under bulk delivery, at most: the dq consumer keeps a
# thread and a Redis connection per call in flight. (Kafka forms its batches in the engine.)
DQ_MAX_BULK_CONCURRENCY = 256


class Consumer(Protocol):
    async def run(self) -> None: ...

    async def stop(self, grace: float) -> None: ...

    def health(self) -> tuple[bool, str]: ...


class Sidecar:
    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.probe = AppProbe(config.app.host, config.app.port)
        self.delivery: AppDelivery = build_delivery(config.app, self.probe)
        self.targets = PublishTargets()
        self.consumers: dict[str, Consumer] = {}  # the current consumer of each queue
        self.delay_admins: dict[str, DelayAdmin] = {}
        self.kafka_consumers: dict[str, KafkaConsumer] = {}
        self._new_consumer: dict[str, Callable[[], Consumer]] = {}
        self._node_watches: dict[str, NodesFileWatcher] = {}  # DelayQueues given a nodesFile
        self._consuming = False
        self._serving = False
        self._stop = asyncio.Event()
        self._runners: list[web.AppRunner] = []
        self._publish_http: LeanHttpServer | None = None
        self._grpc_server: grpc.aio.Server | None = None
        for queue in config.queues:
            if isinstance(queue, DelayQueueConfig):
                self._open_delay_queue(queue)
            else:
                self._open_kafka_queue(queue)

    def _engine_policy(self, policy: DeliveryPolicy) -> DeliveryPolicy:
        # The per-attempt timeout is enforced by the delivery path from the moment the app gets
        # the message; the engine's own timer is only a backstop that must also cover waiting
        # for a free slot behind the other queues' messages.
        backstop = policy.timeout * max(1, len(self.config.queues)) + 5.0
        return dataclasses.replace(policy, timeout=backstop)

    def _engine_concurrency(self, queue: DelayQueueConfig, cap: int) -> int:
        """Messages the engine hands out at once: one per app call, or enough to fill every batch.

        With bulk delivery the app still sees at most ``maxConcurrency`` calls at a time (one
        per batch); the engine must hold that many batches' worth of messages to fill them.
        """
        bulk = queue.delivery.bulk
        if bulk is None:
            return self.config.app.max_concurrency
        return max(
            self.config.app.max_concurrency, min(cap, self.config.app.max_concurrency * bulk.max_messages)
        )

    def _open_delay_queue(self, queue: DelayQueueConfig) -> None:
        policy = queue.policy()
        nodes = queue.membership()
        self.targets.delay[queue.name] = DelayProducer(
            nodes.active, queue.tube, queue.redis_url, max_job_bytes=queue.max_job_bytes, name=queue.name
        )
        if nodes.draining:
            self.targets.delay[queue.name].set_nodes(nodes.active, nodes.draining)
        self.targets.delay_jobs[queue.name] = DelayJobs(queue.name, nodes.all, queue.tube, queue.redis_url)
        if queue.nodes_file is not None:
            self._node_watches[queue.name] = NodesFileWatcher(
                queue.nodes_file, functools.partial(self._nodes_changed, queue.name)
            )

        # One handler (and with bulk delivery one batcher) per queue, kept across consumer rebuilds.
        handler = self.delivery.delay_handler(policy.timeout, queue.delivery.bulk)

        def new_consumer() -> Consumer:
            # A consumer started again after a failure starts on the nodes known now.
            watch = self._node_watches.get(queue.name)
            current = watch.current if watch is not None else nodes
            return DelayConsumer(
                current.all,
                queue.tube,
                queue.redis_url,
                handler,
                policy=self._engine_policy(policy),
                concurrency=self._engine_concurrency(queue, DQ_MAX_BULK_CONCURRENCY),
                name=queue.name,
            )

        self._new_consumer[queue.name] = new_consumer
        self.consumers[queue.name] = new_consumer()  # now, so that a bad setting fails at start
        self.delay_admins[queue.name] = DelayAdmin(nodes.all, queue.tube, queue.redis_url, name=queue.name)

    async def _nodes_changed(self, name: str, nodes: Membership) -> None:
        """The operator changed the queue's nodes: producer, consumer and admin follow, live."""
        self.targets.delay[name].set_nodes(nodes.active, nodes.draining)
        self.targets.delay_jobs[name].set_nodes(nodes.all)
        self.delay_admins[name].set_nodes(nodes.active, nodes.draining)
        consumer = self.consumers[name]
        if isinstance(consumer, DelayConsumer):
            consumer.set_nodes(nodes.active, nodes.draining)

    def _open_kafka_queue(self, queue: KafkaQueueConfig) -> None:
        policy = queue.policy()
        security = queue.security()
        watch = self.targets.kafka_watches[queue.name] = BrokerWatch(queue.name, list(queue.brokers))
        self.targets.kafka[queue.name] = KafkaPusher(
            queue.brokers, queue.topic, security=security, extra=watch.librdkafka_config(), name=queue.name
        )
        if queue.offset == "last":
            self.targets.kafka_starts[queue.name] = GroupStart(
                list(queue.brokers), queue.topic, queue.group, security
            )

        # Bulk: the engine forms the batches, ``maxConcurrency`` of them in flight (one app call each).
        bulk = queue.delivery.bulk
        handler = None if bulk is not None else self.delivery.kafka_handler(policy.timeout)
        batch_handler = None if bulk is None else self.delivery.kafka_batch_handler(policy.timeout)

        def new_consumer() -> Consumer:
            consumer = KafkaConsumer(
                queue.brokers,
                queue.topic,
                queue.group,
                handler,
                batch_handler=batch_handler,
                max_batch=None if bulk is None else bulk.max_messages,
                max_batch_wait=None if bulk is None else bulk.max_wait,
                offset=queue.offset,
                concurrency=self.config.app.max_concurrency,
                policy=self._engine_policy(policy),
                dead_letter_topic=queue.dead_letter_topic,
                security=security,
                name=queue.name,
                extra=dict(queue.librdkafka) or None,
            )
            self.kafka_consumers[queue.name] = consumer
            return consumer

        self._new_consumer[queue.name] = new_consumer
        self.consumers[queue.name] = new_consumer()

    def not_ready_reasons(self) -> list[str]:
        """Why /readyz is 503: only the sidecar's own state, never a backend's or the app's."""
        reasons = []
        if not self._serving:
            reasons.append("health and publish APIs not serving yet")
        if self._stop.is_set():
            reasons.append("shutting down")
        return reasons

    def status(self) -> dict[str, Any]:
        """The /v1/status document: the app and each queue's state and reason.

        States: ``waiting`` (for the app; nothing is taken from the queue meanwhile),
        ``consuming``, ``unavailable`` (its backend cannot be used: the reason says which),
        ``stopping``. Also sets the ``queue_backend_up`` gauge of each started queue.
        """
        app = f"{self.config.app.host}:{self.config.app.port}"
        app_up = self.probe.up
        queues: dict[str, dict[str, Any]] = {}
        for queue in self.config.queues:
            consumer = self.consumers[queue.name]
            ok, why = consumer.health()
            if self._stop.is_set():
                state, reason = "stopping", "shutting down"
            elif not self._consuming:
                state, reason = "waiting", f"app not accepting connections on {app}"
            elif not ok:
                state, reason = "unavailable", why
            else:
                state, reason = "consuming", why
            if self._consuming:
                BACKEND_UP.labels(queue=queue.name, kind=queue.kind).set(1 if ok else 0)
            queues[queue.name] = {"kind": queue.kind, "state": state, "reason": reason}
            # Settings of its backend that can lose data (a Redis that evicts or forgets).
            warnings = getattr(consumer, "redis_warnings", None)
            if warnings:
                queues[queue.name]["warnings"] = list(warnings)
            watch = self.targets.kafka_watches.get(queue.name)
            if watch is not None and watch.down is not None:
                queues[queue.name]["publish"] = watch.down  # pushes are refused at once meanwhile
        problem = self.delivery.misconfiguration
        healthy = app_up and problem is None and all(q["state"] == "consuming" for q in queues.values())
        app_status: dict[str, Any] = {"address": app, "up": app_up}
        if problem is not None:
            app_status["problem"] = problem
        return {
            "ready": not self.not_ready_reasons(),
            "healthy": healthy,
            "app": app_status,
            "queues": queues,
        }

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stop requested: draining", extra={"grace_seconds": self.config.shutdown_grace_period})
        self._stop.set()

    async def run(self) -> None:
        """Serve until :meth:`request_stop`, then drain and close everything."""
        background: list[asyncio.Task[Any]] = []
        consumer_tasks: dict[str, asyncio.Task[None]] = {}
        try:
            await self._serve_health()
            await self._serve_publish()
            self._serving = True
            log.info(
                "sidecar started",
                extra={
                    "queues": [q.name for q in self.config.queues],
                    "app": f"{self.config.app.protocol}://{self.config.app.host}:{self.config.app.port}",
                    "publish_port": self.config.publish.port,
                    "publish_grpc_port": self.config.publish.grpc_port,
                    "health_port": self.config.health.port,
                },
            )
            if not await self._wait_for_app():
                return
            background.append(asyncio.create_task(self.probe.watch(), name="app-probe"))
            background.append(
                asyncio.create_task(
                    refresh_queue_gauges(self.delay_admins, self.kafka_consumers, GAUGE_REFRESH_SECONDS),
                    name="queue-gauges",
                )
            )
            for name, watch in self._node_watches.items():
                background.append(asyncio.create_task(watch.run(), name=f"nodes-{name}"))
            for name in self.consumers:
                consumer_tasks[name] = asyncio.create_task(self._supervise(name), name=f"consume-{name}")
            self._consuming = True
            log.info("consuming", extra={"queues": list(self.consumers)})
            await self._stop.wait()
        finally:
            await self._shutdown(consumer_tasks, background)

    async def _wait_for_app(self) -> bool:
        """True once the app is up; False if asked to stop first."""
        waiting = asyncio.create_task(self.probe.wait_until_up())
        stopping = asyncio.create_task(self._stop.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (waiting, stopping):
            task.cancel()
        return self.probe.up and not self._stop.is_set()

    async def _supervise(self, name: str) -> None:
        """Run the queue's consumer; if it fails on its own, log why and run a new one."""
        backoff = RESTART_INITIAL_SECONDS
        consumer = self.consumers[name]
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await consumer.run()
                error = "returned without being asked to stop"
            except Exception as exc:
                error = str(exc) or type(exc).__name__
            if self._stop.is_set():
                return
            if time.monotonic() - started > STABLE_RUN_SECONDS:
                backoff = RESTART_INITIAL_SECONDS
            # Its health() now says why it failed, so /readyz names the queue meanwhile.
            log.error(
                "consumer failed; starting a new one",
                extra={"queue": name, "error": error, "retry_in_seconds": backoff},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            if self._stop.is_set():
                return
            backoff = min(RESTART_MAX_SECONDS, backoff * 2)
            consumer = self.consumers[name] = self._new_consumer[name]()

    async def _shutdown(
        self, consumer_tasks: dict[str, asyncio.Task[None]], background: list[asyncio.Task[Any]]
    ) -> None:
        grace = self.config.shutdown_grace_period
        self._stop.set()
        for task in background:
            task.cancel()
        if consumer_tasks:
            stops = [consumer.stop(grace) for consumer in self.consumers.values()]
            try:
                await asyncio.wait_for(asyncio.gather(*stops, return_exceptions=True), grace + 2.0)
            except TimeoutError:
                log.warning("consumers did not stop within the grace period")
            for task in consumer_tasks.values():
                if not task.done():
                    task.cancel()
            await asyncio.gather(*consumer_tasks.values(), return_exceptions=True)
        await asyncio.gather(*background, return_exceptions=True)
        await self.delivery.close()
        if self._grpc_server is not None:
            await self._grpc_server.stop(1.0)
        if self._publish_http is not None:
            await self._publish_http.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        with contextlib.suppress(Exception):
            await self.targets.close()
        for admin in self.delay_admins.values():
            with contextlib.suppress(Exception):
                await admin.close()
        log.info("sidecar stopped")

    async def _serve_health(self) -> None:
        health = self.config.health
        await self._serve(build_health_app(self.not_ready_reasons, self.status), health.host, health.port)

    async def _serve_publish(self) -> None:
        publish = self.config.publish
        self._publish_http = await serve_publish_http(self.targets, publish.host, publish.port)
        if publish.grpc_port is not None:
            self._grpc_server = await start_publish_grpc(self.targets, publish.host, publish.grpc_port)

    async def _serve(self, app: web.Application, host: str, port: int) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, host, port, reuse_address=True).start()
