"""The consumer's poll thread: the one thread that touches librdkafka's ``Consumer``.

Runs on: its own thread (``kq-consume-<name>``), except where a method says "event loop".
``KafkaConsumer`` mixes this in; the state below is what the two sides share, each field
saying who writes it. Everything the event loop hands over goes through the commit lock
(commits, backlog) or the command queue (poll_commands.py); everything the thread hands to
the loop goes through ``call_soon_threadsafe`` (a whole fetched batch per call) or, for
rebalance callbacks, ``run_coroutine_threadsafe`` with a bounded wait.

What it guarantees:
- it commits only offsets the loop reported finished, and only for partitions assigned now,
  in the assignment (generation) the offset belongs to: a late completion from before a
  revoke never rewinds the offset of the partition's new owner;
- steady-state commits are asynchronous (polling never waits a round trip); a failed one is
  sent again only if nothing later of its partition went out after it; the commits at a
  revoke and before close are synchronous;
- the backlog (records handed to the loop and not yet committable) stays bounded per
  partition: over ``max_uncommitted`` polling holds for up to HOLD_BEFORE_PAUSE, then the
  partition is paused until the backlog halves; every assigned partition is resumed on
  assignment (librdkafka keeps a pause across a rebalance);
- it notes what ``health()`` and ``lag()`` read (broker, topic and fatal errors, watermarks,
  its own commits) so neither ever needs a round trip on this thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from queue_engine.errors import Unavailable
from queue_engine.kq.config import error_from_kafka
from queue_engine.kq.poll_commands import PollCommands

log = logging.getLogger("queue_engine.kq.consumer")
T = TypeVar("T")

POLL_BATCH = 500
POLL_TIMEOUT = 0.1
PAUSED_POLL_TIMEOUT = 0.005
HOLD_BEFORE_PAUSE = 1.0
WATERMARKS_EVERY = 0.1  # seconds between notes of the fetched watermarks, for lag() (local reads)
BROKER_RECHECK = 5.0  # seconds between metadata probes while the brokers look down
# How long a rebalance callback waits for the loop's revoke beyond revoke_grace.
REVOKE_SLACK = 10.0


class PollThread:
    """The poll-thread half of :class:`~queue_engine.kq.consumer.KafkaConsumer` (a mixin)."""

    # Set at construction, read-only afterwards.
    topic: str
    group: str
    name: str
    _brokers: str
    _config: dict[str, Any]
    _connect_timeout: float
    _revoke_grace: float
    _max_uncommitted: int
    _commit_lock: threading.Lock  # guards the fields marked "shared" below
    _commands: PollCommands
    _closing: threading.Event  # set by the loop: leave the poll loop, commit, close
    # Event loop side, read here.
    _loop: asyncio.AbstractEventLoop | None
    _thread_done: asyncio.Future[None] | None
    _stopping: bool
    # Shared. partition -> (generation, offset) finished by the loop and not sent yet.
    _pending_commits: dict[int, tuple[int, int]]
    _owned: dict[int, int]  # shared: partition -> generation, as librdkafka assigned it
    _backlog: dict[int, int]  # shared: records handed over, not yet committable (loop subtracts)
    _committed_here: dict[int, int]  # shared: the offset this member last committed, per partition
    # This thread only.
    _generation: int
    _paused: set[int]
    _commit_sent: dict[int, int]  # the highest offset this assignment sent a commit for
    _over_since: float | None
    # Written here (and by librdkafka's callbacks, served here), read by health() and lag().
    _subscribed: bool
    _brokers_down: str | None
    _topic_problem: str | None
    _topic_checked: float
    _brokers_checked: float
    _fatal_error: str | None
    _watermarks: dict[int, tuple[int, int]]  # replaced whole, never changed in place
    _watermarks_noted: float

    # The event-loop side, implemented by KafkaConsumer.
    def _intake(self, records: list[Message]) -> None:
        raise NotImplementedError

    def _assign(self, numbers: list[int], generation: int) -> None:
        raise NotImplementedError

    async def _revoke(self, numbers: list[int], hand_over: bool = True) -> dict[int, tuple[int, int]]:
        raise NotImplementedError

    def _poll_main(self) -> None:
        error: BaseException | None = None
        try:
            self._consume_until_closed()
        except BaseException as exc:
            error = exc
        finally:
            self._commands.close()  # commands queued from now on fail at once
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._thread_finished, error)

    def _thread_finished(self, error: BaseException | None) -> None:
        assert self._thread_done is not None
        if self._thread_done.done():
            return
        if error is None:
            self._thread_done.set_result(None)
        else:
            self._thread_done.set_exception(error)

    def _consume_until_closed(self) -> None:
        try:
            consumer = Consumer(self._config)
        except KafkaException as exc:
            raise error_from_kafka(exc, "kafka consumer config") from exc
        try:
            try:
                self._check_topic(consumer.list_topics(self.topic, timeout=self._connect_timeout))
            except KafkaException as exc:
                consumer.poll(0)  # serves queued client errors (error_cb): the cause, e.g. auth refused
                seen = f"; last broker error: {self._brokers_down}" if self._brokers_down else ""
                raise Unavailable(
                    f"brokers {self._brokers} not reachable within {self._connect_timeout}s: "
                    f"{error_from_kafka(exc, 'metadata')}{seen}"
                ) from exc
            consumer.subscribe(
                [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
            )
            self._subscribed = True
            log.info("consumer %s subscribed to %s as group %s", self.name, self.topic, self.group)
            while not self._closing.is_set():
                self._recheck_brokers(consumer)
                self._recheck_topic(consumer)
                self._note_watermarks(consumer)
                self._commands.run_all(consumer)
                self._flush_commits(consumer)
                if self._hold_intake(consumer):
                    time.sleep(PAUSED_POLL_TIMEOUT)
                    continue
                # While partitions are paused, come back soon to resume them once the loop caught up.
                records = poll_batch(consumer, PAUSED_POLL_TIMEOUT if self._paused else POLL_TIMEOUT)
                if records:
                    self._brokers_down = None
                    if self._count_backlog(records):
                        self._topic_problem = None
                    self._to_loop(self._intake, records)
            self._commands.run_all(consumer)
            self._flush_commits(consumer, asynchronous=False)  # the last one before close: wait
        finally:
            # close() revokes our partitions (the revoke callback commits what is finished)
            # and leaves the group, so the others take over at once instead of after a timeout.
            try:
                consumer.close()
            except KafkaException as exc:
                log.warning("consumer %s close: %s", self.name, exc)

    def _recheck_brokers(self, consumer: Consumer) -> None:
        """After a broker error, ask for metadata now and then, so health recovers on an idle topic."""
        if not self._brokers_down or time.monotonic() - self._brokers_checked < BROKER_RECHECK:
            return
        self._brokers_checked = time.monotonic()
        try:
            consumer.list_topics(self.topic, timeout=2)
        except KafkaException:
            return
        self._brokers_down = None

    def _note_watermarks(self, consumer: Consumer) -> None:
        """Poll thread, every 0.1 s: the watermarks fetch responses carried (local reads)."""
        if time.monotonic() - self._watermarks_noted < WATERMARKS_EVERY:
            return
        self._watermarks_noted = time.monotonic()
        with self._commit_lock:
            owned = list(self._owned)
        noted = {}
        for number in owned:
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, number), cached=True)
            except KafkaException:
                continue
            if high >= 0:
                noted[number] = (int(low), int(high))
        self._watermarks = noted  # replaced whole: lag() reads it from another thread

    def _check_topic(self, metadata: Any) -> None:
        """Poll thread: note whether the topic exists and may be read (health says so if not)."""
        described = metadata.topics.get(self.topic)
        error = None if described is None else described.error
        before = self._topic_problem
        if described is None or (error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            self._topic_problem = f"topic {self.topic} does not exist"
        elif error is not None:
            self._topic_problem = f"topic {self.topic}: {error.str()}"
        elif not described.partitions:
            self._topic_problem = f"topic {self.topic} has no partitions"
        else:
            self._topic_problem = None
        if self._topic_problem and self._topic_problem != before:
            log.warning("consumer %s: %s", self.name, self._topic_problem)

    def _recheck_topic(self, consumer: Consumer) -> None:
        """While the topic is missing or refused, ask again now and then: it may be created or allowed."""
        if not self._topic_problem or time.monotonic() - self._topic_checked < BROKER_RECHECK:
            return
        self._topic_checked = time.monotonic()
        try:
            self._check_topic(consumer.list_topics(self.topic, timeout=2))
        except KafkaException:
            return

    def _to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _wait_loop(self, coro_fn: Callable[[], Awaitable[T]], timeout: float) -> T | None:
        """Run a coroutine in the loop and wait for it from the poll thread (rebalance callbacks)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return None

        async def call() -> T:
            return await coro_fn()

        try:
            future = asyncio.run_coroutine_threadsafe(call(), loop)
            return future.result(timeout)
        except (RuntimeError, concurrent.futures.TimeoutError) as exc:
            log.warning("consumer %s: event loop did not answer a rebalance in time: %r", self.name, exc)
            return None

    def _flush_commits(self, consumer: Consumer, asynchronous: bool = True) -> None:
        """Poll thread: commit what the loop finished. Asynchronous in steady state, so polling
        never waits for a round trip; librdkafka sends a member's commits in order, and the
        synchronous ones (at a revoke and before close) wait for every earlier one."""
        with self._commit_lock:
            pending, self._pending_commits = self._pending_commits, {}
            offsets = self._owned_offsets(pending)
        if offsets:
            self._commit(consumer, offsets, asynchronous)

    def _owned_offsets(self, pending: dict[int, tuple[int, int]]) -> dict[int, int]:
        """The offsets of ``pending`` whose generation we still own (call with the commit lock)."""
        offsets = {}
        for number, (generation, offset) in pending.items():
            if self._owned.get(number) == generation:
                offsets[number] = offset
            else:
                log.debug(
                    "consumer %s: dropped a commit of %s/%d/%d from an old assignment",
                    self.name,
                    self.topic,
                    number,
                    offset,
                )
        return offsets

    def _commit(self, consumer: Consumer, offsets: dict[int, int], asynchronous: bool = False) -> None:
        tps = [TopicPartition(self.topic, p, o) for p, o in sorted(offsets.items())]
        try:
            if asynchronous:
                consumer.commit(offsets=tps, asynchronous=True)
            else:
                consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            log.warning("consumer %s: commit of %s failed, will retry: %s", self.name, offsets, exc)
            self._retry_commits(offsets)
            return
        for p, o in offsets.items():
            self._commit_sent[p] = max(o, self._commit_sent.get(p, -1))
        if not asynchronous:
            self._note_committed(offsets)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Poll thread (librdkafka's commit callback, served by poll): the result of a commit."""
        done, failed = {}, {}
        for tp in partitions:
            if tp.topic != self.topic or tp.offset < 0:
                continue
            if err is None and tp.error is None:
                done[tp.partition] = tp.offset
            elif self._commit_sent.get(tp.partition) == tp.offset:  # nothing later went out since
                failed[tp.partition] = tp.offset
        if done:
            self._note_committed(done)
        if failed:
            log.warning("consumer %s: commit of %s failed, will retry: %s", self.name, failed, err)
            self._retry_commits(failed)

    def _note_committed(self, offsets: dict[int, int]) -> None:
        with self._commit_lock:  # lag() reads it from the event loop
            for p, o in offsets.items():
                self._committed_here[p] = max(o, self._committed_here.get(p, -1))
        log.debug("consumer %s committed %s", self.name, offsets)

    def _retry_commits(self, offsets: dict[int, int]) -> None:
        """Send these again with the next flush, unless the partition left or moved past them."""
        with self._commit_lock:
            for p, o in offsets.items():
                generation = self._owned.get(p)
                if generation is not None:
                    later = self._pending_commits.get(p, (generation, -1))
                    self._pending_commits[p] = (generation, max(o, later[1]))

    def _count_backlog(self, records: list[Message]) -> bool:
        """Poll thread: add the batch's records to the backlog; True if any is a record (not an error)."""
        counts: dict[int | None, int] = {}
        for record in records:
            if record.error() is None:
                number = record.partition()
                counts[number] = counts.get(number, 0) + 1
        if counts:
            with self._commit_lock:  # one lock per batch, not per record
                for part, count in counts.items():
                    number = int(part or 0)
                    self._backlog[number] = self._backlog.get(number, 0) + count
        return bool(counts)

    def _hold_intake(self, consumer: Consumer) -> bool:
        """Backpressure, decided in the poll thread: True means "do not poll now".

        A partition over ``max_uncommitted`` first holds polling for up to HOLD_BEFORE_PAUSE
        (usually the loop catches up in milliseconds). Only a backlog that lasts longer pauses
        the partition in librdkafka: pausing drops its prefetched records, and fetching them
        again after resume costs a broker round trip, so it is kept for slow handlers.
        Holding stays short so rebalance callbacks (served by polling) are never late by much.
        """
        with self._commit_lock:
            backlog = dict(self._backlog)
        over = [n for n, held in backlog.items() if held >= self._max_uncommitted and n not in self._paused]
        now = time.monotonic()
        if not over:
            self._over_since = None
        elif self._over_since is None:
            self._over_since = now
        held = bool(over) and now - (self._over_since or now) < HOLD_BEFORE_PAUSE
        self._apply_backpressure(consumer, backlog, [] if held else over)
        return held

    def _apply_backpressure(self, consumer: Consumer, backlog: dict[int, int], pause: list[int]) -> None:
        resume = [n for n in self._paused if backlog.get(n, 0) <= self._max_uncommitted // 2]
        try:
            if pause:
                consumer.pause([TopicPartition(self.topic, n) for n in pause])
                log.debug("consumer %s paused %s: backlog %s", self.name, pause, backlog)
            if resume and not self._stopping:
                consumer.resume([TopicPartition(self.topic, n) for n in resume])
                log.debug("consumer %s resumed %s", self.name, resume)
        except KafkaException as exc:
            log.warning("consumer %s: pause/resume failed: %s", self.name, exc)
            return
        self._paused.update(pause)
        if not self._stopping:
            self._paused.difference_update(resume)

    def _forget(self, numbers: list[int]) -> None:
        """Poll thread: partitions assigned afresh or given up start with no backlog, unpaused."""
        with self._commit_lock:
            for number in numbers:
                self._backlog.pop(number, None)
        self._paused.difference_update(numbers)
        with self._commit_lock:
            for number in numbers:
                self._committed_here.pop(number, None)
        for number in numbers:
            self._commit_sent.pop(number, None)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [tp.partition for tp in partitions]
        self._forget(numbers)
        # librdkafka keeps an application pause across unassign and assign: a partition paused
        # for backpressure before a rebalance would come back paused and never be fetched again.
        try:
            consumer.assign(partitions)
            consumer.resume(partitions)
        except KafkaException as exc:
            log.warning("consumer %s: resume of assigned partitions %s failed: %s", self.name, numbers, exc)
        log.info("consumer %s assigned %s partitions %s", self.name, self.topic, numbers)
        self._generation += 1
        with self._commit_lock:
            for number in numbers:
                self._owned[number] = self._generation
        self._to_loop(self._assign, numbers, self._generation)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._give_up_partitions(consumer, partitions, commit=True)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost (session expired): another member may own them already, so committing is wrong.
        self._give_up_partitions(consumer, partitions, commit=False)

    def _give_up_partitions(self, consumer: Consumer, partitions: list[TopicPartition], commit: bool) -> None:
        numbers = [tp.partition for tp in partitions]
        log.info("consumer %s %s partitions %s", self.name, "revoked" if commit else "lost", numbers)
        finished = (
            self._wait_loop(
                lambda: self._revoke(numbers, hand_over=commit), self._revoke_grace + REVOKE_SLACK
            )
            or {}
        )
        self._forget(numbers)
        with self._commit_lock:
            offsets = self._owned_offsets(finished)
            for number in numbers:
                pending = self._pending_commits.pop(number, None)
                if pending is not None:
                    for n, o in self._owned_offsets({number: pending}).items():
                        offsets[n] = max(o, offsets.get(n, -1))
        if commit and offsets:
            self._commit(consumer, offsets)
        with self._commit_lock:  # from here on, nothing of these partitions is ours to commit
            for number in numbers:
                self._pending_commits.pop(number, None)
                self._owned.pop(number, None)

    def _on_kafka_error(self, err: KafkaError) -> None:
        code = err.code()
        if err.fatal():
            self._fatal_error = err.str()
        if code in TOPIC_REFUSED:
            self._topic_problem = f"topic {self.topic}: {err.str()}"
        # "all brokers down" says less than the transport or auth error before it: keep that one.
        if code in (KafkaError._TRANSPORT, KafkaError._AUTHENTICATION) or (
            code == KafkaError._ALL_BROKERS_DOWN and not self._brokers_down
        ):
            self._brokers_down = err.str()
        log.warning("consumer %s: kafka: %s", self.name, err.str())


def poll_batch(consumer: Consumer, timeout: float) -> list[Message]:
    """Wait up to POLL_TIMEOUT for one record, then take what else is already fetched.

    (``consume(n, timeout)`` alone would hold the first record back until n arrived or the
    timeout passed, adding up to POLL_TIMEOUT of latency to every quiet-time message.)
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(POLL_BATCH - 1, 0)]


# Errors that mean nothing will be read from the topic until someone changes it.
TOPIC_REFUSED = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    }
)
