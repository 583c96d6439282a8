"""Batch delivery: ``KafkaConsumer(batch_handler=..., max_batch=N, max_batch_wait=seconds)``.

Runs on: the event loop only. ``KafkaConsumer`` mixes this in beside :class:`Dispatch` and uses
its lanes, settling and bookkeeping; only the worker differs. A batch worker takes ready lanes
(one message each: a lane's head) and makes one handler call and one deadline for them all.

What ``concurrency`` means here: batches in flight (one per batch worker), so at most
``concurrency * max_batch`` messages are in the handler at once.

How a batch forms: one worker at a time gathers (``_forming``): it waits for the first ready
lane, takes every lane already ready up to ``max_batch`` (with a backlog a batch fills without
waiting), and waits for more at most ``max_batch_wait`` from the first one, or not at all if a
lane it took has more messages waiting: a backlog of fewer keys than ``max_batch`` can never
fill a batch (one message per key), and waiting would only slow it down.

What holds per message, as in single delivery (dispatch.py's rules, the contract):
- a batch holds at most one message of a lane, so of a key, and a lane is with one worker at a
  time: a key's next message reaches the handler only after the previous one's outcome was
  settled, across batches, retries (backoff holds the lane) and rebalances (``_key_calls``);
- each message's outcome is settled alone (``_settle``): retry with its own backoff and
  attempt + 1, dead letter after ``max_attempts``, commit after SUCCESS; a revoked
  partition's late results are dropped, never committed;
- no call starts on an offset the attempts journal does not cover (the batch waits for the
  lease first); a crash suspect, or a head whose recorded attempts are used up, is not in a
  batch: it takes dispatch's full path, whose handler call is a batch of one (a suspect's
  runs alone, solo_gate.py; the journal's checks and writes are those of single delivery);
- one deadline per batch: ``policy.timeout`` from the call's start; when it is cut, every
  message of the batch gets the timeout outcome. A handler that raises, or answers with the
  wrong number of outcomes, gives every message a retry outcome with the reason (and a log
  line); an answer that is not an Outcome is a retry for its message alone;
- an "unavailable" answer (the app was not reached) holds every worker back once per batch,
  not once per message (the backoff would otherwise jump ``max_batch`` steps at a time);
- metrics count messages: ``delivered`` by result and ``delivery_latency`` (the batch's time)
  per message, ``in_flight`` the messages of batches in progress.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from queue_engine.deadlines import CallTimedOut
from queue_engine.kq.dispatch import Dispatch, Handler, Lane
from queue_engine.kq.message import KafkaMessage, message_id
from queue_engine.policy import Outcome

log = logging.getLogger("queue_engine.kq.consumer")
BatchHandler = Callable[[Sequence[KafkaMessage]], Awaitable[Sequence[Outcome]]]


def answer_error(result: object, count: int) -> str | None:
    """Why a batch handler's answer cannot be used (None: one entry per message)."""
    if isinstance(result, (str, bytes)) or not isinstance(result, Sequence):
        return f"batch handler returned {type(result).__name__} instead of a sequence of {count} outcome(s)"
    if len(result) != count:
        return f"batch handler returned {len(result)} outcome(s) for {count} message(s)"
    return None


def one_at_a_time(batch_handler: BatchHandler, name: str) -> Handler:
    """The full path's handler: a batch of one (crash suspects, offsets waiting for the journal)."""

    async def handle(message: KafkaMessage) -> Outcome:
        result: Any = await batch_handler((message,))
        error = answer_error(result, 1)
        if error is not None:
            log.warning("consumer %s: %s: %s", name, message_id(message), error)
            return Outcome.retry(error)
        outcome: Outcome = result[0]
        return outcome

    return handle


