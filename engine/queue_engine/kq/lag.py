"""Consumer lag: how far a group's committed offsets trail the end of each partition."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from queue_engine.errors import NotFound, Unavailable
from queue_engine.kq.config import check_brokers, check_name, client_config, error_from_kafka
from queue_engine.kq.security import KafkaSecurity

Watermarks = Callable[[int], tuple[int, int] | None]


def partition_lag(
    consumer: Consumer, topic: str, timeout: float, fetched: Watermarks | None = None
) -> dict[int, int]:
    """partition -> high watermark - committed (or - low watermark when nothing is committed).

    ``fetched(partition)`` may give the watermarks a fetching consumer saw (see _watermarks).
    """
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            raise NotFound(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(described.partitions)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=timeout)}
        lags: dict[int, int] = {}
        for tp in tps:
            known = fetched(tp.partition) if fetched is not None else None
            low, high = known if known is not None else _watermarks(consumer, tp, timeout)
            position = committed.get(tp.partition, -1)
            lags[tp.partition] = max(0, high - (position if position >= 0 else low))
        return lags
    except KafkaException as exc:
        raise error_from_kafka(exc, f"lag of {topic}") from exc


def _watermarks(consumer: Consumer, tp: TopicPartition, timeout: float) -> tuple[int, int]:
    """The watermarks the last fetch saw when this consumer fetches the partition, else ask.

    Besides saving a round trip, fetch responses carry the true high watermark where some
    brokers' ListOffsets answer is off (tansu 0.6 answers the last batch's base offset + 1).
    """
    cached = consumer.get_watermark_offsets(tp, cached=True)
    if cached is not None and cached[1] >= 0:
        return int(cached[0]), int(cached[1])
    low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
    return int(low), int(high)


class LagProbe:
    """A client of its own for the lag's round trips (metadata, committed offsets, watermarks).

    The consumer's client belongs to its poll thread, which must keep polling: blocking round
    trips there would hold back fetches, commits and rebalance callbacks. This client never
    subscribes, so it does not join the group; it is made on first use and kept.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = dict(config)
        self._client: Consumer | None = None
        self._lock = threading.Lock()

    def lag(self, topic: str, timeout: float, fetched: Watermarks | None = None) -> dict[int, int]:
        with self._lock:
            if self._client is None:
                try:
                    self._client = Consumer(self._config)
                except KafkaException as exc:
                    raise error_from_kafka(exc, f"lag of {topic}") from exc
            return partition_lag(self._client, topic, timeout, fetched)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _group_lag(config: dict[str, Any], topic: str, timeout: float) -> dict[int, int]:
    consumer = Consumer(config)
    try:
        return partition_lag(consumer, topic, timeout)
    finally:
        consumer.close()


async def group_lag(
    brokers: Sequence[str],
    topic: str,
    group: str,
    *,
    security: KafkaSecurity | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - part of the public API
) -> dict[int, int]:
    """Lag of consumer group ``group`` on ``topic``, without joining the group (for queuectl stats)."""
    config = client_config(
        check_brokers(brokers),
        security,
        {},
        None,
        {"group.id": check_name("group", group), "enable.auto.commit": False},
    )
    try:
        return await asyncio.to_thread(_group_lag, config, check_name("topic", topic), timeout)
    except KafkaException as exc:
        raise Unavailable(f"lag of {topic}: {exc}") from exc
