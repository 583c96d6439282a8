"""The attempts journal: one small record per (group, partition) on a compacted side topic.

Why a side topic: Kafka's commit metadata would be free (it rides on the commit), but tansu
0.6 stores it and answers every OffsetFetch without it, so it does not survive a restart
there; the journal works on any Kafka-protocol broker and needs no other server.

A record says, for one partition of one group (see :class:`PartitionRecord`):
- ``lease``: offsets below it may have been handed to the handler by ``owner`` without a
  record of their own (the cheap path); None once the owner let go cleanly;
- ``attempts``: offset -> attempts known to have started (written on a failure, and before
  each call made alone after a crash), for offsets at or above the committed one.

Record key ``<group>/<partition>``; the journal has as many partitions as the topic had when it
was made, partition ``p`` of the topic is journaled on ``p % journal partitions``, so reading a
partition's latest record means reading the tail of one journal partition, not the whole log.

Every method but :meth:`AttemptJournal.write_soon` blocks (librdkafka round trips): call them
with ``asyncio.to_thread``. ``write_soon`` only queues the record (any thread); its result comes
from the journal's own poll thread, which serves the producer's delivery reports.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from queue_engine.errors import Unavailable
from queue_engine.kq.config import client_config, error_from_kafka, without_consumer_keys
from queue_engine.kq.security import KafkaSecurity

READ_WINDOW = 64  # records read back from a journal partition's end before looking further back
JOURNAL_CONFIG = {"cleanup.policy": "compact"}


@dataclass
class PartitionRecord:
    owner: str
    lease: int | None
    attempts: dict[int, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "lease": self.lease,
                "attempts": {str(o): n for o, n in self.attempts.items()},
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> PartitionRecord | None:
        """None for a record this version cannot read (it is then ignored, not fatal)."""
        try:
            data = json.loads(raw)
            lease = data["lease"]
            return cls(
                owner=str(data["owner"]),
                lease=None if lease is None else int(lease),
                attempts={int(o): int(n) for o, n in dict(data.get("attempts", {})).items()},
            )
        except (ValueError, KeyError, TypeError):
            return None


class AttemptJournal:
    """Reads and writes the journal records of ``group`` on ``topic``."""

    def __init__(
        self,
        bootstrap: str,
        security: KafkaSecurity | None,
        extra: Mapping[str, Any],
        *,
        topic: str,
        group: str,
        journal_topic: str,
        timeout: float = 10.0,
    ) -> None:
        self.topic = topic
        self.group = group
        self.journal_topic = journal_topic
        self._timeout = timeout
        self._bootstrap = bootstrap
        self._security = security
        self._extra = dict(extra)
        self._partitions = 0
        self._lock = threading.Lock()
        self._producer: Producer | None = None

    def _config(self, managed: Mapping[str, Any]) -> dict[str, Any]:
        # The journal's own settings win over the user's ``extra`` (made for the consumer).
        extra = {k: v for k, v in self._extra.items() if k not in managed}
        return client_config(self._bootstrap, self._security, {}, extra, managed)

    def _admin_config(self) -> dict[str, Any]:
        return without_consumer_keys(self._config({}))

    def ensure(self) -> int:
        """Create the journal topic when missing; its partition count."""
        with self._lock:
            if self._partitions:
                self._producer_now()
                return self._partitions
            admin = AdminClient(self._admin_config())
            try:
                topics = admin.list_topics(timeout=self._timeout).topics
                journal = topics.get(self.journal_topic)
                if journal is None or journal.error is not None or not journal.partitions:
                    source = topics.get(self.topic)
                    count = len(source.partitions) if source is not None and source.partitions else 1
                    self._create(admin, count)
                    journal = admin.list_topics(self.journal_topic, timeout=self._timeout).topics[
                        self.journal_topic
                    ]
                self._partitions = max(1, len(journal.partitions))
                self._producer_now()  # its first write waits for its setup (~0.5 s on tansu): start that now
            except KafkaException as exc:
                raise error_from_kafka(exc, f"attempts journal {self.journal_topic}") from exc
            return self._partitions

    def _create(self, admin: AdminClient, partitions: int) -> None:
        new = NewTopic(
            self.journal_topic, num_partitions=partitions, replication_factor=-1, config=JOURNAL_CONFIG
        )
        try:
            admin.create_topics([new], request_timeout=self._timeout)[self.journal_topic].result(
                self._timeout * 2
            )
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is None or err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    def _key(self, partition: int) -> bytes:
        return f"{self.group}/{partition}".encode()

    def _producer_now(self) -> Producer:
        """The journal's producer, made on first use (call with the lock), with its poll thread."""
        if self._producer is None:
            config = self._config({"acks": "all", "enable.idempotence": True, "linger.ms": 0})
            producer = self._producer = Producer(without_consumer_keys(config))
            threading.Thread(
                target=self._serve_reports, args=(producer,), name=f"kq-journal-{self.topic}", daemon=True
            ).start()
        return self._producer

    def _serve_reports(self, producer: Producer) -> None:
        """Journal poll thread: serve delivery reports (write_soon's results) until close."""
        while self._producer is producer:
            producer.poll(0.05)

    def write_soon(self, partition: int, record: PartitionRecord, done: Callable[[str | None], None]) -> bool:
        """Queue a write without waiting; ``done(None)`` once acknowledged (acks=all), else
        ``done(why)``, called from the journal's poll thread. False (nothing queued) until the
        journal topic is known to exist: then call :meth:`ensure` (it checks and creates it)
        and queue again. Records of one partition land in the order they were queued (the
        producer is idempotent)."""
        count = self._partitions
        producer = self._producer
        if not count or producer is None:
            return False

        def report(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                self._partitions = 0  # check (and create) the topic again: it may be gone
            done(None if err is None else f"attempts journal {self.journal_topic}: write failed: {err.str()}")

        try:
            self._produce(producer, partition, count, record, report)
        except (KafkaException, BufferError) as exc:
            done(f"attempts journal {self.journal_topic}: {exc}")
        return True

    def _produce(
        self,
        producer: Producer,
        partition: int,
        count: int,
        record: PartitionRecord,
        report: Callable[[KafkaError | None, Any], None],
    ) -> None:
        """Queue ``record`` on the journal partition of the topic's ``partition``."""
        producer.produce(
            self.journal_topic,
            record.encode(),
            self._key(partition),
            partition=partition % count,
            on_delivery=report,
        )

    def load(self, partitions: Iterable[int]) -> dict[int, PartitionRecord]:
        """The latest record of each of ``partitions`` that has one.

        Also makes the journal's producer (once): the first lease write of each partition is
        on its messages' path, and a producer made there first has to connect and get its
        producer id (tens of ms), where an assignment has time to spare.
        """
        try:
            found = self._load(partitions)
        except Exception:
            self._partitions = 0
            raise
        with self._lock:
            self._producer_now()
        return found

    def _load(self, partitions: Iterable[int]) -> dict[int, PartitionRecord]:
        count = self.ensure()
        wanted: dict[int, set[int]] = {}
        for number in partitions:
            wanted.setdefault(number % count, set()).add(number)
        reader = Consumer(
            self._config(
                {
                    # Assign-only reader: never joins nor commits, so its group is never the consumer's.
                    "group.id": f"{self.group}.attempts-reader",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "fetch.wait.max.ms": 10,  # the end of a partition is answered at once, not after 0.5 s
                }
            )
        )
        found: dict[int, PartitionRecord] = {}
        try:
            for journal_partition, numbers in wanted.items():
                found.update(self._read_back(reader, journal_partition, numbers))
        except KafkaException as exc:
            raise error_from_kafka(exc, f"attempts journal {self.journal_topic}") from exc
        finally:
            reader.close()
        return found

    def _read_back(
        self, reader: Consumer, journal_partition: int, numbers: set[int]
    ) -> dict[int, PartitionRecord]:
        """Read windows back from the end until every partition's latest record is found."""
        tp = TopicPartition(self.journal_topic, journal_partition)
        low, high = reader.get_watermark_offsets(tp, timeout=self._timeout)
        keys = {self._key(n): n for n in numbers}
        found: dict[int, PartitionRecord] = {}
        end: int | None = None  # None: read to the partition's end (tansu's high watermark can be low)
        start = max(low, high - READ_WINDOW)
        window = READ_WINDOW
        while True:
            newest: dict[int, PartitionRecord] = {}
            for record in self._read(reader, journal_partition, start, end):
                number = keys.get(record.key() or b"")
                decoded = PartitionRecord.decode(record.value() or b"") if number is not None else None
                if number is not None and decoded is not None and number not in found:
                    newest[number] = decoded
            found.update(newest)
            if len(found) == len(numbers) or start <= low:
                return found
            end, window = start, window * 4
            start = max(low, start - window)

    def _read(self, reader: Consumer, journal_partition: int, start: int, end: int | None) -> list[Any]:
        reader.assign([TopicPartition(self.journal_topic, journal_partition, start)])
        records: list[Any] = []
        try:
            while True:
                # poll, not consume(n, timeout): consume waits out its timeout even after the EOF event.
                record = reader.poll(self._timeout)
                if record is None:
                    raise Unavailable(
                        f"attempts journal {self.journal_topic}: no answer within {self._timeout}s"
                    )
                err = record.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return records
                    raise KafkaException(err)
                if end is not None and (record.offset() or 0) >= end:
                    return records
                records.append(record)
        finally:
            reader.unassign()

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(self._timeout)
