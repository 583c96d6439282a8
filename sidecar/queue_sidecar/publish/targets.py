"""The queues an app may publish to through its sidecar, by name."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from queue_engine.dq import DelayProducer
from queue_engine.errors import NotFound
from queue_engine.kq import KafkaPusher
from queue_sidecar.publish.broker_watch import BrokerWatch
from queue_sidecar.publish.delay_jobs import DelayJobs
from queue_sidecar.publish.group_start import GroupStart
from queue_sidecar.publish.idempotency import MemoryKeys

log = logging.getLogger(__name__)


@dataclass
class PublishTargets:
    """Producers the runtime opened for the queues in the sidecar's config, keyed by queue name.

    ``delay_jobs`` reads job states and keeps idempotency keys in each DelayQueue's Redis;
    ``kafka_keys`` keeps each KafkaQueue's idempotency keys in memory; ``kafka_watches`` say
    while a KafkaQueue's brokers are unreachable (a queue without one waits out the timeout);
    ``kafka_starts`` set up the group of a KafkaQueue with ``offset: last`` before its first push.
    """

    delay: dict[str, DelayProducer] = field(default_factory=dict)
    kafka: dict[str, KafkaPusher] = field(default_factory=dict)
    delay_jobs: dict[str, DelayJobs] = field(default_factory=dict)
    kafka_keys: dict[str, MemoryKeys] = field(default_factory=dict)
    kafka_watches: dict[str, BrokerWatch] = field(default_factory=dict)
    kafka_starts: dict[str, GroupStart] = field(default_factory=dict)

    def delay_queue(self, name: str) -> DelayProducer:
        try:
            return self.delay[name]
        except KeyError:
            raise NotFound(_unknown("DelayQueue", name, self.delay, self.kafka, "KafkaQueue")) from None

    def delay_records(self, name: str) -> DelayJobs:
        self.delay_queue(name)  # unknown queue: NotFound
        return self.delay_jobs[name]

    def kafka_queue(self, name: str) -> KafkaPusher:
        try:
            return self.kafka[name]
        except KeyError:
            raise NotFound(_unknown("KafkaQueue", name, self.kafka, self.delay, "DelayQueue")) from None

    async def close(self) -> None:
        """Close every producer, even when one fails (a push still unacknowledged is logged)."""
        closing = [
            *(p.close() for p in self.delay.values()),
            *(p.close() for p in self.kafka.values()),
            *(j.close() for j in self.delay_jobs.values()),
        ]
        names = [*self.delay, *self.kafka, *self.delay_jobs]
        for name, result in zip(names, await asyncio.gather(*closing, return_exceptions=True), strict=True):
            if isinstance(result, Exception):
                log.warning("closing the producer of queue %s: %s", name, result)


def _unknown(
    kind: str, name: str, known: Mapping[str, object], other: Mapping[str, object], other_kind: str
) -> str:
    names = ", ".join(sorted(known)) or "none"
    message = f"no {kind} named {name!r} in this sidecar; its {kind}s: {names}"
    if name in other:
        # The commonest slip: the right name with the wrong kind of queue.
        message += f" ({name!r} is a {other_kind}, not a {kind})"
    return message
