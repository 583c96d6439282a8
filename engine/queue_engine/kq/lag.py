"""Consumer lag: how far a group's committed offsets trail the end of each partition.

Asked through an AdminClient (OffsetFetch for the group, ListOffsets for the ends), never
through a Consumer carrying the group's id: on tansu, a second client with the group's id
doing offset fetches made the group rebalance again and again. A running consumer passes what
it knows already (its own commits, the watermarks its fetches saw), so only the rest costs a
round trip, and nothing of it runs on its poll thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from queue_engine.errors import NotFound, Unavailable
from queue_engine.kq.config import (
    check_brokers,
    check_name,
    client_config,
    error_from_kafka,
    without_consumer_keys,
)
from queue_engine.kq.security import KafkaSecurity

Watermarks = Callable[[int], tuple[int, int] | None]


def admin_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A client config minus the consumer-only keys (an AdminClient warns about each)."""
    return without_consumer_keys(config, also=("error_cb",))


class AdminLag:
    """Lag of one group on one topic; the AdminClient is made on first use and kept. Blocking."""

    def __init__(self, config: Mapping[str, Any], topic: str, group: str) -> None:
        self._config = admin_config(config)
        self._topic = topic
        self._group = group
        self._admin: AdminClient | None = None
        self._lock = threading.Lock()

    def lag(
        self,
        timeout: float,
        partitions: Sequence[int] | None = None,
        committed: Mapping[int, int] | None = None,
        fetched: Watermarks | None = None,
    ) -> dict[int, int]:
        """partition -> high watermark - committed offset (- low watermark when none is committed).

        ``partitions``: which (default: every partition of the topic); ``committed`` and
        ``fetched(partition)``: what the caller knows already (no round trip for those).
        """
        with self._lock:
            if self._admin is None:
                self._admin = AdminClient(self._config)
            admin = self._admin
        topic = self._topic
        try:
            if partitions is None:
                described = admin.list_topics(topic, timeout=timeout).topics.get(topic)
                if described is None or described.error is not None or not described.partitions:
                    raise NotFound(f"topic {topic!r} does not exist")
                partitions = sorted(described.partitions)
            positions = dict(committed or {})
            ask = [p for p in partitions if p not in positions]
            if ask:
                request = [ConsumerGroupTopicPartitions(self._group, [TopicPartition(topic, p) for p in ask])]
                answer = admin.list_consumer_group_offsets(request, request_timeout=timeout)[self._group]
                for tp in answer.result(timeout * 2).topic_partitions:
                    positions[tp.partition] = tp.offset
            ends: dict[int, tuple[int, int]] = {}
            for p in partitions:
                known = fetched(p) if fetched is not None else None
                if known is not None:
                    ends[p] = known
            missing = [p for p in partitions if p not in ends]
            if missing:
                ends.update(_watermarks(admin, topic, missing, timeout))
        except KafkaException as exc:
            raise error_from_kafka(exc, f"lag of {topic}") from exc
        lags: dict[int, int] = {}
        for p in partitions:
            low, high = ends[p]
            position = positions.get(p, -1)
            lags[p] = max(0, high - (position if position >= 0 else low))
        return lags

    def close(self) -> None:
        with self._lock:
            self._admin = None  # AdminClient has no close(); dropping it ends its threads


def _watermarks(
    admin: AdminClient, topic: str, partitions: list[int], timeout: float
) -> dict[int, tuple[int, int]]:
    """(low, high) per partition from ListOffsets.

    (tansu 0.6 answers "latest" with the last batch's base offset + 1, low for a multi-record
    last batch; a running consumer's own fetches see the true end, so it passes those.)
    """
    result: dict[int, tuple[int, int]] = {}
    specs = {"low": OffsetSpec.earliest(), "high": OffsetSpec.latest()}  # type: ignore[no-untyped-call]
    answers = {
        name: admin.list_offsets(
            {TopicPartition(topic, p): spec for p in partitions}, request_timeout=timeout
        )
        for name, spec in specs.items()
    }
    for p in partitions:
        low = next(f for tp, f in answers["low"].items() if tp.partition == p).result(timeout * 2).offset
        high = next(f for tp, f in answers["high"].items() if tp.partition == p).result(timeout * 2).offset
        result[p] = (int(low), int(high))
    return result


async def group_lag(
    brokers: Sequence[str],
    topic: str,
    group: str,
    *,
    security: KafkaSecurity | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - part of the public API
) -> dict[int, int]:
    """Lag of consumer group ``group`` on ``topic``, without joining the group (for queuectl stats)."""
    config = client_config(check_brokers(brokers), security, {}, None, {})
    probe = AdminLag(config, check_name("topic", topic), check_name("group", group))
    try:
        return await asyncio.to_thread(probe.lag, timeout)
    except KafkaException as exc:
        raise Unavailable(f"lag of {topic}: {exc}") from exc
