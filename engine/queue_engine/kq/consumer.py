"""go-queue's kq consumer (KqConf: brokers, group, topic, offset, concurrency), made safe.

Where things are (each module states the thread it runs on and what it guarantees):
- this module: construction and settings, ``run``/``stop``, ``health``, ``lag``, and the
  event-loop side of the group: assignment (reading the attempts journal), revoke, and the
  intake of fetched batches into per-partition state;
- poll_thread.py: the one thread that owns librdkafka's Consumer (poll, commit,
  pause/resume, rebalance callbacks), with its commands in poll_commands.py;
- dispatch.py: per-key lanes, worker tasks, handler calls and what their outcomes do;
  batch_dispatch.py: the batch workers that take their place with ``batch_handler``;
- offsets.py (what may be committed), attempt_book.py + attempt_journal.py + solo_gate.py
  (attempt counts that survive crashes), dead_letter_writer.py, call_metrics.py, lag.py,
  deadlines.py (the watchdog that cuts handler calls at their timeout).

The poll thread hands whole fetched batches to the loop with one ``call_soon_threadsafe``
each; the loop hands commits and commands back through a lock-guarded dict and a command
queue (a command queued after the thread exited fails at once). ``lag()`` never uses the poll
thread: it reads what that thread noted (its own commits, the fetched watermarks) and asks
the rest through an AdminClient (lag.py).

Guarantees:
- an offset is committed only once the handler finished with it (success, or written to the
  dead-letter topic and acknowledged), and never past an unfinished message of its partition;
- only partitions assigned right now commit: a completion from an earlier assignment (one
  that finished after its revoke) is dropped, so it cannot rewind the new owner's offset;
- records with the same key (per partition) reach the handler one at a time in offset order,
  also across a rebalance: a call abandoned at a revoke holds back the key when the partition
  comes back to this consumer. Records without a key have no order and run fully
  concurrently, as Kafka gives them none;
- at most ``concurrency`` handler calls run at once (with ``batch_handler``: batches, of at
  most ``max_batch`` messages each, see batch_dispatch.py); a partition whose uncommitted backlog
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
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, Message

from queue_engine import metrics
from queue_engine.deadlines import Deadlines
from queue_engine.durations import format_duration
from queue_engine.errors import ConfigError, QueueError, Unavailable
from queue_engine.kq.attempt_book import PartitionAttempts
from queue_engine.kq.attempt_journal import AttemptJournal, PartitionRecord
from queue_engine.kq.batch_dispatch import BatchDispatch, BatchHandler, one_at_a_time
from queue_engine.kq.call_metrics import CallMetrics
from queue_engine.kq.config import (
    check_brokers,
    check_client_config,
    check_name,
    check_offset,
    client_config,
    without_consumer_keys,
)
from queue_engine.kq.dead_letter_writer import DeadLetterPusher, DeadLetterWriter, nap
from queue_engine.kq.dispatch import Handler, Lane, PartitionState
from queue_engine.kq.journal_link import LoopJournalLink
from queue_engine.kq.lag import AdminLag
from queue_engine.kq.message import from_record
from queue_engine.kq.poll_commands import PollCommands
from queue_engine.kq.poll_thread import TOPIC_REFUSED, PollThread
from queue_engine.kq.producer_core import PRODUCER_DEFAULTS, PRODUCER_MANAGED
from queue_engine.kq.security import KafkaSecurity
from queue_engine.kq.solo_gate import SoloGate, gate_for
from queue_engine.policy import DeliveryPolicy

log = logging.getLogger("queue_engine.kq.consumer")

CONSUMER_DEFAULTS: dict[str, Any] = {
    # librdkafka prefetches up to 64 MB per consumer by default; our own backlog bound is the buffer.
    "queued.max.messages.kbytes": 16384,
}
DEFAULT_POLICY = DeliveryPolicy()
# Offsets the attempts journal's lease covers ahead of the last one received: one journal write
# per about LEASE_SPAN / 4 messages received on the healthy path (attempt_book.received); after
# a crash, at most about this many (plus the uncommitted backlog) messages per partition are
# suspects, each called alone.
LEASE_SPAN = 1000
JOURNAL_TIMEOUT = 5.0
JOURNAL_RETRY = 2.0  # seconds between tries to read the journal at an assignment
DEFAULT_MAX_BATCH = 100
DEFAULT_MAX_BATCH_WAIT = 0.01


class KafkaConsumer(PollThread, BatchDispatch):
    """Consume ``topic`` in consumer group ``group`` and hand each record to ``handler``.

    Or, with ``batch_handler`` instead of ``handler``, hand records in batches: up to
    ``max_batch`` (default 100) messages per call, a partial batch waiting at most
    ``max_batch_wait`` seconds (default 0.01) for more; the handler answers one Outcome per
    message, in order. ``concurrency`` then counts batches in flight. Per key order, retries,
    dead letters and the attempts journal work per message as with ``handler``
    (batch_dispatch.py says how).
    """

    def __init__(
        self,
        brokers: Sequence[str],
        topic: str,
        group: str,
        handler: Handler | None = None,
        *,
        batch_handler: BatchHandler | None = None,
        max_batch: int | None = None,
        max_batch_wait: float | None = None,
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
        if (handler is None) == (batch_handler is None):
            raise ConfigError(
                "handler, batch_handler: give exactly one (handler: one message per call; "
                "batch_handler: a sequence of messages per call, one Outcome each)"
            )
        if batch_handler is None:
            if max_batch is not None or max_batch_wait is not None:
                raise ConfigError("max_batch, max_batch_wait: only with batch_handler; drop them or use one")
        else:
            max_batch = DEFAULT_MAX_BATCH if max_batch is None else max_batch
            max_batch_wait = DEFAULT_MAX_BATCH_WAIT if max_batch_wait is None else max_batch_wait
            if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
                raise ConfigError(f"max_batch: {max_batch!r}; use a whole number of 1 or more")
            if not (isinstance(max_batch_wait, (int, float)) and 0 <= max_batch_wait < math.inf):
                raise ConfigError(f"max_batch_wait: {max_batch_wait!r}; use seconds, 0 or more")
            self._batch_handler = batch_handler
            handler = one_at_a_time(batch_handler, self.name)  # the full path's calls: batches of one
        self._batched = batch_handler is not None
        self._max_batch = max_batch or 1
        self._max_batch_wait = float(max_batch_wait or 0.0)
        self._forming = asyncio.Lock()
        assert handler is not None
        self._handler = handler
        # Metric children looked up once: labels() costs more than the increment itself.
        self._received = metrics.RECEIVED.labels("kafka", self.name)
        # delivered, latency and in_flight, written per loop turn
        self._call_metrics = CallMetrics(self.name)
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
        self._partitions: dict[int, PartitionState] = {}
        self._ready: asyncio.Queue[Lane | None] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        # (partition, key) -> the lane whose call for that key runs now, in any assignment, and
        # the lanes of later assignments waiting for it to end.
        self._key_calls: dict[tuple[int, bytes], Lane] = {}
        self._key_waiting: dict[tuple[int, bytes], list[Lane]] = {}
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
        self._deadlines = Deadlines(loop)
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
        worker = self._batch_worker if self._batched else self._worker
        self._workers = [asyncio.create_task(worker()) for _ in range(self._concurrency)]
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
            self._deadlines.close()
            self._call_metrics.flush()
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
        self._deadlines.close()
        self._call_metrics.flush()
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

    # ---------------------------------------------------------------- event loop

    def _assign(self, numbers: list[int], generation: int) -> None:
        for number in numbers:
            old = self._partitions.get(number)
            if old is not None:  # assigned again without a revoke we saw: start clean
                old.revoked = True
                old.leaving.set()
                if old.book is not None:
                    old.book.abandon()
            self._partitions[number] = PartitionState(number, generation)
        if self._journal is not None:
            task = asyncio.ensure_future(self._load_attempts([self._partitions[n] for n in numbers]))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _load_attempts(self, states: list[PartitionState]) -> None:
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
        if record is not None and record.lease is not None:
            log.warning(
                "consumer %s: partition %d was not handed over cleanly (member %s); offsets below %d "
                "that are still uncommitted are handled one at a time",
                self.name,
                number,
                record.owner,
                record.lease,
            )
        link = LoopJournalLink(self._journal, number, JOURNAL_TIMEOUT)
        return PartitionAttempts(number, self._session, link, record, LEASE_SPAN)

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
        journal = self._journal is not None
        # A fetched batch comes in runs of one partition: its state is looked up once per run.
        number: int | None = None
        state: PartitionState | None = None
        for record in records:
            if record.error() is not None:
                self._intake_error(record)
                continue
            if record.partition() != number:
                number = record.partition()
                state = self._partitions.get(number)  # type: ignore[arg-type]
                if state is not None and (state.revoking or state.revoked or self._stopping):
                    state = None
            if state is None:
                continue  # not ours any more: it stays uncommitted for the next owner
            message = from_record(record, self.name, self.topic)
            if not state.tracker.receive(message.offset):
                self._release(state, 1)  # a re-fetch of one we already hold
                continue
            received += 1
            if journal:
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
            if journal:  # lease writes run ahead of what arrives, once per batch
                for state in self._partitions.values():
                    if state.book is not None and not (state.revoking or state.revoked):
                        state.book.received(state.tracker.last_received, state.leaving)

    def _intake_error(self, record: Message) -> None:
        err = record.error()
        assert err is not None
        if err.code() in TOPIC_REFUSED:
            self._topic_problem = f"topic {self.topic}: {err.str()}"
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consumer %s: %s", self.name, err.str())

    def _release(self, state: PartitionState, count: int) -> None:
        """``count`` records of the partition left the backlog (committable now, or duplicates)."""
        if count and not state.revoked:
            with self._commit_lock:
                self._backlog[state.number] = self._backlog.get(state.number, 0) - count
