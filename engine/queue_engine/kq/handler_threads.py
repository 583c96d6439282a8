"""Daemon threads for a blocking handler, where a hung call cannot starve the others.

A thread cannot be interrupted, so a call past its timeout keeps its thread. Three rules keep
that from spreading:
- the timeout starts when a thread picks the call up, so a call never times out (and is
  retried or dead-lettered) without having run;
- a call past its timeout gets a replacement thread (up to ``size`` extra), so ``size``
  threads stay free for the other messages;
- a retry of a message whose earlier call still runs waits for that call (up to the timeout)
  instead of taking another thread, so one hung message holds at most one thread.
Threads are daemon threads: a hung call never keeps the process from exiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import queue
import threading
from collections.abc import Callable

from queue_engine.durations import format_duration
from queue_engine.kq.message import KafkaMessage
from queue_engine.policy import Outcome

log = logging.getLogger("queue_engine.kq.consumer")


@dataclasses.dataclass(eq=False)
class _Job:
    message: KafkaMessage
    started: asyncio.Event
    loop: asyncio.AbstractEventLoop
    result: concurrent.futures.Future[Outcome] = dataclasses.field(default_factory=concurrent.futures.Future)


class HandlerThreads:
    def __init__(self, fn: Callable[[KafkaMessage], Outcome], size: int, timeout: float, name: str) -> None:
        self._fn = fn
        self._size = size
        self._timeout = timeout
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = self._idle = self._queued = 0
        self.stuck = 0  # calls past their timeout whose thread still runs
        self._calls: dict[tuple[int, int], concurrent.futures.Future[Outcome]] = {}  # event loop only

    async def call(self, message: KafkaMessage) -> Outcome:
        place = (message.partition, message.offset)
        earlier = self._calls.get(place)
        if earlier is not None and not earlier.done():
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(earlier)), self._timeout)
            except TimeoutError:
                return Outcome.retry(
                    f"the previous attempt's call still runs (waited {format_duration(self._timeout)} for it)"
                )
        job = _Job(message, asyncio.Event(), asyncio.get_running_loop())
        self._calls[place] = job.result
        job.result.add_done_callback(lambda f: self._forget(place, f))
        self._submit(job)
        try:
            await job.started.wait()  # time in the queue does not count against the timeout
        except asyncio.CancelledError:
            job.result.cancel()  # not started yet: the thread skips it
            raise
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job.result)), self._timeout)
        except TimeoutError:
            self._became_stuck(job)
            return Outcome.retry(
                f"handler timed out after {format_duration(self._timeout)} (its thread is still running)"
            )

    def _forget(self, place: tuple[int, int], result: concurrent.futures.Future[Outcome]) -> None:
        # Runs in whichever thread finished the call; dict operations are atomic under the GIL.
        if self._calls.get(place) is result:
            del self._calls[place]

    def _became_stuck(self, job: _Job) -> None:
        with self._lock:
            self.stuck += 1
        log.warning(
            "consumer %s: handler call for %s/%d/%d is past its timeout; its thread keeps running",
            self._name,
            job.message.topic,
            job.message.partition,
            job.message.offset,
        )
        job.result.add_done_callback(lambda _: self._unstuck())
        self._spawn()  # a replacement, so the other messages still find a free thread

    def _unstuck(self) -> None:
        with self._lock:
            self.stuck -= 1

    def _submit(self, job: _Job) -> None:
        with self._lock:
            self._queued += 1
        self._jobs.put(job)
        self._spawn()

    def _spawn(self) -> None:
        with self._lock:
            limit = self._size + min(self.stuck, self._size)
            if self._queued <= self._idle or self._threads >= limit:
                return
            self._threads += 1
            self._idle += 1
        threading.Thread(target=self._run, name=f"kq-handler-{self._name}", daemon=True).start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            with self._lock:
                self._queued -= 1
                self._idle -= 1
            try:
                if job.result.set_running_or_notify_cancel():
                    job.loop.call_soon_threadsafe(job.started.set)
                    try:
                        job.result.set_result(self._fn(job.message))
                    except BaseException as exc:  # the engine turns it into a retry
                        job.result.set_exception(exc)
            except RuntimeError:
                pass  # the event loop closed meanwhile
            finally:
                with self._lock:
                    self._idle += 1
        with self._lock:
            self._threads -= 1
            self._idle -= 1

    def close(self) -> None:
        """Let idle threads end; a stuck one ends with its call (a daemon, it never blocks exit)."""
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)
