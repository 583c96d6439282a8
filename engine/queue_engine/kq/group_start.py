"""Make a new consumer group start at the current end of a topic, before its first member joins.

A group that starts "at the latest offset" takes each partition's end when its first consumer
joins: whatever was published before then would be skipped. Committing the end now makes the
group start here instead, however late the first consumer comes. Partitions where the group
already has an offset are left alone, and so is a group that has members (they chose their
positions). The operator runs this when a KafkaQueue becomes Ready; the sidecar, outside
Kubernetes, before its first publish.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

log = logging.getLogger(__name__)

TRANSIENT = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_CONTROLLER,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.LEADER_NOT_AVAILABLE,
    }
)


def kafka_error(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def describe(exc: BaseException) -> str:
    err = kafka_error(exc)
    return f"{err.str()} ({err.name()})" if err is not None else str(exc)


def is_transient(exc: BaseException) -> bool:
    """A failure that may pass by itself (brokers unreachable, a coordinator moving)."""
    err = kafka_error(exc)
    return err is None or err.retriable() or err.code() in TRANSIENT


class GroupStartFailed(Exception):
    """The group's start could not be read or set; ``transient`` says whether to try again."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def start_group_at_end(
    admin: AdminClient,
    group: str,
    topic: str,
    partitions: Sequence[int],
    *,
    timeout: float,
    floors: Mapping[int, int] | None = None,
) -> list[int]:
    """Commit the end offset (or ``floors[p]`` when lower) of each of ``partitions`` where
    ``group`` has no offset; the partitions set.

    A refusal that is no failure of the brokers (members joined meanwhile, the credentials may not
    alter the group) leaves the group as it is and returns ``[]``. Anything else raises
    :class:`GroupStartFailed`.
    """
    floors = floors or {}
    wanted = [TopicPartition(topic, p) for p in partitions]
    try:
        request = [ConsumerGroupTopicPartitions(group, wanted)]
        committed = _result(
            admin.list_consumer_group_offsets(request, request_timeout=timeout)[group], timeout
        )
        missing = [tp.partition for tp in committed.topic_partitions if tp.offset < 0]
        if not missing:
            return []
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        ends = admin.list_offsets(
            {TopicPartition(topic, p): latest for p in missing}, request_timeout=timeout
        )
        offsets = []
        for tp, future in ends.items():
            end = _result(future, timeout).offset
            offsets.append(TopicPartition(topic, tp.partition, min(end, floors.get(tp.partition, end))))
    except KafkaException as exc:
        raise GroupStartFailed(
            f"reading the offsets of group {group} failed: {describe(exc)}", transient=is_transient(exc)
        ) from exc
    future = admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, offsets)], request_timeout=timeout
    )[group]
    try:
        result = _result(future, timeout)
        failed = next((tp.error for tp in result.topic_partitions if tp.error is not None), None)
        if failed is not None:
            raise KafkaException(failed)
    except KafkaException as exc:
        if is_transient(exc):
            raise GroupStartFailed(
                f"setting the start offsets of group {group} failed: {describe(exc)}", transient=True
            ) from exc
        log.info("left the start of group %s as it is: %s", group, describe(exc))
        return []
    log.info("group %s starts at the end of %s partitions %s", group, topic, sorted(missing))
    return sorted(missing)


def _result(future: Any, timeout: float) -> Any:
    return future.result(timeout=timeout * 2)
