"""Plain clients the tests use to put messages in and look at what is left, beside the sidecar."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import greenstalk
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from queue_engine.dq import DelayProducer


def dq_delay(nodes: Sequence[str], tube: str, redis_url: str, body: bytes, seconds: float) -> str:
    async def go() -> str:
        async with DelayProducer(nodes, tube, redis_url) as producer:
            return await producer.delay(body, seconds)

    return asyncio.run(go())


def dq_at(nodes: Sequence[str], tube: str, redis_url: str, body: bytes, when: datetime) -> str:
    async def go() -> str:
        async with DelayProducer(nodes, tube, redis_url) as producer:
            return await producer.at(body, when)

    return asyncio.run(go())


def tube_counts(nodes: Sequence[str], tube: str) -> dict[str, int]:
    """ready / delayed / reserved / buried jobs of ``tube``, summed over the nodes."""
    totals = {"ready": 0, "delayed": 0, "reserved": 0, "buried": 0}
    for node in nodes:
        host, _, port = node.rpartition(":")
        with greenstalk.Client((host, int(port)), use=tube) as client:
            try:
                stats: dict[str, Any] = dict(client.stats_tube(tube))
            except greenstalk.NotFoundError:
                continue  # a tube with no jobs and no watchers does not exist
            for state in totals:
                totals[state] += int(stats[f"current-jobs-{state}"])
    return totals


def create_topics(bootstrap: str, *topics: str, partitions: int = 1, exist_ok: bool = False) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics]
    )
    for future in futures.values():
        try:
            future.result(10)
        except KafkaException as exc:
            if not (exist_ok and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise


def kafka_push(
    bootstrap: str,
    topic: str,
    value: bytes,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> tuple[int, int]:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    where: list[tuple[int, int]] = []

    def report(err: Any, msg: Any) -> None:
        assert err is None, err
        where.append((msg.partition(), msg.offset()))

    kafka_headers: Any = headers or []
    producer.produce(topic, value, key=key, headers=kafka_headers, on_delivery=report)
    producer.flush(10)
    assert where, "broker did not acknowledge"
    return where[0]


def committed_offsets(bootstrap: str, topic: str, group: str, partitions: int = 1) -> dict[int, int]:
    """The group's committed offset per partition (-1001 when none), without joining the group."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in found}


def kafka_read_all(bootstrap: str, topic: str, group: str, expect: int, timeout: float = 20.0) -> list[Any]:
    """Read ``expect`` records of ``topic`` from the start (fails the test if fewer come)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < expect and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                records.append(msg)
    finally:
        consumer.close()
    assert len(records) >= expect, f"{len(records)} of {expect} records on {topic}"
    return records


def http(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body if method != "GET" else None, method=method)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        text = exc.read()
        return exc.code, json.loads(text) if text else None