class BatchDispatch(Dispatch):
    """Batch workers for :class:`~queue_engine.kq.consumer.KafkaConsumer` (a mixin)."""

    _batch_handler: BatchHandler
    _max_batch: int
    _max_batch_wait: float
    _forming: asyncio.Lock  # one worker gathers a batch at a time

    async def _batch_worker(self) -> None:
        while True:
            async with self._forming:
                lanes = await self._gather()
            if lanes is None:
                return
            await self._wait_for_app()
            if self._stopping:
                return
            taken = [lane for lane in lanes if self._take(lane)]
            if taken:
                await self._deliver_lanes(taken)

    async def _gather(self) -> list[Lane] | None:
        """The next batch's lanes, revoked ones left out; None: stop."""
        ready = self._ready
        loop = self._loop
        assert loop is not None
        lanes: list[Lane] = []
        until: float | None = None
        backlog = False  # a lane of the batch has more messages behind its head
        while len(lanes) < self._max_batch:
            if not lanes:
                lane = await ready.get()
            elif not ready.empty():
                lane = ready.get_nowait()
            elif backlog:
                break  # the keys ready are all there are for now: waiting would only add delay
            else:
                if until is None:
                    until = loop.time() + self._max_batch_wait
                left = until - loop.time()
                if left <= 0:
                    break
                try:
                    async with asyncio.timeout(left):
                        lane = await ready.get()
                except TimeoutError:
                    break
            if lane is None or self._stopping:
                return None
            state = lane.partition
            if not (state.revoking or state.revoked):
                lanes.append(lane)
                if len(lane.messages) > 1:
                    backlog = True
        return lanes

    async def _deliver_lanes(self, lanes: list[Lane]) -> None:
        """Deliver the heads of lanes this worker took: the healthy ones in one batch call, the
        others one by one on the full path; each lane is let go once its head is settled."""
        held = set(lanes)  # taken and not let go yet: let go here at the latest (stop, a bug)
        try:
            max_attempts = self._policy.max_attempts
            batch: list[Lane] = []
            alone: list[Lane] = []
            for lane in lanes:
                state = lane.partition
                book = state.book
                offset = lane.messages[0].offset
                if book is None:
                    batch.append(lane)
                elif book.is_suspect(offset) or (book.known and book.exhausted(offset, max_attempts)):
                    alone.append(lane)
                elif offset < book.lease or await book.cover(
                    offset, state.tracker.last_received, state.leaving
                ):
                    batch.append(lane)  # (one journal write covers the batch's offsets of a partition)
                else:  # the partition is leaving: its messages are not ours to call any more
                    held.discard(lane)
                    self._let_go(lane)
            if batch:
                await self._batch(batch, held)
            for lane in alone:
                if self._stopping:
                    return
                try:
                    await self._deliver(lane)
                except Exception:
                    self._delivery_failed(lane)
                held.discard(lane)
                self._let_go(lane)
        finally:
            for lane in held:
                self._let_go(lane)

    async def _batch(self, lanes: list[Lane], held: set[Lane]) -> None:
        """One call for the lanes' heads; each head's outcome settled alone, its lane let go
        (and taken out of ``held``) once it is."""
        gate = self._gate
        assert gate is not None
        if gate.held:
            await gate.opened()
        messages = [lane.messages[0] for lane in lanes]
        books = [lane.partition.book for lane in lanes]
        gate.running += 1  # the gate counts calls: a suspect's waits for this one to end
        for book, message in zip(books, messages, strict=True):
            if book is not None:
                book.calling[message.offset] = message.attempt
        try:
            outcomes = await self._call_batch(messages)
        finally:
            gate.leave()
            for book, message in zip(books, messages, strict=True):
                if book is not None:
                    del book.calling[message.offset]
        unreached: list[Lane] = []
        rests = []
        for lane, message, outcome in zip(lanes, messages, outcomes, strict=True):
            if not outcome.attempted and not lane.partition.revoked:
                if not unreached:
                    self._app_down(outcome)
                unreached.append(lane)
                continue
            try:
                rest = self._settle(lane, message, outcome, solo=False)
            except Exception:
                self._delivery_failed(lane)
                rest = None
            held.discard(lane)
            if rest is None:
                self._let_go(lane)
            else:
                rests.append(self._then_let_go(lane, rest))
        if unreached:
            delay = self._until_app_back()
            for lane in unreached:
                self._requeue_later(lane, delay)
                held.discard(lane)
                self._let_go(lane)
        if rests:  # dead-letter writes: each lane is let go when its own ends
            await asyncio.gather(*rests)

    async def _then_let_go(self, lane: Lane, rest: Awaitable[None]) -> None:
        try:
            await rest
        except Exception:
            self._delivery_failed(lane)
        finally:
            self._let_go(lane)

    async def _call_batch(self, messages: list[KafkaMessage]) -> list[Outcome]:
        """Event loop, in a worker task: one batch handler call under one deadline, its metrics."""
        loop = self._loop
        assert loop is not None
        count = len(messages)
        started = time.perf_counter()
        call_metrics = self._call_metrics
        call_metrics.began(count)
        results: Sequence[Any]
        deadline = loop.time() + self._policy.timeout
        try:
            answer: Any = await self._deadlines.run(self._batch_handler(messages), deadline)
        except CallTimedOut:
            results = [self._timed_out()] * count
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being stopped: not a call that ended
            results = [Outcome.retry("handler was cancelled")] * count
        except Exception as exc:
            log.warning("consumer %s: batch handler raised on %d message(s): %r", self.name, count, exc)
            results = [Outcome.retry(f"{type(exc).__name__}: {exc}")] * count
        else:
            error = answer_error(answer, count)
            if error is None:
                results = answer
            else:
                log.warning("consumer %s: %s; every message of the batch is retried", self.name, error)
                results = [Outcome.retry(error)] * count
        finally:
            call_metrics.ended(count)
        call_end = self._call_end
        return [call_end(result, started) for result in results]
