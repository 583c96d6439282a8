"""What both transports share: the concurrency cap across queues and the engine handlers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Counter

from queue_engine.policy import Outcome, Verdict
from queue_sidecar.delivery.envelope import Envelope
from queue_sidecar.delivery.readiness import AppProbe

if TYPE_CHECKING:
    from queue_engine.dq import DelayJob
    from queue_engine.kq import KafkaMessage

log = logging.getLogger(__name__)

APP_ANSWERS = Counter(
    "queue_sidecar_app_answers",
    "The app's answers to delivery attempts: success, retry, drop, or unavailable (not reached)",
    ["kind", "queue", "answer"],
)


class Transport(Protocol):
    """Sends one attempt to the app and turns its answer into an Outcome; never raises."""

    async def send(self, envelope: Envelope, attempt_timeout: float) -> Outcome: ...

    async def close(self) -> None: ...


class AppDelivery:
    """Delivers messages of every queue to the one app, at most ``max_concurrency`` at a time."""

    def __init__(self, transport: Transport, probe: AppProbe, max_concurrency: int) -> None:
        self.transport = transport
        self.probe = probe
        self._slots = asyncio.Semaphore(max_concurrency)

    async def deliver(self, envelope: Envelope, attempt_timeout: float) -> Outcome:
        # The per-attempt timeout starts when a slot is free: waiting behind other queues'
        # messages is not the app's fault and must not turn into a burned attempt.
        async with self._slots:
            outcome = await self.transport.send(envelope, attempt_timeout)
        if not outcome.attempted:
            self.probe.mark(False)
        answer = "unavailable" if not outcome.attempted else outcome.verdict.value.lower()
        APP_ANSWERS.labels(envelope.kind, envelope.queue, answer).inc()
        if outcome.verdict is not Verdict.SUCCESS:
            log.info(
                "app answered %s",
                answer,
                extra={
                    "queue": envelope.queue,
                    "message_id": envelope.id,
                    "attempt": envelope.attempt,
                    "error": outcome.error,
                },
            )
        return outcome

    def delay_handler(self, timeout: float) -> Callable[[DelayJob], Awaitable[Outcome]]:
        async def handle(job: DelayJob) -> Outcome:
            return await self.deliver(Envelope.from_delay_job(job), timeout)

        return handle

    def kafka_handler(self, timeout: float) -> Callable[[KafkaMessage], Awaitable[Outcome]]:
        async def handle(message: KafkaMessage) -> Outcome:
            return await self.deliver(Envelope.from_kafka_message(message), timeout)

        return handle

    async def close(self) -> None:
        await self.transport.close()
