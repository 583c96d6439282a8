"""Writing a dead letter until it is safely stored, without ever busy-retrying a hopeless write.

Three kinds of failure, three answers:
- too large (the dead-letter headers pushed a record near the limit over it): at once, the
  next smaller copy (without body, then without key, own headers and most of the error);
- the topic is refused (does not exist, invalid, not authorized): no retry of the same write
  can help until someone fixes the topic, so it is retried with a delay growing to
  ``PERMANENT_BACKOFF.max`` and reported in :attr:`problem` (the consumer's health);
- anything else (broker down, no ack in time): retried with the delivery policy's backoff.
Nothing is committed meanwhile; the wait ends early when the partition is revoked or the
consumer stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from queue_engine import metrics
from queue_engine.durations import format_duration
from queue_engine.errors import NotFound, QueueError, TooLarge
from queue_engine.kq.config import TopicRefused
from queue_engine.kq.dead_letter_headers import dead_letter_copies
from queue_engine.kq.message import KafkaMessage, message_id
from queue_engine.kq.pusher import KafkaPusher
from queue_engine.policy import Backoff, DeliveryPolicy

log = logging.getLogger("queue_engine.kq.consumer")
PERMANENT_BACKOFF = Backoff(initial=1.0, max=300.0, multiplier=2.0)


class DeadLetterPusher(KafkaPusher):
    """The consumer's dead-letter producer: its writes are counted as dead-lettered (when acked),
    not in queue_messages_published, which counts what apps push."""

    _counts_published = False


class DeadLetterWriter:
    def __init__(self, pusher: KafkaPusher, topic: str, name: str, policy: DeliveryPolicy) -> None:
        self.pusher = pusher
        self.topic = topic
        self._name = name
        self._policy = policy
        self.problem: str | None = None  # why dead letters cannot be written at all, for health

    async def write(
        self, message: KafkaMessage, reason: str, error: str, wake: asyncio.Event, gone: Callable[[], bool]
    ) -> bool:
        """True once the broker acknowledged a copy; False if ``gone()`` became true first."""
        copies = dead_letter_copies(message, reason, error)
        step = failures = refusals = 0
        where = message_id(message)
        while not gone():
            copy = copies[step]
            try:
                await self.pusher.push(copy.value, copy.key, copy.headers)
            except TooLarge as exc:
                if step + 1 < len(copies):
                    step += 1
                    log.warning(
                        "consumer %s: dead letter of %s too large (%s); writing it without %s",
                        self._name,
                        where,
                        exc,
                        copies[step].dropped,
                    )
                    continue
                refusals += 1
                delay = self._refused(
                    f"dead letters do not fit even without body and headers: {exc}", where, refusals
                )
            except (NotFound, TopicRefused) as exc:
                refusals += 1
                delay = self._refused(
                    f"dead-letter topic {self.topic} refuses writes: {exc}", where, refusals
                )
            except QueueError as exc:
                failures += 1
                delay = self._policy.backoff.jittered(failures)
                log.error(
                    "consumer %s: dead-letter write of %s failed (%s); not committing, retry in %s",
                    self._name,
                    where,
                    exc,
                    format_duration(delay),
                )
            else:
                self.problem = None
                metrics.DEAD_LETTERED.labels("kafka", self._name, reason).inc()
                log.warning(
                    "consumer %s: %s dead-lettered to %s after %d attempt(s) (%s)%s: %s",
                    self._name,
                    where,
                    self.topic,
                    message.attempt,
                    reason,
                    f", without {copy.dropped}" if copy.dropped else "",
                    error,
                )
                return True
            await nap(delay, wake)
        return False

    def _refused(self, problem: str, where: str, refusals: int) -> float:
        """A write no retry can fix until someone changes the topic: report it, wait longer each time."""
        self.problem = problem
        delay = PERMANENT_BACKOFF.jittered(refusals)
        log.error(
            "consumer %s: %s; %s not committed, retry in %s",
            self._name,
            problem,
            where,
            format_duration(delay),
        )
        return delay


async def nap(seconds: float, wake: asyncio.Event) -> None:
    """Sleep ``seconds``, or less if ``wake`` is set (stop, revoke)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), seconds)
