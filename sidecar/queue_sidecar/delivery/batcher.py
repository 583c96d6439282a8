"""Gathers a delay queue's concurrent delivery attempts into batches: bulk delivery for dq.

The dq engine stays as it is: it calls the handler once per job, concurrently, and acts on
each job's own Outcome (retry with backoff, bury) exactly as in single delivery. Each call here
parks its job until the batch is full (``max_messages``) or the first job waited ``max_wait``;
one call to the app then answers them all.

Kafka queues do not come here: the Kafka engine forms their batches itself
(``KafkaConsumer(batch_handler=...)``, one call and one deadline per batch, per-key order
kept), which costs far less per message than a parked call per message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from queue_engine.policy import Outcome
from queue_sidecar.delivery.envelope import Envelope

log = logging.getLogger(__name__)

SendBatch = Callable[[Sequence[Envelope]], Awaitable[Sequence[Outcome]]]


class Batcher:
    def __init__(self, send: SendBatch, max_messages: int, max_wait: float) -> None:
        self._send = send
        self._max_messages = max_messages
        self._max_wait = max_wait
        self._waiting: list[tuple[Envelope, asyncio.Future[Outcome]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()  # strong references until each is done
        # Bound at the first message: on Python 3.11 each get_running_loop() is a getpid()
        # system call, and this runs once per message.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def deliver(self, envelope: Envelope) -> Outcome:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._waiting.append((envelope, future))
        if len(self._waiting) >= self._max_messages:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._max_wait, self._flush)
        # A call cancelled here (stop, the engine's backstop timer) leaves its message in the
        # batch; its answer is then ignored and the engine hands the message back as usual.
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._waiting = self._waiting, []
        if batch:
            assert self._loop is not None  # set by the first deliver(), the only way into a batch
            task = self._loop.create_task(self._send_batch(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send_batch(self, batch: list[tuple[Envelope, asyncio.Future[Outcome]]]) -> None:
        envelopes = [envelope for envelope, _ in batch]
        try:
            outcomes: Sequence[Outcome] = await self._send(envelopes)
        except Exception as exc:  # a bug must not leave the engine's calls waiting forever
            log.exception("bulk delivery of %d messages failed", len(batch))
            outcomes = [Outcome.retry(f"bulk delivery failed: {type(exc).__name__}: {exc}")] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def close(self) -> None:
        self._flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
