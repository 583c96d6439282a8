"""What both transports share: the concurrency cap across queues and the engine handlers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Counter, Gauge, Histogram

from queue_engine.policy import Outcome, Verdict
from queue_sidecar.delivery.batcher import Batcher
from queue_sidecar.delivery.envelope import Envelope, PathMisconfigured
from queue_sidecar.delivery.readiness import AppProbe
from queue_sidecar.logs import Throttle

if TYPE_CHECKING:
    from queue_engine.dq import DelayJob
    from queue_engine.kq import KafkaMessage
    from queue_sidecar.config import BulkConfig

log = logging.getLogger(__name__)

APP_ANSWERS = Counter(
    "queue_sidecar_app_answers",
    "The app's answers to delivery attempts: success, retry, drop, or unavailable (not reached)",
    ["kind", "queue", "answer"],
)

# Finer than the engines' queue_delivery_latency_seconds: this is where the sidecar's own
# sub-millisecond cost shows (a trivial app answers in well under a millisecond).
APP_CALL_SECONDS = Histogram(
    "queue_sidecar_app_call_seconds",
    "Time from sending an attempt to the app until its answer (transport plus the app's own time)",
    ["kind", "queue"],
    buckets=(
        0.0001,
        0.00025,
        0.0005,
        0.00075,
        0.001,
        0.0015,
        0.002,
        0.003,
        0.005,
        0.0075,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
    ),
)


APP_MISCONFIGURED = Gauge(
    "queue_sidecar_app_misconfigured",
    "1 while the app answers the configured route with 404/405 (messages held, no attempt counted)",
)


class Transport(Protocol):
    """Sends one attempt to the app and turns its answer into an Outcome; never raises."""

    async def send(self, envelope: Envelope, attempt_timeout: float) -> Outcome: ...

    async def send_batch(self, envelopes: Sequence[Envelope], attempt_timeout: float) -> list[Outcome]:
        """Bulk delivery: one call for all, one Outcome per envelope in the same order."""
        ...

    async def close(self) -> None: ...


class AppDelivery:
    """Delivers messages of every queue to the one app, at most ``max_concurrency`` at a time."""

    def __init__(self, transport: Transport, probe: AppProbe, max_concurrency: int) -> None:
        self.transport = transport
        self.probe = probe
        self._slots = asyncio.Semaphore(max_concurrency)
        # Set while the app answers the configured route with 404/405; any other answer clears it.
        self.misconfiguration: str | None = None
        self._throttle = Throttle()
        self._batchers: list[Batcher] = []
        # Metric children by label values: labels() costs more than the observation itself.
        self._call_histograms: dict[tuple[str, str], Histogram] = {}
        self._answers: dict[tuple[str, str, str], Counter] = {}
        APP_MISCONFIGURED.set(0)

    async def deliver(self, envelope: Envelope, attempt_timeout: float) -> Outcome:
        # The per-attempt timeout starts when a slot is free: waiting behind other queues'
        # messages is not the app's fault and must not turn into a burned attempt.
        async with self._slots:
            started = time.perf_counter()
            outcome = await self.transport.send(envelope, attempt_timeout)
            self._call_seconds(envelope).observe(time.perf_counter() - started)
        self._note(envelope, outcome)
        return outcome

    async def deliver_batch(self, envelopes: Sequence[Envelope], attempt_timeout: float) -> list[Outcome]:
        """Bulk delivery: one slot and one app call for the batch; each message's answer noted alone."""
        async with self._slots:
            started = time.perf_counter()
            outcomes = await self.transport.send_batch(envelopes, attempt_timeout)
            self._call_seconds(envelopes[0]).observe(time.perf_counter() - started)
        successes = 0
        for envelope, outcome in zip(envelopes, outcomes, strict=True):
            if outcome.verdict is Verdict.SUCCESS and type(outcome) is Outcome:
                successes += 1  # counted below, once: the metric's lock costs more than the count
            else:
                self._note(envelope, outcome)
        if successes:
            self._note_successes(envelopes[0], successes)
        return outcomes

    def _note_successes(self, envelope: Envelope, count: int) -> None:
        """``count`` messages of ``envelope``'s queue answered SUCCESS (what :meth:`_note` does for each)."""
        if self.misconfiguration is not None:
            self.misconfiguration = None
            APP_MISCONFIGURED.set(0)
        self._answer_counter(envelope, "success").inc(count)

    def _call_seconds(self, envelope: Envelope) -> Histogram:
        histogram = self._call_histograms.get((envelope.kind, envelope.queue))
        if histogram is None:
            histogram = self._call_histograms[envelope.kind, envelope.queue] = APP_CALL_SECONDS.labels(
                envelope.kind, envelope.queue
            )
        return histogram

    def _note(self, envelope: Envelope, outcome: Outcome) -> None:
        if isinstance(outcome, PathMisconfigured):
            answer = "misconfigured"
            self._report_misconfiguration(outcome.error)
        else:
            if self.misconfiguration is not None:
                self.misconfiguration = None
                APP_MISCONFIGURED.set(0)
            if not outcome.attempted:
                self.probe.mark(False)
            answer = "unavailable" if not outcome.attempted else outcome.verdict.value.lower()
        self._answer_counter(envelope, answer).inc()
        if outcome.verdict is not Verdict.SUCCESS:
            # The line with the documented fields for each failed attempt (the engines then log
            # the retry or give-up); a message handed back while the app is down is not news.
            log.log(
                logging.INFO if outcome.attempted else logging.DEBUG,
                "delivery attempt failed: app answered %s",
                answer,
                extra={
                    "queue": envelope.queue,
                    "message_id": envelope.id,
                    "attempt": envelope.attempt,
                    "error": outcome.error,
                },
            )

    def _answer_counter(self, envelope: Envelope, answer: str) -> Counter:
        counter = self._answers.get((envelope.kind, envelope.queue, answer))
        if counter is None:
            counter = self._answers[envelope.kind, envelope.queue, answer] = APP_ANSWERS.labels(
                envelope.kind, envelope.queue, answer
            )
        return counter

    def _report_misconfiguration(self, error: str) -> None:
        self.misconfiguration = error
        APP_MISCONFIGURED.set(1)
        left_out = self._throttle.allow("misconfigured")
        if left_out is not None:
            log.error("app route misconfigured: messages held", extra={"error": error, "repeats": left_out})

    def delay_handler(
        self, timeout: float, bulk: BulkConfig | None = None
    ) -> Callable[[DelayJob], Awaitable[Outcome]]:
        send = self._sender(timeout, bulk)

        async def handle(job: DelayJob) -> Outcome:
            return await send(Envelope.from_delay_job(job))

        return handle

    def kafka_handler(self, timeout: float) -> Callable[[KafkaMessage], Awaitable[Outcome]]:
        """One message per app call (for bulk delivery see :meth:`kafka_batch_handler`)."""

        async def handle(message: KafkaMessage) -> Outcome:
            return await self.deliver(Envelope.from_kafka_message(message), timeout)

        return handle

    def kafka_batch_handler(
        self, timeout: float
    ) -> Callable[[Sequence[KafkaMessage]], Awaitable[Sequence[Outcome]]]:
        """Bulk delivery of a Kafka queue: the engine forms the batches (its ``batch_handler``:
        one call and one deadline per batch, per-key order and each message's outcome kept),
        so no batcher sits between."""

        async def handle(messages: Sequence[KafkaMessage]) -> Sequence[Outcome]:
            return await self.deliver_batch([Envelope.from_kafka_message(m) for m in messages], timeout)

        return handle

    def _sender(self, timeout: float, bulk: BulkConfig | None) -> Callable[[Envelope], Awaitable[Outcome]]:
        """One message per app call, or (bulk, delay queues) a batcher of the queue's own:
        batches never mix queues."""
        if bulk is None:
            return lambda envelope: self.deliver(envelope, timeout)

        async def send_batch(envelopes: Sequence[Envelope]) -> list[Outcome]:
            return await self.deliver_batch(envelopes, timeout)

        batcher = Batcher(send_batch, bulk.max_messages, bulk.max_wait)
        self._batchers.append(batcher)
        return batcher.deliver

    async def close(self) -> None:
        for batcher in self._batchers:
            await batcher.close()
        await self.transport.close()
