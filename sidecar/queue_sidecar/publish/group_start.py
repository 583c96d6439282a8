"""A KafkaQueue with ``offset: last`` skips nothing published through the sidecar before it joins.

A new group "at the latest offset" takes the end of each partition when its first consumer
joins: whatever was published before then would never be delivered, and outside Kubernetes
(where the operator does not set the group up) the sidecar publishes before its own consumer
has joined whenever the app publishes early. So before the first push of the process, the
group's committed offsets are read; partitions without one get the current end committed. A
group that has offsets everywhere, or members already (they chose their positions), is left
as it is. When the topic does not exist yet, the first push creates it and the partition it
landed on gets that message's own offset.

The rule itself is :func:`queue_engine.kq.group_start.start_group_at_end`, which the operator
also runs when a KafkaQueue resource becomes Ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from queue_engine.errors import Unavailable
from queue_engine.kq import Delivered, KafkaSecurity
from queue_engine.kq.config import check_brokers, client_config
from queue_engine.kq.group_start import GroupStartFailed, describe, start_group_at_end

log = logging.getLogger(__name__)

TIMEOUT = 5.0


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
        except KafkaException as exc:
            raise self._unavailable(describe(exc)) from None
        if described is None or described.error is not None or not described.partitions:
            return False
        try:
            start_group_at_end(
                admin, self.group, self.topic, sorted(described.partitions), timeout=TIMEOUT, floors=floors
            )
        except GroupStartFailed as exc:
            if exc.transient:
                raise self._unavailable(str(exc)) from None
            # The group may not be read with these credentials: publishing must not stop for it.
            log.info("left the start of group %s as it is", self.group, extra={"error": str(exc)})
        return True

    def _unavailable(self, why: str) -> Unavailable:
        return Unavailable(
            f"push to {self.topic}: the start offsets of group {self.group} could not be set "
            f"({why}), so a message published now could be skipped; nothing was published, try again"
        )
