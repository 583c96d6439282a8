"""Per-key dispatch: the consumer's worker tasks, lanes, handler calls and their outcomes.

Runs on: the event loop only. ``KafkaConsumer`` mixes this in; the state it uses is declared
below. The intake (consumer.py) puts each received record in its partition's lane for its key
(a keyless record gets a lane of its own) and queues the lane for a worker; ``concurrency``
workers take lanes and deliver up to RUN_LENGTH of a lane's messages in a row. With a
``batch_handler``, batch_dispatch.py's workers take their place and keep the rules below per
message, with one handler call and one deadline per batch.

What it guarantees:
- one key of one partition is in one lane, and a lane is with at most one worker at a time, so
  same-key messages reach the handler one at a time in offset order, across retries (the head
  waits out its backoff and holds the rest back) and rebalances (``_key_calls``: a call
  abandoned at a revoke holds its key back when the partition returns);
- at most ``concurrency`` handler calls at once (one per worker); a backoff, or a wait for
  the attempts journal's lease, holds no worker;
- a handler's first step runs at once (eager.py); a call that awaits runs under
  ``policy.timeout`` counted from its start (cut by the consumer's watchdog, deadlines.py);
  the healthy path builds no coroutine of its own (``_deliver_now``), anything else takes
  the full path (``_deliver``) with the same rules;
- no call starts on an offset the attempts journal does not cover, and crash suspects are
  called alone (attempt_book.py, solo_gate.py);
- a message counts as finished (``_finish``, which hands the committable offset to the poll
  thread) only after SUCCESS, or after its dead letter was acknowledged; a finish that arrives
  after its partition was revoked is dropped, never committed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from queue_engine import eager, metrics
from queue_engine.deadlines import CallTimedOut, Deadlines
from queue_engine.durations import format_duration
from queue_engine.kq.attempt_book import RETRY_WRITE, PartitionAttempts
from queue_engine.kq.call_metrics import RESULTS, UNAVAILABLE, CallMetrics
from queue_engine.kq.dead_letter_writer import DeadLetterWriter, nap
from queue_engine.kq.message import KafkaMessage, message_id
from queue_engine.kq.offsets import OffsetTracker
from queue_engine.kq.solo_gate import SoloGate
from queue_engine.policy import DeliveryPolicy, Outcome, Verdict

log = logging.getLogger("queue_engine.kq.consumer")
Handler = Callable[[KafkaMessage], Awaitable[Outcome]]
T = TypeVar("T")

# Messages a worker delivers from one lane before it lets other lanes and the intake in.
RUN_LENGTH = 100


@dataclasses.dataclass(eq=False)
class PartitionState:
    number: int
    generation: int  # which assignment this state belongs to: completions of older ones never commit
    tracker: OffsetTracker = dataclasses.field(default_factory=OffsetTracker)
    lanes: dict[bytes, Lane] = dataclasses.field(default_factory=dict)
    # revoking: no new dispatch, calls in progress may still finish and count; revoked: gone,
    # any result that still arrives is ignored (the next owner delivers the message again).
    revoking: bool = False
    revoked: bool = False
    running: int = 0  # handler calls and dead-letter writes in progress
    idle: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    # Attempt counts from the journal; until they are read (None), records wait in ``held``.
    book: PartitionAttempts | None = None
    held: list[KafkaMessage] = dataclasses.field(default_factory=list)
    leaving: asyncio.Event = dataclasses.field(
        default_factory=asyncio.Event
    )  # revoking or stopping: cut waits short


@dataclasses.dataclass(eq=False, slots=True)
class Lane:
    """The messages of one key in one partition, handled strictly one after another."""

    partition: PartitionState
    key: bytes | None
    messages: deque[KafkaMessage]
    busy: bool = False  # queued for a worker, being handled, or waiting out a backoff
    more: bool = False  # its head finished and more wait: the worker's run goes on (_drain)


class Dispatch:
    """The event-loop half of :class:`~queue_engine.kq.consumer.KafkaConsumer` (a mixin)."""

    name: str
    topic: str
    _handler: Handler
    _policy: DeliveryPolicy
    _loop: asyncio.AbstractEventLoop | None
    _gate: SoloGate | None  # shared by every consumer in the loop (solo_gate.py)
    _dlq: DeadLetterWriter | None
    _call_metrics: CallMetrics  # also counts the calls in flight (in_flight, per loop turn)
    _deadlines: Deadlines  # the watchdog that cuts calls at their timeout (from run())
    _partitions: dict[int, PartitionState]  # the partitions assigned now
    _ready: asyncio.Queue[Lane | None]  # lanes waiting for a worker; None stops one
    # (partition, key) -> the lane whose call for that key runs now, in any assignment, and
    # the lanes of later assignments waiting for it to end.
    _key_calls: dict[tuple[int, bytes], Lane]
    _key_waiting: dict[tuple[int, bytes], list[Lane]]
    _stopping: bool
    _stop_event: asyncio.Event
    _background: set[asyncio.Future[None]]  # tasks of the consumer's own, kept until done
    _app_down_until: float  # time.monotonic() until which no handler call starts
    _app_down_streak: int
    # Shared with the poll thread (under the commit lock): see poll_thread.py.
    _commit_lock: threading.Lock
    _pending_commits: dict[int, tuple[int, int]]
    _backlog: dict[int, int]

    def _enqueue(self, state: PartitionState, message: KafkaMessage) -> None:
        key = message.key
        lane: Lane | None
        if key is None:
            lane = Lane(state, None, deque([message]))
        else:
            lane = state.lanes.get(key)  # (setdefault would build a lane per message)
            if lane is None:
                lane = state.lanes[key] = Lane(state, key, deque())
            lane.messages.append(message)
            if lane.busy:
                return
        lane.busy = True
        self._ready.put_nowait(lane)

    async def _worker(self) -> None:
        while True:
            lane = await self._ready.get()
            if lane is None or self._stopping:
                return
            state = lane.partition
            if state.revoking or state.revoked:
                continue
            await self._wait_for_app()
            if self._stopping:
                return
            if not self._take(lane):
                continue
            try:
                await self._drain(lane)
            except Exception:
                self._delivery_failed(lane)
            finally:
                self._let_go(lane)

    def _delivery_failed(self, lane: Lane) -> None:
        """Called in an ``except`` block: a bug must not kill the worker nor wedge the key's lane."""
        log.exception("consumer %s: delivering from partition %d failed", self.name, lane.partition.number)
        if not lane.more:
            self._requeue_later(lane, 1.0)

    def _take(self, lane: Lane) -> bool:
        """A worker takes the lane for its head's delivery; False: not now (the partition left,
        or a call of an earlier assignment still runs for this key: the lane waits for it)."""
        state = lane.partition
        if state.revoking or state.revoked:
            return False
        if lane.key is not None:
            slot = (state.number, lane.key)
            holder = self._key_calls.get(slot)
            if holder is not None and holder is not lane:
                # A call of an earlier assignment, abandoned at its revoke, still runs for
                # this key: start the next one only after it ended, never beside it.
                self._key_waiting.setdefault(slot, []).append(lane)
                return False
            self._key_calls[slot] = lane
        state.running += 1
        state.idle.clear()
        return True

    def _let_go(self, lane: Lane) -> None:
        """The worker is done with the lane (:meth:`_take`): its key is free, and if more of its
        messages wait, it goes back in line behind the other lanes."""
        state = lane.partition
        state.running -= 1
        if not state.running:
            state.idle.set()
        if lane.key is not None:
            slot = (state.number, lane.key)
            del self._key_calls[slot]
            for waiting in self._key_waiting.pop(slot, []):
                self._requeue(waiting)
        if lane.more:  # the run was cut short: back in line behind the other lanes
            lane.more = False
            self._requeue(lane)

    async def _drain(self, lane: Lane) -> None:
        """Event loop: deliver the lane's messages one after another, up to RUN_LENGTH of them,
        without a trip through the ready queue between two (a worker owns its lane meanwhile).

        Stops as a queue hop would have: at a revoke, at stop, or while the app is down.
        ``lane.more`` is left True if the lane has messages the run did not take.
        """
        state = lane.partition
        for _ in range(RUN_LENGTH):
            lane.more = False
            rest = self._deliver_now(lane)
            if rest is not None:
                await rest
            if not lane.more or self._stopping or state.revoking or state.revoked:
                return
            if self._app_down_until and self._app_down_until > time.monotonic():
                return
        await asyncio.sleep(0)  # let the intake and timers in before this lane goes on

    async def _wait_for_app(self) -> None:
        # The deadline can move while we sleep (another worker saw the app down again).
        while (
            self._app_down_until
            and (wait := self._app_down_until - time.monotonic()) > 0
            and not self._stopping
        ):
            await nap(wait, self._stop_event)

    def _deliver_now(self, lane: Lane) -> Coroutine[Any, Any, None] | None:
        """Event loop: deliver the lane's head; None if that is done, else the rest to await.

        The healthy path (offset inside the lease, no crash suspect, no lone call waiting, a
        handler that finishes without awaiting and succeeds) runs here without a coroutine of
        its own: at 100,000+ messages a second the coroutine objects alone cost a tenth of the
        loop in allocation and garbage collection. Anything else continues in :meth:`_deliver`
        or in the returned coroutine, with the same rules.

        A call that finishes in its first step never lets another task run while it is in
        progress, so nothing could see it in the gate's count or in ``book.calling`` (a solo
        call waits in another task, a hand-over record is written by another task): only a
        call that awaits is entered there (:meth:`_call_begins`), as the full path does.
        """
        message = lane.messages[0]
        state = lane.partition
        book = state.book
        offset = message.offset
        if book is not None and (
            offset >= book.lease or book.suspect_below is not None or offset in book.known
        ):
            return self._deliver(lane)
        gate = self._gate
        assert gate is not None
        if gate.held:
            return self._deliver(lane)
        result, started = self._call_start(message)
        if type(result) is eager.Started:
            self._call_begins(book, message)
            return self._deliver_rest(lane, result, started)
        outcome = self._call_end(result, started)
        if outcome.verdict is _SUCCESS and outcome.attempted and not state.revoked:
            self._app_down_streak = 0  # what _settle does with a success, without the call
            self._finish(lane)
            return None
        return self._settle(lane, message, outcome, solo=False)

    def _call_begins(self, book: PartitionAttempts | None, message: KafkaMessage) -> None:
        """A call is in progress from here until :meth:`_call_ends`: the gate counts it (a solo
        call waits for it to end) and a hand-over record counts it as an attempt. The caller
        checked that the gate is open, with no await since."""
        gate = self._gate
        assert gate is not None
        gate.running += 1
        if book is not None:
            book.calling[message.offset] = message.attempt

    def _call_ends(self, book: PartitionAttempts | None, offset: int) -> None:
        gate = self._gate
        assert gate is not None
        gate.leave()
        if book is not None:
            del book.calling[offset]

    async def _deliver_rest(self, lane: Lane, result: eager.Started, started: float) -> None:
        """The rest of a :meth:`_deliver_now` call whose handler awaits."""
        message = lane.messages[0]
        book = lane.partition.book
        try:
            outcome = await self._call_rest(message, result, started)
        finally:
            self._call_ends(book, message.offset)
        rest = self._settle(lane, message, outcome, solo=False)
        if rest is not None:
            await rest

    async def _deliver(self, lane: Lane) -> None:
        """The full path of one delivery: the attempts journal's checks, lone calls, the gate."""
        message = lane.messages[0]
        state = lane.partition
        book = state.book
        solo = False
        if book is None:
            outcome = await self._attempt(None, message)
        else:
            offset = message.offset
            if book.known and book.exhausted(offset, self._policy.max_attempts):
                await self._dead_letter_exhausted(lane, book.known[offset])
                return
            solo = book.is_suspect(offset)
            if solo:
                maybe = await self._solo_attempt(lane, book)
                if maybe is None:
                    return
                outcome = maybe
            else:
                if offset >= book.lease:
                    # The lease write is on its way (one broker round trip): the lane waits for
                    # it without a worker, so the other partitions' lanes go on meanwhile.
                    self._background_task(self._requeue_when_covered(lane, book, offset))
                    return
                outcome = await self._attempt(book, message)
        rest = self._settle(lane, message, outcome, solo)
        if rest is not None:
            await rest

    async def _requeue_when_covered(self, lane: Lane, book: PartitionAttempts, offset: int) -> None:
        """Back in line once the lease covers the lane's head (the lane stays busy meanwhile, so
        its key's later messages wait behind it); never if the partition leaves first."""
        state = lane.partition
        if await book.cover(offset, state.tracker.last_received, state.leaving):
            self._requeue(lane)

    def _background_task(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _settle(
        self, lane: Lane, message: KafkaMessage, outcome: Outcome, solo: bool
    ) -> Coroutine[Any, Any, None] | None:
        """Event loop: act on a call's outcome; a dead-letter write is returned to be awaited."""
        state = lane.partition
        if state.revoked:
            return None  # the partition moved on: the next owner delivers it again
        if not outcome.attempted:
            self._app_down(outcome)
            self._requeue_later(lane, self._until_app_back())
            return None
        self._app_down_streak = 0
        if outcome.verdict is Verdict.SUCCESS:
            self._finish(lane)
        elif outcome.verdict is Verdict.RETRY and message.attempt < self._policy.max_attempts:
            metrics.RETRIED.labels("kafka", self.name).inc()
            delay = self._policy.next_delay(message.attempt, outcome)
            log.info(
                "consumer %s: %s attempt %d failed (%s); retrying in %s",
                self.name,
                message_id(message),
                message.attempt,
                outcome.error or "retry",
                format_duration(delay),
            )
            lane.messages[0] = dataclasses.replace(message, attempt=message.attempt + 1)
            book = state.book
            if book is not None and not solo:  # (a solo call's attempt is recorded already)
                book.failed(message.offset, message.attempt)
            self._requeue_later(lane, delay)
        else:
            reason = "drop" if outcome.verdict is Verdict.DROP else "max_attempts"
            return self._dead_letter_then_finish(lane, message, reason, outcome.error)
        return None

    async def _dead_letter_then_finish(
        self, lane: Lane, message: KafkaMessage, reason: str, error: str
    ) -> None:
        if await self._dead_letter(lane.partition, message, reason, error):
            self._finish(lane)

    async def _dead_letter_exhausted(self, lane: Lane, attempts: int) -> None:
        """Recorded attempts used up without an answer: the process died in each (a poison message)."""
        message = dataclasses.replace(lane.messages[0], attempt=attempts)
        log.warning(
            "consumer %s: %s: the process ended during each of its %d attempt(s); dead-lettering it",
            self.name,
            message_id(message),
            attempts,
        )
        error = f"the process ended during each of {attempts} attempt(s) (crashed, killed or out of memory)"
        if await self._dead_letter(lane.partition, message, "max_attempts", error):
            self._finish(lane)

    async def _attempt(self, book: PartitionAttempts | None, message: KafkaMessage) -> Outcome:
        """An ordinary call on the full path: once the gate is open (no lone call waits or runs)."""
        gate = self._gate
        assert gate is not None
        if gate.held:
            await gate.opened()
        self._call_begins(book, message)
        try:
            return await self._call(message)
        finally:
            self._call_ends(book, message.offset)

    async def _solo_attempt(self, lane: Lane, book: PartitionAttempts) -> Outcome | None:
        """A crash suspect's call, alone in the process, between two journal writes (see solo_gate):
        "offset starts attempt n" before, its result after, so a death in it is its own and a
        bystander's finished call is never counted again. None: the partition left first."""
        gate = self._gate
        assert gate is not None
        state, message = lane.partition, lane.messages[0]
        offset = message.offset
        await gate.enter_solo()
        try:
            if state.revoking or state.revoked:
                return None
            if not await book.before_solo_call(offset, message.attempt):
                if not (state.revoking or state.revoked or self._stopping):
                    self._requeue_later(lane, RETRY_WRITE)  # the journal is down: try again later
                return None
            book.calling[offset] = message.attempt
            try:
                outcome = await self._call(message)
            finally:
                del book.calling[offset]
            await book.after_solo_call(offset, message.attempt, outcome)
            return outcome
        finally:
            gate.leave_solo()

    async def _call(self, message: KafkaMessage) -> Outcome:
        """Event loop, in a worker task: one handler call, its timeout and its metrics."""
        result, started = self._call_start(message)
        if type(result) is eager.Started:
            return await self._call_rest(message, result, started)
        return self._call_end(result, started)

    def _call_start(self, message: KafkaMessage) -> tuple[Any, float]:
        """The handler's first step, at once (eager.py): its result (an Outcome, we hope), or
        :class:`eager.Started` if it awaits; and when the call started. A call that finishes
        here needs no timer (nothing could interrupt it anyway) and never shows in ``in_flight``."""
        started = time.perf_counter()
        try:
            awaitable = self._handler(message)
            if type(awaitable) is types.CoroutineType:
                try:  # eager.start(), inlined: this runs once per message
                    return eager.Started(awaitable, awaitable.send(None)), started
                except StopIteration as stop:
                    return stop.value, started
            return eager.Started(_await(awaitable), None), started  # a Future or other awaitable
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being stopped
            return Outcome.retry("handler was cancelled"), started  # cancelled from inside, not by us
        except Exception as exc:
            return self._raised(message, exc), started

    async def _call_rest(self, message: KafkaMessage, result: eager.Started, started: float) -> Outcome:
        """The rest of a handler call that awaited, under ``policy.timeout`` counted from its start.

        The consumer's watchdog (deadlines.py) cuts it at its deadline as ``asyncio.timeout``
        would: a CancelledError that only the watchdog asked for becomes a timeout outcome; one
        a stop asked for too is passed on. (A worker task starts no call while a cancel is
        pending, see _call_start, so no cancel is counted before the call begins.)
        """
        loop = self._loop
        assert loop is not None
        deadline = loop.time() + self._policy.timeout - (time.perf_counter() - started)
        call_metrics = self._call_metrics
        call_metrics.began()
        outcome: Any
        try:
            outcome = await self._deadlines.run(eager.resume(result), deadline)
        except CallTimedOut:
            outcome = self._timed_out()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being stopped: not a call that ended
            outcome = Outcome.retry("handler was cancelled")  # cancelled from inside, not by us
        except Exception as exc:
            outcome = self._raised(message, exc)
        finally:
            call_metrics.ended()
        return self._call_end(outcome, started)

    def _timed_out(self) -> Outcome:
        return Outcome.retry(f"handler timed out after {format_duration(self._policy.timeout)}")

    def _raised(self, message: KafkaMessage, exc: Exception) -> Outcome:
        log.warning("consumer %s: handler raised on %s: %r", self.name, message_id(message), exc)
        return Outcome.retry(f"{type(exc).__name__}: {exc}")

    def _call_end(self, result: Any, started: float) -> Outcome:
        """Count the call (per loop turn, see call_metrics) and make sure it is an Outcome."""
        if type(result) is Outcome or isinstance(result, Outcome):
            outcome = result
        else:
            outcome = Outcome.retry(f"handler returned {result!r} instead of an Outcome")
        verdict = outcome.verdict
        # (identity tests: hashing an Enum member for a dict lookup runs Python code)
        if not outcome.attempted:
            index = UNAVAILABLE
        elif verdict is _SUCCESS:
            index = _SUCCESS_INDEX
        else:
            index = _RESULT_INDEX[verdict]
        self._call_metrics.called(index, time.perf_counter() - started)
        return outcome

    def _app_down(self, outcome: Outcome) -> None:
        """The handler's target is unreachable: hold every worker back until the next probe."""
        self._app_down_streak += 1
        # An unusable Retry-After (inf, NaN) falls back to the backoff; a huge one is capped.
        delay = self._policy.next_delay(self._app_down_streak, outcome)
        until = time.monotonic() + delay
        if until > self._app_down_until:
            if self._app_down_streak == 1:
                log.warning(
                    "consumer %s: handler unavailable (%s); holding messages", self.name, outcome.error
                )
            self._app_down_until = until

    def _until_app_back(self) -> float:
        """Seconds until the next probe of an unreachable handler target (0: none pending)."""
        return max(0.0, self._app_down_until - time.monotonic())

    def _requeue_later(self, lane: Lane, delay: float) -> None:
        assert self._loop is not None
        self._loop.call_later(delay, self._requeue, lane)

    def _requeue(self, lane: Lane) -> None:
        if not (lane.partition.revoking or lane.partition.revoked or self._stopping):
            self._ready.put_nowait(lane)

    def _finish(self, lane: Lane) -> None:
        message = lane.messages.popleft()
        state = lane.partition
        if state.revoked or self._partitions.get(state.number) is not state:
            # Finished after the revoke (a late dead-letter ack): the partition's next owner
            # delivers it again; committing it here could rewind the group under that owner.
            log.debug(
                "consumer %s: %s/%d/%d finished after its partition was revoked",
                self.name,
                self.topic,
                state.number,
                message.offset,
            )
            return
        tracker = state.tracker
        released = tracker.release(message.offset)
        book = state.book
        if book is not None and book.known:
            book.finished(message.offset)
        if released:
            committable = tracker.committable
            assert committable is not None
            if book is not None and (book.known or book.suspect_below is not None):
                book.committed(committable)
            number = state.number
            with self._commit_lock:  # (once for both: _release would take it again)
                self._pending_commits[number] = (state.generation, committable)
                self._backlog[number] = self._backlog.get(number, 0) - released
        if lane.messages:
            lane.more = True  # the worker's run goes on with it (see _drain)
        else:
            lane.busy = False
            if lane.key is not None and state.lanes.get(lane.key) is lane:
                del state.lanes[lane.key]

    async def _dead_letter(
        self, state: PartitionState, message: KafkaMessage, reason: str, error: str
    ) -> bool:
        """Write to the dead-letter topic and wait for its ack; True once it is safely there."""
        assert self._dlq is not None
        return await self._dlq.write(
            message, reason, error, state.leaving, lambda: state.revoked or self._stopping
        )


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


_RESULT_INDEX = {verdict: RESULTS.index(verdict.value.lower()) for verdict in Verdict}
_SUCCESS = Verdict.SUCCESS
_SUCCESS_INDEX = _RESULT_INDEX[_SUCCESS]
