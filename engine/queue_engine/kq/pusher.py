"""go-queue's kq Pusher: push a message and learn where the broker stored it.

``push`` waits for the broker's acknowledgement (acks=all, idempotent producer) and returns a
:class:`Delivered`; ``push_nowait`` returns a future at once for high throughput. Every delivery
error reaches the caller as an engine error (``Unavailable``, ``TooLarge``, ``NotFound``): a
push is never dropped silently.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from queue_engine import metrics
from queue_engine.errors import Unavailable
from queue_engine.kq.message import Delivered
from queue_engine.kq.producer_core import Batch, Headers, ProducerCore
from queue_engine.kq.security import KafkaSecurity


class _Published:
    """queue_messages_published for one queue, its two children looked up once (labels() costs
    more than the increment itself)."""

    __slots__ = ("error", "success")

    def __init__(self, queue: str) -> None:
        self.success = metrics.PUBLISHED.labels("kafka", queue, "success")
        self.error = metrics.PUBLISHED.labels("kafka", queue, "error")

    def count(self, ok: int, failed: int) -> None:
        """One update per result kind for a whole batch of results."""
        if ok:
            self.success.inc(ok)
        if failed:
            self.error.inc(failed)


class KafkaPusher:
    """Asyncio pusher. Create it inside a running event loop (or before; it binds on first push)."""

    # queue_messages_published counts what apps push; the consumer's dead-letter producer (a
    # subclass in dead_letter_writer.py) sets this False: its writes count as dead-lettered only.
    _counts_published = True

    def __init__(
        self,
        brokers: Sequence[str],
        topic: str,
        *,
        security: KafkaSecurity | None = None,
        extra: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._core = ProducerCore(brokers, topic, self._on_batch, security=security, extra=extra, name=name)
        self.topic = self._core.topic
        self.name = self._core.name
        self._published = _Published(self.name) if self._counts_published else None

    async def push(
        self, value: bytes, key: bytes | str | None = None, headers: Headers | None = None
    ) -> Delivered:
        """Push one message and wait for the broker's ack; raises the delivery error if any."""
        return await self.push_nowait(value, key, headers)

    def push_nowait(
        self, value: bytes, key: bytes | str | None = None, headers: Headers | None = None
    ) -> asyncio.Future[Delivered]:
        """Queue one message; the future resolves on the broker's ack or fails with its error."""
        loop = self._loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[Delivered] = loop.create_future()
        refused = self._core.produce(future, value, key, headers)
        if refused is not None:
            if self._published is not None:
                self._published.count(0, 1)
            future.set_exception(refused)
        return future

    def _on_batch(self, batch: Batch) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._resolve, batch)

    def _resolve(self, batch: Batch) -> None:
        """Event loop: settle the futures of one batch of delivery reports, counting them on the way."""
        ok = 0
        for future, result in batch:
            if type(result) is Delivered:
                ok += 1
                if not future.done():  # (done: the caller cancelled its wait; it still counts)
                    future.set_result(result)
            elif not future.done():
                future.set_exception(result)
        if self._published is not None:
            self._published.count(ok, len(batch) - ok)

    async def flush(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - part of the public API
        """Wait until every pushed message has a result; raises Unavailable if some have none."""
        left = await asyncio.to_thread(self._core.flush, timeout)
        await asyncio.sleep(0)  # let the last batch of results reach their futures
        if left:
            raise Unavailable(
                f"push to {self.topic}: {left} message(s) still unacknowledged after {timeout}s"
            )

    async def close(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - part of the public API
        """Flush and stop; messages still unacknowledged after ``timeout`` fail their futures."""
        left = await asyncio.to_thread(self._core.close, timeout)
        await asyncio.sleep(0)
        if left:
            raise Unavailable(f"push to {self.topic}: {left} message(s) were not acknowledged before close")

    async def check(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - part of the public API
        """Raise Unavailable unless a broker answers within ``timeout`` seconds."""
        try:
            await asyncio.to_thread(self._core.list_topics, timeout)
        except Exception as exc:
            raise Unavailable(f"brokers for {self.topic} not reachable within {timeout}s: {exc}") from exc

    async def __aenter__(self) -> KafkaPusher:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class SyncKafkaPusher:
    """The same pusher for scripts and threads: ``push`` blocks until the broker acknowledged."""

    def __init__(
        self,
        brokers: Sequence[str],
        topic: str,
        *,
        security: KafkaSecurity | None = None,
        extra: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        self._core = ProducerCore(brokers, topic, self._on_batch, security=security, extra=extra, name=name)
        self.topic = self._core.topic
        self.name = self._core.name
        self._published = _Published(self.name)

    def push(
        self,
        value: bytes,
        key: bytes | str | None = None,
        headers: Headers | None = None,
        timeout: float | None = None,
    ) -> Delivered:
        future = self.push_async(value, key, headers)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise Unavailable(f"push to {self.topic}: no acknowledgement within {timeout}s") from None

    def push_async(
        self, value: bytes, key: bytes | str | None = None, headers: Headers | None = None
    ) -> concurrent.futures.Future[Delivered]:
        future: concurrent.futures.Future[Delivered] = concurrent.futures.Future()
        refused = self._core.produce(future, value, key, headers)
        if refused is not None:
            self._published.count(0, 1)
            future.set_exception(refused)
        self._core.serve()
        return future

    def _on_batch(self, batch: Batch) -> None:
        """Poll thread: settle the futures of one batch of delivery reports, counting them on the way."""
        ok = 0
        for future, result in batch:
            delivered = type(result) is Delivered
            ok += delivered
            try:  # (a pending future takes a result as well as a running one)
                if delivered:
                    future.set_result(result)
                else:
                    future.set_exception(result)
            except concurrent.futures.InvalidStateError:
                # The caller cancelled it (it still counts): this wakes concurrent.futures.wait()
                # and as_completed() on it, as an executor does for a cancelled job.
                future.set_running_or_notify_cancel()
        self._published.count(ok, len(batch) - ok)

    def flush(self, timeout: float = 30.0) -> None:
        left = self._core.flush(timeout)
        if left:
            raise Unavailable(
                f"push to {self.topic}: {left} message(s) still unacknowledged after {timeout}s"
            )

    def close(self, timeout: float = 30.0) -> None:
        left = self._core.close(timeout)
        if left:
            raise Unavailable(f"push to {self.topic}: {left} message(s) were not acknowledged before close")

    def __enter__(self) -> SyncKafkaPusher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
