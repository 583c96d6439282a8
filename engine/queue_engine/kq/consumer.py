"""go-queue's kq consumer (KqConf: brokers, group, topic, offset, concurrency), made safe.

Threads: librdkafka's Consumer is a blocking client, so one poll thread owns it (consume,
commit, pause/resume, rebalance callbacks); everything else runs in the event loop. The poll
thread hands batches of records to the loop with ``call_soon_threadsafe``; the loop hands
commits and commands back through a lock-guarded dict and a command queue (poll_commands.py:
a command queued after the thread exited fails at once). ``lag()`` never uses the poll thread:
it reads what that thread noted (its own commits, the fetched watermarks) and asks the rest
through an AdminClient (lag.py).

Guarantees:
- an offset is committed only once the handler finished with it (success, or written to the
  dead-letter topic and acknowledged), and never past an unfinished message of its partition;
- only partitions assigned right now commit: a completion from an earlier assignment (one
  that finished after its revoke) is dropped, so it cannot rewind the new owner's offset;
- records with the same key (per partition) reach the handler one at a time in offset order,
  also across a rebalance: a call abandoned at a revoke holds back the key when the partition
  comes back to this consumer. Records without a key have no order and run fully
  concurrently, as Kafka gives them none;
- at most ``concurrency`` handler calls run at once; a partition whose uncommitted backlog
  reaches ``max_uncommitted`` is paused until it halves, so memory stays flat; every partition
  is resumed when it is assigned (librdkafka keeps a pause across a rebalance);
- a dead letter that cannot be written is never committed past; waits for the app and
  dead-letter backoffs end at stop (and a revoke), so only handler calls use the grace.
- attempt counts survive restarts and rebalances (attempt_book.py): no call starts on an
  offset the attempts journal does not cover, and after a crash each message the dead process
  may have had in the handler is called alone, so a message that kills the process every time
  is dead-lettered after ``max_attempts`` deaths and its bystanders are not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time
import types
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from queue_engine import metrics
from queue_engine.durations import format_duration
from queue_engine.errors import ConfigError, QueueError, Unavailable
from queue_engine.kq import eager
from queue_engine.kq.attempt_book import RETRY_WRITE, PartitionAttempts
from queue_engine.kq.attempt_journal import AttemptJournal, PartitionRecord
from queue_engine.kq.call_metrics import RESULTS, UNAVAILABLE, CallMetrics
from queue_engine.kq.config import (
    check_brokers,
    check_client_config,
    check_name,
    check_offset,
    client_config,
    error_from_kafka,
    without_consumer_keys,
)
from queue_engine.kq.dead_letter_writer import DeadLetterPusher, DeadLetterWriter, nap
from queue_engine.kq.lag import AdminLag
from queue_engine.kq.message import KafkaMessage, from_record, message_id
from queue_engine.kq.offsets import OffsetTracker
from queue_engine.kq.poll_commands import PollCommands
from queue_engine.kq.producer_core import PRODUCER_DEFAULTS, PRODUCER_MANAGED
from queue_engine.kq.security import KafkaSecurity
from queue_engine.kq.solo_gate import SoloGate, gate_for
from queue_engine.policy import DeliveryPolicy, Outcome, Verdict

log = logging.getLogger("queue_engine.kq.consumer")
Handler = Callable[[KafkaMessage], Awaitable[Outcome]]
T = TypeVar("T")

CONSUMER_DEFAULTS: dict[str, Any] = {
    # librdkafka prefetches up to 64 MB per consumer by default; our own backlog bound is the buffer.
    "queued.max.messages.kbytes": 16384,
}
POLL_BATCH = 500
DEFAULT_POLICY = DeliveryPolicy()
POLL_TIMEOUT = 0.1
PAUSED_POLL_TIMEOUT = 0.005
HOLD_BEFORE_PAUSE = 1.0
WATERMARKS_EVERY = 0.1  # seconds between notes of the fetched watermarks, for lag() (local reads)
BROKER_RECHECK = 5.0  # seconds between metadata probes while the brokers look down
# Offsets the attempts journal's lease covers ahead: one journal write per about LEASE_SPAN / 2
# messages on the healthy path; after a crash, at most about this many (plus the uncommitted
# backlog) messages per partition are suspects, each called alone.
LEASE_SPAN = 1000
JOURNAL_TIMEOUT = 5.0
# Messages a worker delivers from one lane before it lets other lanes and the intake in.
RUN_LENGTH = 100
JOURNAL_RETRY = 2.0  # seconds between tries to read the journal at an assignment


@dataclasses.dataclass(eq=False)
class _Partition:
    number: int
    generation: int  # which assignment this state belongs to: completions of older ones never commit
    tracker: OffsetTracker = dataclasses.field(default_factory=OffsetTracker)
    lanes: dict[bytes, _Lane] = dataclasses.field(default_factory=dict)
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
class _Lane:
    """The messages of one key in one partition, handled strictly one after another."""

    partition: _Partition
    key: bytes | None
    messages: deque[KafkaMessage]
    busy: bool = False  # queued for a worker, being handled, or waiting out a backoff
    more: bool = False  # its head finished and more wait: the worker's run goes on (_drain)


class KafkaConsumer:
    """Consume ``topic`` in consumer group ``group`` and hand each record to ``handler``."""

    def __init__(
        self,
        brokers: Sequence[str],
        topic: str,
        group: str,
        handler: Handler,
        *,
        offset: str = "last",
        concurrency: int = 8,
        policy: DeliveryPolicy = DEFAULT_POLICY,
        dead_letter_topic: str | None = None,
        security: KafkaSecurity | None = None,
        extra: Mapping[str, Any] | None = None,
        name: str | None = None,
        max_uncommitted: int = 1000,
        revoke_grace: float = 10.0,
        connect_timeout: float = 10.0,
        attempts_topic: str | None = None,
        journal_attempts: bool = True,
    ) -> None:
        self.topic = check_name("topic", topic)
        self.group = check_name("group", group)
        self.name = name or topic
        self.dead_letter_topic = check_name("dead_letter_topic", dead_letter_topic or f"{topic}.dlq")
        if self.dead_letter_topic == self.topic:
            raise ConfigError("dead_letter_topic: must differ from topic, or dead letters would loop")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency: {concurrency!r}; use a whole number of 1 or more")
        if max_uncommitted < 1:
            raise ConfigError(f"max_uncommitted: {max_uncommitted!r}; use 1 or more")
        self._brokers = check_brokers(brokers)
        self._security = security
        self._extra = dict(extra or {})
        self._config = client_config(
            self._brokers,
            security,
            CONSUMER_DEFAULTS,
            extra,
            {
                "group.id": self.group,
                "auto.offset.reset": check_offset(offset),
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "error_cb": self._on_kafka_error,
                "on_commit": self._on_commit,
            },
        )
        # librdkafka checks its settings only when the client is made, in run(): check them now.
        check_client_config(self._config, "consumer")
        check_client_config(
            client_config(
                self._brokers,
                security,
                PRODUCER_DEFAULTS,
                without_consumer_keys(self._extra),
                PRODUCER_MANAGED,
            ),
            "dead-letter producer",
        )
        self._handler = handler
        # Metric children looked up once: labels() costs more than the increment itself.
        self._received = metrics.RECEIVED.labels("kafka", self.name)
        self._in_flight = metrics.IN_FLIGHT.labels("kafka", self.name)
        self._call_metrics = CallMetrics(self.name)  # delivered and latency, written per loop turn
        self._policy = policy
        self._concurrency = concurrency
        self._max_uncommitted = max_uncommitted
        self._revoke_grace = revoke_grace
        self._connect_timeout = connect_timeout
        # Attempts that survive restarts and rebalances (see attempt_book): on by default.
        self.attempts_topic = check_name("attempts_topic", attempts_topic or f"{topic}.attempts")
        if self.attempts_topic in (self.topic, self.dead_letter_topic):
            raise ConfigError("attempts_topic: must differ from topic and dead_letter_topic")
        self._journal = (
            AttemptJournal(
                self._brokers,
                security,
                self._extra,
                topic=self.topic,
                group=self.group,
                journal_topic=self.attempts_topic,
                timeout=JOURNAL_TIMEOUT,
            )
            if journal_attempts
            else None
        )
        self._session = uuid.uuid4().hex[:12]  # names this member's journal records
        self._journal_problem: str | None = None
        self._gate: SoloGate | None = None

        # Event-loop state.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._partitions: dict[int, _Partition] = {}
        self._ready: asyncio.Queue[_Lane | None] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        # (partition, key) -> the lane whose call for that key runs now, in any assignment, and
        # the lanes of later assignments waiting for it to end.
        self._key_calls: dict[tuple[int, bytes], _Lane] = {}
        self._key_waiting: dict[tuple[int, bytes], list[_Lane]] = {}
        self._dlq: DeadLetterWriter | None = None
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._stop_before_run = False
        self._stopped: asyncio.Event | None = None
        self._background: set[asyncio.Future[None]] = set()
        self._app_down_until = 0.0
        self._app_down_streak = 0

        # Shared with the poll thread.
        # partition -> (generation, offset). Only the generation we own right now may commit: a
        # completion that arrives after a revoke (a dead-letter ack, a late handler) must not
        # rewind the group under its new owner.
        self._pending_commits: dict[int, tuple[int, int]] = {}
        self._owned: dict[int, int] = {}  # partition -> generation, as librdkafka assigned it
        self._generation = 0  # poll thread only
        # Records handed to the loop and not yet committable, per partition. The poll thread
        # adds and pauses; the loop subtracts. Pausing must happen in the poll thread: it runs
        # ahead of the loop and would otherwise fetch the whole topic before the loop noticed.
        self._backlog: dict[int, int] = {}
        self._paused: set[int] = set()  # poll thread only
        # partition -> the offset this member last committed in its current assignment (poll thread).
        self._committed_here: dict[int, int] = {}
        # partition -> the highest offset this assignment sent a commit for (poll thread): a
        # failed asynchronous commit is sent again only if nothing later went out after it.
        self._commit_sent: dict[int, int] = {}
        self._over_since: float | None = None  # poll thread only
        self._commit_lock = threading.Lock()
        self._commands = PollCommands(self.name)
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_done: asyncio.Future[None] | None = None
        self._brokers_down: str | None = None
        # Why the topic cannot be consumed (missing, not authorized), or a fatal client error:
        # both keep the consumer unhealthy, as nothing would ever arrive.
        self._topic_problem: str | None = None
        self._topic_checked = 0.0
        self._fatal_error: str | None = None
        self._brokers_checked = 0.0
        self._fatal: BaseException | None = None
        self._subscribed = False
        # partition -> (low, high) watermarks from our fetches, noted by the poll thread for lag():
        # reading them from another thread would wait for the poll thread's rebalance callbacks.
        self._watermarks: dict[int, tuple[int, int]] = {}
        self._watermarks_noted = 0.0
        # Lag from an AdminClient, off the poll thread (see lag.py).
        self._lag_admin = AdminLag(
            client_config(self._brokers, security, {}, self._extra, {}), self.topic, self.group
        )

    # ----------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Consume until :meth:`stop`; raises Unavailable if the brokers cannot be reached."""
        if self._loop is not None:
            raise RuntimeError("KafkaConsumer.run() can be called once; create a new consumer")
        if self._stop_before_run:
            return
        loop = self._loop = asyncio.get_running_loop()
        self._gate = gate_for(loop)
        self._stopped = asyncio.Event()
        self._thread_done = loop.create_future()
        pusher = DeadLetterPusher(
            self._brokers.split(","),
            self.dead_letter_topic,
            security=self._security,
            extra=without_consumer_keys(self._extra),
            name=self.name,
        )
        self._dlq = DeadLetterWriter(pusher, self.dead_letter_topic, self.name, self._policy)
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self._concurrency)]
        self._thread = threading.Thread(target=self._poll_main, name=f"kq-consume-{self.name}", daemon=True)
        self._thread.start()
        try:
            await asyncio.shield(self._thread_done)
        except asyncio.CancelledError:
            await self.stop(grace=0)
            raise
        except BaseException as exc:
            # The poll thread died on its own (brokers unreachable, fatal error): clean up, report.
            self._fatal = exc
            await self._shutdown_workers(0)
            await self._close_dlq()
            self._stopped.set()
            if isinstance(exc, QueueError):
                raise
            raise Unavailable(f"kafka consumer for {self.topic}: {exc}") from exc
        await self._stopped.wait()

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking messages, let in-flight ones finish within ``grace``, commit, leave the group.

        Messages still unfinished after ``grace`` (or waiting out a retry backoff) are handed
        back: not committed, so the group delivers them again.
        """
        if self._loop is None or self._stopped is None:
            self._stop_before_run = True  # run() will return at once
            return
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        # Waits for the app and dead-letter backoffs end now: only handler calls get the grace.
        self._stop_event.set()
        for state in self._partitions.values():
            state.leaving.set()
        log.info("stopping consumer %s (grace %s)", self.name, format_duration(grace))
        self._commands.submit(lambda c: c.pause(c.assignment()))  # fails at once if the thread is gone
        await self._shutdown_workers(grace)
        self._closing.set()
        if self._thread_done is not None:
            try:
                await asyncio.shield(self._thread_done)
            except BaseException as exc:  # already reported by run()
                log.debug("poll thread ended with %r", exc)
        await self._close_dlq()
        self._stopped.set()

    async def _shutdown_workers(self, grace: float) -> None:
        for _ in self._workers:
            self._ready.put_nowait(None)
        if not self._workers:
            return
        _, pending = await asyncio.wait(self._workers, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _close_dlq(self) -> None:
        self._lag_admin.close()
        if self._journal is not None:
            await asyncio.to_thread(self._journal.close)
        if self._dlq is not None:
            try:
                await self._dlq.pusher.close(timeout=5)
            except QueueError as exc:
                log.warning("dead-letter producer for %s closed with %s", self.name, exc)

    def health(self) -> tuple[bool, str]:
        """(healthy, why) for readiness probes: started, brokers reachable, not stopping."""
        if self._fatal is not None:
            return False, f"stopped on error: {self._fatal}"
        if self._loop is None:
            return False, "not started"
        if self._stopping:
            return False, "stopping"
        if not self._subscribed:
            return False, f"connecting to {self._brokers}"
        if self._brokers_down:
            return False, f"brokers unreachable: {self._brokers_down}"
        if self._fatal_error:
            return False, f"fatal kafka error: {self._fatal_error}"
        if self._topic_problem:
            return False, self._topic_problem
        if self._dlq is not None and self._dlq.problem:
            return False, self._dlq.problem
        journal_problem = self._journal_problem or next(
            (s.book.problem for s in self._partitions.values() if s.book is not None and s.book.problem), None
        )
        if journal_problem:
            return False, journal_problem
        if time.monotonic() < self._app_down_until:
            return True, f"consuming {self.topic}; handler unavailable, holding messages back"
        return True, f"consuming {self.topic} ({len(self._partitions)} partition(s) assigned)"

    @property
    def assigned_partitions(self) -> list[int]:
        """Partitions this member owns right now (empty before the group assigned any)."""
        return sorted(n for n, state in self._partitions.items() if not (state.revoking or state.revoked))

    async def lag(self) -> dict[int, int]:
        """partition -> high watermark - committed offset: the partitions this member owns while
        it runs (each member reports its own), else every partition of the topic.

        Never on the poll thread (a round trip there would hold up fetches, commits and
        rebalance callbacks; tansu took seconds to answer an OffsetFetch during a backlog):
        this member's own commits and the watermarks its fetches saw cost nothing, only what
        is not known yet is asked through an AdminClient (see lag.py).
        """
        with self._commit_lock:
            owned = sorted(self._owned)
            committed = {p: self._committed_here[p] for p in owned if p in self._committed_here}
        if owned and self._thread is not None and self._thread.is_alive():
            lags = await asyncio.to_thread(
                self._lag_admin.lag, 10, owned, committed, self._fetched_watermarks
            )
        else:
            lags = await asyncio.to_thread(self._lag_admin.lag, 10)
        for partition, value in lags.items():
            metrics.KAFKA_LAG.labels(self.name, str(partition)).set(value)
        return lags

    def _fetched_watermarks(self, partition: int) -> tuple[int, int] | None:
        """The watermarks our own fetches saw, as the poll thread last noted them."""
        return self._watermarks.get(partition)

    # --------------------------------------------------------------- poll thread

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
                records = _poll_batch(consumer, PAUSED_POLL_TIMEOUT if self._paused else POLL_TIMEOUT)
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
                lambda: self._revoke(numbers, hand_over=commit), self._revoke_grace + JOURNAL_TIMEOUT + 5
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
        if code in _TOPIC_REFUSED:
            self._topic_problem = f"topic {self.topic}: {err.str()}"
        # "all brokers down" says less than the transport or auth error before it: keep that one.
        if code in (KafkaError._TRANSPORT, KafkaError._AUTHENTICATION) or (
            code == KafkaError._ALL_BROKERS_DOWN and not self._brokers_down
        ):
            self._brokers_down = err.str()
        log.warning("consumer %s: kafka: %s", self.name, err.str())

    # ---------------------------------------------------------------- event loop

    def _assign(self, numbers: list[int], generation: int) -> None:
        for number in numbers:
            old = self._partitions.get(number)
            if old is not None:  # assigned again without a revoke we saw: start clean
                old.revoked = True
                old.leaving.set()
                if old.book is not None:
                    old.book.abandon()
            self._partitions[number] = _Partition(number, generation)
        if self._journal is not None:
            task = asyncio.ensure_future(self._load_attempts([self._partitions[n] for n in numbers]))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _load_attempts(self, states: list[_Partition]) -> None:
        """Read the partitions' journal records, then let their held records go to the handler."""
        assert self._journal is not None
        journal = self._journal
        while True:
            states = [s for s in states if not (s.revoking or s.revoked)]
            if not states or self._stopping:
                return
            try:
                records = await asyncio.to_thread(journal.load, [s.number for s in states])
                break
            except QueueError as exc:
                if self._journal_problem is None:
                    log.warning("consumer %s: reading the attempts journal failed: %s", self.name, exc)
                self._journal_problem = f"attempts journal {self.attempts_topic}: {exc}"
                await nap(JOURNAL_RETRY, self._stop_event)
        self._journal_problem = None
        for state in states:
            if state.revoking or state.revoked:
                continue
            state.book = self._new_book(state.number, records.get(state.number))
            held, state.held = state.held, []
            for message in held:
                attempt = state.book.first_attempt(message.offset)
                self._enqueue(
                    state, message if attempt == 1 else dataclasses.replace(message, attempt=attempt)
                )

    def _new_book(self, number: int, record: PartitionRecord | None) -> PartitionAttempts:
        assert self._journal is not None
        journal = self._journal

        loop = asyncio.get_running_loop()

        async def write(record: PartitionRecord) -> None:
            # Straight from the loop (no worker thread, no flush): a lease write costs one broker
            # round trip, so it keeps ahead of a fast partition. Until the journal topic is known
            # to exist, the blocking write checks (and creates) it in a thread.
            acked: asyncio.Future[str | None] = loop.create_future()

            def done(why: str | None) -> None:
                loop.call_soon_threadsafe(_settle, acked, why)

            if not journal.write_soon(number, record, done):
                await asyncio.to_thread(journal.write, number, record)
                return
            try:
                async with asyncio.timeout(JOURNAL_TIMEOUT):
                    why = await asyncio.shield(acked)
            except TimeoutError:
                raise Unavailable(
                    f"attempts journal {self.attempts_topic}: no ack within {JOURNAL_TIMEOUT}s"
                ) from None
            if why is not None:
                raise Unavailable(why)

        if record is not None and record.lease is not None:
            log.warning(
                "consumer %s: partition %d was not handed over cleanly (member %s); offsets below %d "
                "that are still uncommitted are handled one at a time",
                self.name,
                number,
                record.owner,
                record.lease,
            )
        return PartitionAttempts(number, self._session, write, record, LEASE_SPAN)

    async def _revoke(self, numbers: list[int], hand_over: bool = True) -> dict[int, tuple[int, int]]:
        """Stop dispatching the partitions, let in-flight work finish briefly, return what to commit.

        ``hand_over``: a clean revoke, so the journal records the hand-over (not for lost ones,
        which another member may own already).
        """
        states = [s for n in numbers if (s := self._partitions.get(n)) is not None]
        for state in states:
            state.revoking = True  # queued and backing-off messages are abandoned: uncommitted
            state.leaving.set()
        busy = [state.idle.wait() for state in states if state.running]
        if busy and not self._stopping:
            await asyncio.wait([asyncio.ensure_future(b) for b in busy], timeout=self._revoke_grace)
        books = [state.book for state in states if state.book is not None]
        if hand_over and books:
            closing = [asyncio.ensure_future(b.close()) for b in books]
            _, late = await asyncio.wait(closing, timeout=JOURNAL_TIMEOUT)
            for task in late:  # never written after the partition moved on
                task.cancel()
        for book in books:
            book.abandon()
        finished: dict[int, tuple[int, int]] = {}
        for state in states:
            state.revoked = True
            if state.tracker.committable is not None:
                finished[state.number] = (state.generation, state.tracker.committable)
            if state.running:
                log.warning(
                    "consumer %s: partition %d revoked with %d message(s) still in the handler; "
                    "they will be delivered again",
                    self.name,
                    state.number,
                    state.running,
                )
            if self._partitions.get(state.number) is state:
                del self._partitions[state.number]
        return finished

    def _intake(self, records: list[Message]) -> None:
        """Event loop: a batch from the poll thread goes to the lanes (or waits for the journal)."""
        received = 0  # counted once per batch: the metric's lock costs more than the count
        for record in records:
            err = record.error()
            if err is not None:
                if err.code() in _TOPIC_REFUSED:
                    self._topic_problem = f"topic {self.topic}: {err.str()}"
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer %s: %s", self.name, err.str())
                continue
            message = from_record(record, self.name)
            state = self._partitions.get(message.partition)
            if state is None or state.revoking or state.revoked or self._stopping:
                continue  # not ours any more: it stays uncommitted for the next owner
            if not state.tracker.receive(message.offset):
                self._release(state, 1)  # a re-fetch of one we already hold
                continue
            received += 1
            if self._journal is not None:
                book = state.book
                if book is None:
                    state.held.append(message)  # until the journal's counts are read
                    continue
                if book.known or book.suspect_below is not None:
                    attempt = book.first_attempt(message.offset)
                    if attempt != 1:
                        message = dataclasses.replace(message, attempt=attempt)
            self._enqueue(state, message)
        if received:
            self._received.inc(received)
            if self._journal is not None:  # lease writes run ahead of what arrives, once per batch
                for state in self._partitions.values():
                    if state.book is not None and not (state.revoking or state.revoked):
                        state.book.received(state.tracker.last_received, state.leaving)

    def _release(self, state: _Partition, count: int) -> None:
        """``count`` records of the partition left the backlog (committable now, or duplicates)."""
        if count and not state.revoked:
            with self._commit_lock:
                self._backlog[state.number] = self._backlog.get(state.number, 0) - count

    def _enqueue(self, state: _Partition, message: KafkaMessage) -> None:
        key = message.key
        lane: _Lane | None
        if key is None:
            lane = _Lane(state, None, deque([message]))
        else:
            lane = state.lanes.get(key)  # (setdefault would build a lane per message)
            if lane is None:
                lane = state.lanes[key] = _Lane(state, key, deque())
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
            if state.revoking or state.revoked:
                continue
            slot = None if lane.key is None else (state.number, lane.key)
            if slot is not None:
                holder = self._key_calls.get(slot)
                if holder is not None and holder is not lane:
                    # A call of an earlier assignment, abandoned at its revoke, still runs for
                    # this key: start the next one only after it ended, never beside it.
                    self._key_waiting.setdefault(slot, []).append(lane)
                    continue
                self._key_calls[slot] = lane
            state.running += 1
            state.idle.clear()
            try:
                await self._drain(lane)
            except Exception:  # a bug must not kill the worker nor wedge the key's lane
                log.exception("consumer %s: delivering from partition %d failed", self.name, state.number)
                if not lane.more:
                    self._requeue_later(lane, 1.0)
            finally:
                state.running -= 1
                if not state.running:
                    state.idle.set()
                if slot is not None:
                    del self._key_calls[slot]
                    for waiting in self._key_waiting.pop(slot, []):
                        self._requeue(waiting)
                if lane.more:  # the run was cut short: back in line behind the other lanes
                    lane.more = False
                    self._requeue(lane)

    async def _drain(self, lane: _Lane) -> None:
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

    def _deliver_now(self, lane: _Lane) -> Coroutine[Any, Any, None] | None:
        """Event loop: deliver the lane's head; None if that is done, else the rest to await.

        The healthy path (offset inside the lease, no crash suspect, no lone call waiting, a
        handler that finishes without awaiting and succeeds) runs here without a coroutine of
        its own: at 100,000+ messages a second the coroutine objects alone cost a tenth of the
        loop in allocation and garbage collection. Anything else continues in :meth:`_deliver`
        or in the returned coroutine, with the same rules.
        """
        message = lane.messages[0]
        book = lane.partition.book
        offset = message.offset
        if book is not None and (
            offset >= book.lease or book.suspect_below is not None or offset in book.known
        ):
            return self._deliver(lane)
        gate = self._gate
        assert gate is not None
        if gate.held:
            return self._deliver(lane)
        gate.running += 1  # the fast path of gate.enter()
        if book is not None:
            book.calling[offset] = message.attempt
        try:
            result, started = self._call_start(message)
        except BaseException:
            gate.leave()
            if book is not None:
                del book.calling[offset]
            raise
        if type(result) is eager.Started:
            return self._deliver_rest(lane, result, started)
        gate.leave()
        if book is not None:
            del book.calling[offset]
        return self._settle(lane, message, self._call_end(result, started), solo=False)

    async def _deliver_rest(self, lane: _Lane, result: eager.Started, started: float) -> None:
        """The rest of a :meth:`_deliver_now` call whose handler awaits."""
        message = lane.messages[0]
        book = lane.partition.book
        gate = self._gate
        assert gate is not None
        try:
            outcome = await self._call_rest(message, result, started)
        finally:
            gate.leave()
            if book is not None:
                del book.calling[message.offset]
        rest = self._settle(lane, message, outcome, solo=False)
        if rest is not None:
            await rest

    async def _deliver(self, lane: _Lane) -> None:
        """The full path of one delivery: the attempts journal's checks, lone calls, the gate."""
        message = lane.messages[0]
        state = lane.partition
        book = state.book
        solo = False
        if book is None:
            outcome = await self._attempt(message)
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
                if offset >= book.lease and not await book.cover(
                    offset, state.tracker.last_received, state.leaving
                ):
                    return
                book.calling[offset] = message.attempt
                try:
                    outcome = await self._attempt(message)
                finally:
                    del book.calling[offset]
        rest = self._settle(lane, message, outcome, solo)
        if rest is not None:
            await rest

    def _settle(
        self, lane: _Lane, message: KafkaMessage, outcome: Outcome, solo: bool
    ) -> Coroutine[Any, Any, None] | None:
        """Event loop: act on a call's outcome; a dead-letter write is returned to be awaited."""
        state = lane.partition
        if state.revoked:
            return None  # the partition moved on: the next owner delivers it again
        if not outcome.attempted:
            self._app_down(outcome)
            self._requeue_later(lane, max(0.0, self._app_down_until - time.monotonic()))
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
        self, lane: _Lane, message: KafkaMessage, reason: str, error: str
    ) -> None:
        if await self._dead_letter(lane.partition, message, reason, error):
            self._finish(lane)

    async def _dead_letter_exhausted(self, lane: _Lane, attempts: int) -> None:
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

    async def _attempt(self, message: KafkaMessage) -> Outcome:
        gate = self._gate
        assert gate is not None
        if gate.held:
            await gate.enter()
        else:
            gate.running += 1  # the fast path of enter()
        try:
            return await self._call(message)
        finally:
            gate.leave()

    async def _solo_attempt(self, lane: _Lane, book: PartitionAttempts) -> Outcome | None:
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
                return eager.start(awaitable), started
            return eager.Started(_await(awaitable), None), started  # a Future or other awaitable
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being stopped
            return Outcome.retry("handler was cancelled"), started  # cancelled from inside, not by us
        except Exception as exc:
            return self._raised(message, exc), started

    async def _call_rest(self, message: KafkaMessage, result: eager.Started, started: float) -> Outcome:
        """The rest of a handler call that awaited, under ``policy.timeout`` counted from its start."""
        loop = self._loop
        assert loop is not None
        in_flight = self._in_flight
        in_flight.inc()
        outcome: Any
        try:
            async with asyncio.timeout_at(
                loop.time() + self._policy.timeout - (time.perf_counter() - started)
            ):
                outcome = await eager.resume(result)
        except TimeoutError:
            outcome = Outcome.retry(f"handler timed out after {format_duration(self._policy.timeout)}")
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                in_flight.dec()
                raise  # we are being stopped: not a call that ended
            outcome = Outcome.retry("handler was cancelled")  # cancelled from inside, not by us
        except Exception as exc:
            outcome = self._raised(message, exc)
        in_flight.dec()
        return self._call_end(outcome, started)

    def _raised(self, message: KafkaMessage, exc: Exception) -> Outcome:
        log.warning("consumer %s: handler raised on %s: %r", self.name, message_id(message), exc)
        return Outcome.retry(f"{type(exc).__name__}: {exc}")

    def _call_end(self, result: Any, started: float) -> Outcome:
        """Count the call (per loop turn, see call_metrics) and make sure it is an Outcome."""
        outcome = result if isinstance(result, Outcome) else None
        if outcome is None:
            outcome = Outcome.retry(f"handler returned {result!r} instead of an Outcome")
        self._call_metrics.called(
            _RESULT_INDEX[outcome.verdict] if outcome.attempted else UNAVAILABLE,
            time.perf_counter() - started,
        )
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

    def _requeue_later(self, lane: _Lane, delay: float) -> None:
        assert self._loop is not None
        self._loop.call_later(delay, self._requeue, lane)

    def _requeue(self, lane: _Lane) -> None:
        if not (lane.partition.revoking or lane.partition.revoked or self._stopping):
            self._ready.put_nowait(lane)

    def _finish(self, lane: _Lane) -> None:
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
        held = state.tracker.uncommitted
        committable = state.tracker.finish(message.offset)
        book = state.book
        if book is not None and book.known:
            book.finished(message.offset)
        if committable is not None:
            if book is not None and (book.known or book.suspect_below is not None):
                book.committed(committable)
            number = state.number
            with self._commit_lock:  # (once for both: _release would take it again)
                self._pending_commits[number] = (state.generation, committable)
                self._backlog[number] = self._backlog.get(number, 0) - (held - state.tracker.uncommitted)
        if lane.messages:
            lane.more = True  # the worker's run goes on with it (see _drain)
        else:
            lane.busy = False
            if lane.key is not None and state.lanes.get(lane.key) is lane:
                del state.lanes[lane.key]

    async def _dead_letter(self, state: _Partition, message: KafkaMessage, reason: str, error: str) -> bool:
        """Write to the dead-letter topic and wait for its ack; True once it is safely there."""
        assert self._dlq is not None
        return await self._dlq.write(
            message, reason, error, state.leaving, lambda: state.revoked or self._stopping
        )


def _settle(future: asyncio.Future[str | None], why: str | None) -> None:
    if not future.done():
        future.set_result(why)


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _poll_batch(consumer: Consumer, timeout: float) -> list[Message]:
    """Wait up to POLL_TIMEOUT for one record, then take what else is already fetched.

    (``consume(n, timeout)`` alone would hold the first record back until n arrived or the
    timeout passed, adding up to POLL_TIMEOUT of latency to every quiet-time message.)
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(POLL_BATCH - 1, 0)]


_RESULT_INDEX = {verdict: RESULTS.index(verdict.value.lower()) for verdict in Verdict}

# Errors that mean nothing will be read from the topic until someone changes it.
_TOPIC_REFUSED = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    }
)
