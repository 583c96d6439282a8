"""A KafkaQueue with ``offset: last`` skips nothing published through the sidecar before it joins.

A new group "at the latest offset" takes the end of each partition when its first consumer
joins: whatever was published before then would never be delivered, and outside Kubernetes
(where the operator does not set the group up) the sidecar publishes before its own consumer
has joined whenever the app publishes early. So before the first push of the process, the
group's committed offsets are read; partitions without one get the current end committed. A
group that has offsets everywhere, or members already (they chose their positions), is left
as it is. When the topic does not exist yet, the first push creates it and the partition it
landed on gets that message's own offset.

The same rule as the operator's (``queue_operator.topics.TopicAdmin.start_group_at_end``),
which runs when a KafkaQueue resource becomes Ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from queue_engine.errors import Unavailable
from queue_engine.kq import Delivered, KafkaSecurity
from queue_engine.kq.config import check_brokers, client_config

log = logging.getLogger(__name__)

TIMEOUT = 5.0
_TRANSIENT = {
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.LEADER_NOT_AVAILABLE,
}


class GroupStart:
    """Runs the start-at-end once, around the first push; later pushes pass straight through."""

    def __init__(self, brokers: list[str], topic: str, group: str, security: KafkaSecurity | None) -> None:
        self.topic = topic
        self.group = group
        self._config = client_config(check_brokers(brokers), security, {}, None, {})
        self._lock = asyncio.Lock()
        self.done = False

    async def around(self, push: Callable[[], Awaitable[Delivered]]) -> Delivered:
        if self.done:
            return await push()
        async with self._lock:  # the first pushes wait for the group to be set up
            if self.done:
                return await push()
            if await asyncio.to_thread(self._start, {}):
                self.done = True
                return await push()
            delivered = await push()  # the topic did not exist: this push creates it
            try:
                self.done = await asyncio.to_thread(self._start, {delivered.partition: delivered.offset})
            except Unavailable as exc:  # published all the same: the next push tries again
                log.warning("group start not set", extra={"queue": self.topic, "error": str(exc)})
            return delivered

    def _start(self, floors: Mapping[int, int]) -> bool:
        """Commit the end (or the floor) where the group has no offset; False if the topic is missing."""
        admin = AdminClient(self._config)
        try:
            described = admin.list_topics(self.topic, timeout=TIMEOUT).topics.get(self.topic)
            if described is None or described.error is not None or not described.partitions:
                return False
            wanted = [TopicPartition(self.topic, p) for p in sorted(described.partitions)]
            request = [ConsumerGroupTopicPartitions(self.group, wanted)]
            committed = _result(
                admin.list_consumer_group_offsets(request, request_timeout=TIMEOUT)[self.group]
            )
            missing = [tp.partition for tp in committed.topic_partitions if tp.offset < 0]
            if not missing:
                return True
            latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
            ends = admin.list_offsets(
                {TopicPartition(self.topic, p): latest for p in missing}, request_timeout=TIMEOUT
            )
            offsets = []
            for tp, future in ends.items():
                end = _result(future).offset
                offsets.append(
                    TopicPartition(self.topic, tp.partition, min(end, floors.get(tp.partition, end)))
                )
            altered = _result(
                admin.alter_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(self.group, offsets)], request_timeout=TIMEOUT
                )[self.group]
            )
            failed = next((tp.error for tp in altered.topic_partitions if tp.error is not None), None)
            if failed is not None:
                raise KafkaException(failed)
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            why = f"{err.str()} ({err.name()})" if err is not None else str(exc)
            if err is None or err.retriable() or err.code() in _TRANSIENT:
                raise Unavailable(
                    f"push to {self.topic}: the start offsets of group {self.group} could not be set "
                    f"({why}), so a message published now could be skipped; nothing was published, try again"
                ) from None
            # Members joined meanwhile (they have their positions), or the group may not be
            # altered with these credentials: publishing must not stop for it.
            log.info("left the start of group %s as it is", self.group, extra={"error": why})
            return True
        log.info(
            "group %s starts at the current end of %s", self.group, self.topic, extra={"partitions": missing}
        )
        return True


def _result(future: Any) -> Any:
    return future.result(timeout=TIMEOUT * 2)
