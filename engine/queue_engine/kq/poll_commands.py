"""Work for the poll thread, queued from the event loop: the Consumer belongs to that thread.

Thread-safe. ``submit`` returns a future that the poll thread resolves on its next turn (about
every 0.1 s). Once the thread has exited (``close``), queued and later commands fail at once
with Unavailable instead of waiting for a thread that will never run them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException

from queue_engine.errors import Unavailable

log = logging.getLogger("queue_engine.kq.consumer")
T = TypeVar("T")


class PollCommands:
    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._queue: deque[tuple[Callable[[Consumer], Any], concurrent.futures.Future[Any]]] = deque()
        self._closed = False

    def submit(self, fn: Callable[[Consumer], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if not self._closed:
                self._queue.append((fn, future))
                return future
        future.set_exception(Unavailable(f"kafka consumer {self._name} is not running"))
        return future

    def run_all(self, consumer: Consumer) -> None:
        """Poll thread: run what is queued."""
        while True:
            with self._lock:
                if not self._queue:
                    return
                fn, future = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(consumer))
            except KafkaException as exc:
                log.warning("consumer %s: %s", self._name, exc)
                future.set_exception(exc)
            except BaseException as exc:
                future.set_exception(exc)

    def close(self) -> None:
        """Poll thread, as it exits: fail what is still queued; refuse what comes later."""
        with self._lock:
            self._closed = True
            left, self._queue = list(self._queue), deque()
        for _, future in left:
            if future.set_running_or_notify_cancel():
                future.set_exception(
                    Unavailable(f"kafka consumer {self._name} stopped before running a command")
                )
