"""One confluent-kafka Producer driven by a background poll thread.

librdkafka hands delivery reports to whoever calls ``poll``; a dedicated thread polls, gathers
the reports of one poll call and passes them on as a batch (one hop into the event loop per
batch, not per message). The async and sync pushers differ only in how they resolve a batch.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from queue_engine.errors import InvalidRequest, QueueError, Unavailable
from queue_engine.kq.config import check_brokers, check_name, client_config, error_from_kafka, log
from queue_engine.kq.message import Delivered
from queue_engine.kq.security import KafkaSecurity

Headers = Mapping[str, bytes | str | None] | Sequence[tuple[str, bytes | str | None]]
Result = Delivered | QueueError
Batch = list[tuple[Any, Result]]

PRODUCER_DEFAULTS: dict[str, Any] = {
    # push() waits for each ack, so do not hold messages back; under load librdkafka still
    # batches whatever queues up while earlier requests are in flight.
    "linger.ms": 0,
    # librdkafka's default is 5 minutes; a caller waiting on an ack should hear of a dead broker sooner.
    "message.timeout.ms": 30000,
}
# What "the broker acknowledged it" relies on: every in-sync replica, no duplicates on retry.
PRODUCER_MANAGED: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}


# The broker no longer knows this producer's id/epoch (e.g. it restarted): this instance would be
# refused forever, so a new one (with a new producer id) takes over.
PRODUCER_STATE_LOST = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError._FENCED,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError._FATAL,
    }
)


_BYTES_LIKE = (bytes, bytearray, memoryview)
_PLAIN_KEYS = frozenset({bytes, str})
_new_tuple = tuple.__new__


def normalize_headers(headers: Headers | None) -> list[tuple[str, str | bytes | None]] | None:
    """Header values as bytes (``str`` as UTF-8); ``None`` stays (Kafka allows a null value).

    Anything else is refused (:class:`InvalidRequest`): ``bytes(3)`` would silently send three
    NUL bytes for the number 3.
    """
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    normalized: list[tuple[str, str | bytes | None]] = []
    for name, value in items:
        if not isinstance(name, str):
            raise InvalidRequest(f"header name {name!r} must be text, not {type(name).__name__}")
        if value is None:
            normalized.append((name, None))
        elif isinstance(value, str):
            normalized.append((name, value.encode()))
        elif isinstance(value, _BYTES_LIKE):
            normalized.append((name, bytes(value)))
        else:
            raise InvalidRequest(
                f"header {name!r}: value must be bytes, str or None, not {type(value).__name__} "
                f"(send numbers as text, e.g. str({value!r}))"
            )
    return normalized


def check_key_and_value(value: Any, key: Any) -> None:
    """Refuse a key or value of a type Kafka cannot carry, naming it (a client error, not a 503)."""
    if value is not None and not isinstance(value, _BYTES_LIKE):
        raise InvalidRequest(
            f"message value must be bytes (or None), not {type(value).__name__}; encode it first"
        )
    if key is not None and not isinstance(key, (str, *_BYTES_LIKE)):
        raise InvalidRequest(f"message key must be bytes, str or None, not {type(key).__name__}")


class _Report:
    """The delivery callback of one message: its token, for :meth:`ProducerCore.report`.

    One small object per push (a ``functools.partial`` of a bound method is three, each of
    them for the garbage collector to track while the message is in flight)."""

    __slots__ = ("core", "token")

    def __init__(self, core: ProducerCore, token: Any) -> None:
        self.core = core
        self.token = token

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        self.core.report(self.token, err, msg)


class ProducerCore:
    """Produce with a token per message; ``sink`` receives ``[(token, Delivered | error), ...]``."""

    def __init__(
        self,
        brokers: Sequence[str] | str,
        topic: str,
        sink: Callable[[Batch], None],
        *,
        security: KafkaSecurity | None = None,
        extra: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        self.topic = check_name("topic", topic)
        self.name = name or topic
        self._sink = sink
        managed = {**PRODUCER_MANAGED, "error_cb": self._on_client_error}
        config = client_config(check_brokers(brokers), security, PRODUCER_DEFAULTS, extra, managed)
        self.last_client_error: str | None = None
        self._config = config
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise error_from_kafka(exc, "kafka producer config") from exc
        # librdkafka makes some errors fatal (e.g. PRODUCER_FENCED after a broker lost its
        # producer-id state): that instance refuses everything from then on, so it is replaced.
        self._fatal = threading.Event()
        self._swap_lock = threading.Lock()
        # Delivery reports not yet handed to the sink; appended by whichever thread polls and
        # taken from the left by _drain, so a report appended during a drain waits for the next.
        self._reports: collections.deque[tuple[Any, Result]] = collections.deque()
        self._drain_lock = threading.Lock()
        self._closed = threading.Event()
        # Set (under the swap lock) when close() starts: a push accepted after close's flush
        # would never be polled, so from then on every push is refused at once.
        self._closing = False
        self._thread = threading.Thread(target=self._poll_loop, name=f"kq-push-{self.name}", daemon=True)
        self._thread.start()

    def produce(
        self,
        token: Any,
        value: bytes,
        key: bytes | str | None = None,
        headers: Headers | None = None,
        topic: str | None = None,
    ) -> QueueError | None:
        """Queue one message; a local refusal comes back at once, broker results via the sink."""
        topic = topic or self.topic
        encoded_headers = None
        # The usual push (bytes value, bytes/str/no key, no headers) needs no checks of its own.
        if headers or type(value) is not bytes or not (key is None or type(key) in _PLAIN_KEYS):
            try:
                check_key_and_value(value, key)
                encoded_headers = normalize_headers(headers)
            except InvalidRequest as exc:
                return exc

        try:
            with self._swap_lock:
                if self._closing:
                    return Unavailable(f"pusher for {self.topic} is closed")
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=encoded_headers,
                    on_delivery=_Report(self, token),
                )
        except BufferError:
            return Unavailable(
                f"push to {topic}: the local send queue is full; wait for earlier pushes or raise "
                "queue.buffering.max.messages"
            )
        except KafkaException as exc:
            return error_from_kafka(exc, f"push to {topic}")
        except (TypeError, ValueError) as exc:
            return InvalidRequest(f"push to {topic}: {exc}")
        return None

    def report(self, token: Any, err: KafkaError | None, msg: Any) -> None:
        """A delivery report, on whichever thread polls (the poll thread, a flush, a pusher)."""
        result: Result
        if err is None:
            # tuple.__new__ directly: a named tuple's own __new__ is a Python function (a frame per ack)
            result = _new_tuple(Delivered, (msg.topic(), msg.partition(), msg.offset()))
        else:
            result = error_from_kafka(err, f"push to {msg.topic()}")
            if err.fatal() or err.code() in PRODUCER_STATE_LOST:
                self._fatal.set()
            if self.last_client_error and err.code() == KafkaError._MSG_TIMED_OUT:
                # "timed out" alone hides why: add what the client last saw (auth refused, ...).
                result.args = (f"{result}; last broker error: {self.last_client_error}",)
        self._reports.append((token, result))  # deque.append: atomic, no lock needed

    def serve(self) -> None:
        """Serve the delivery reports that are ready, in the calling thread, without waiting.

        A thread that pushes in a loop calls this after each push (as a plain confluent-kafka
        loop calls ``poll(0)``): its reports are then served where the GIL already is, where
        the poll thread would take the GIL from it for every report.
        """
        self._producer.poll(0)
        if self._reports:
            self._drain()

    def _on_client_error(self, err: KafkaError) -> None:
        self.last_client_error = err.str()
        if err.fatal():
            self._fatal.set()
            log.error("kafka producer for %s hit a fatal error: %s", self.name, err.str())
        else:
            log.warning("kafka producer for %s: %s", self.name, err.str())

    def _replace_after_fatal(self) -> None:
        """Poll thread: swap in a fresh Producer; the old one fails what it still holds."""
        self._fatal.clear()
        log.warning("kafka producer for %s lost its producer state; starting a new one", self.name)
        try:
            fresh = Producer(self._config)
        except KafkaException:
            log.exception("kafka producer for %s could not be recreated", self.name)
            return
        with self._swap_lock:
            old, self._producer = self._producer, fresh
        old.purge()
        old.flush(1)  # serves the delivery reports (errors) of everything it still held
        self._drain()

    def _drain(self) -> None:
        # Under the lock, so that a drain running beside this one has handed its batch on
        # before this returns: a flush that returns has seen its results passed on.
        with self._drain_lock:
            reports = self._reports
            batch: Batch = []
            with contextlib.suppress(IndexError):
                while True:
                    batch.append(reports.popleft())
            if batch:
                self._sink(batch)

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            if self._fatal.is_set():
                self._replace_after_fatal()
            try:
                self._producer.poll(0.05)
            except Exception:  # a raising callback must not kill the thread that serves every push
                log.exception("kafka producer poll failed")
            self._drain()

    def outstanding(self) -> int:
        return len(self._producer)

    def flush(self, timeout: float) -> int:
        """Block until every queued message has a result or ``timeout``; return how many have none."""
        try:
            left = int(self._producer.flush(timeout))
        finally:
            self._drain()
        return left

    def close(self, timeout: float) -> int:
        """Flush, then fail whatever is left (so no caller waits forever) and stop the thread."""
        with self._swap_lock:
            self._closing = True
        left = self.flush(timeout)
        if left:
            self._producer.purge()
            self._producer.poll(0)
            self._drain()
        self._closed.set()
        self._thread.join()
        with contextlib.suppress(Exception):
            self._producer.flush(0)
            self._drain()
        return left

    def list_topics(self, timeout: float) -> Any:
        return self._producer.list_topics(self.topic, timeout=timeout)
