"""The consumer for scripts: a blocking ``run()`` with a plain function as handler.

The function runs in :class:`HandlerThreads` (daemon threads; the timeout counts from when a
thread starts the call; a hung call gets a replacement thread and never a second one for the
same message), so the engine's own per-call timeout is lifted: time waiting for a thread is
not a failed attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import threading
from collections.abc import Callable
from typing import Any

from queue_engine.kq.consumer import DEFAULT_POLICY, KafkaConsumer
from queue_engine.kq.handler_threads import HandlerThreads
from queue_engine.kq.message import KafkaMessage
from queue_engine.policy import DeliveryPolicy, Outcome

# The engine's per-call timeout, lifted: HandlerThreads applies the policy's from the call's start.
UNBOUNDED = 10.0 * 365 * 86400


class SyncKafkaConsumer:
    """Runs a :class:`KafkaConsumer` in its own event loop; the handler runs in worker threads.

    ``run()`` blocks until ``stop()`` is called from another thread, or until SIGTERM/SIGINT
    when ``run`` is called from the main thread with ``handle_signals=True``. Takes the same
    keyword arguments as :class:`KafkaConsumer`.
    """

    def __init__(
        self,
        brokers: list[str],
        topic: str,
        group: str,
        handler: Callable[[KafkaMessage], Outcome],
        **options: Any,
    ) -> None:
        policy: DeliveryPolicy = options.pop("policy", DEFAULT_POLICY)
        self._threads = HandlerThreads(
            handler, int(options.get("concurrency", 8)), policy.timeout, str(options.get("name") or topic)
        )
        # Built here so config errors surface at construction, as with the async consumer.
        self._consumer = KafkaConsumer(
            brokers,
            topic,
            group,
            self._threads.call,
            policy=dataclasses.replace(policy, timeout=UNBOUNDED),
            **options,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._grace = 30.0
        self._stopper: asyncio.Future[None] | None = None

    @property
    def consumer(self) -> KafkaConsumer:
        return self._consumer

    def run(self, handle_signals: bool = False) -> None:
        try:
            asyncio.run(self._main(handle_signals))
        finally:
            # A call past its timeout cannot be interrupted in a thread: do not wait for it.
            self._threads.close()

    async def _main(self, handle_signals: bool) -> None:
        self._loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stop_soon)
        self._started.set()
        await self._consumer.run()

    def _stop_soon(self) -> None:
        self._stopper = asyncio.ensure_future(self._consumer.stop(self._grace))

    def stop(self, grace: float = 30.0, wait_started: float = 30.0) -> None:
        """Ask ``run()`` to finish (from any thread); returns at once."""
        self._grace = grace
        self._started.wait(wait_started)
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(self._stop_soon)

    def health(self) -> tuple[bool, str]:
        healthy, why = self._consumer.health()
        if self._threads.stuck:
            why += f"; {self._threads.stuck} handler call(s) hung past the timeout"
        return healthy, why
