"""Bulk delivery through the real sidecar: one app call per batch, one answer per message.

Messages are published before the sidecar starts, so the consumer fetches them together and
the engine hands them out at once: batches form without any timing in the test. A generous
``maxWait`` keeps them together on a busy machine.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from harness.servers import BeanstalkdCluster, RedisServer, Tansu
from queue_sidecar.config import ConfigError, parse_config

from .clients import committed_offsets, create_topics, dq_delay, kafka_read_all, tube_counts
from .conftest import App, Sidecar, app_config, delay_queue, kafka_queue, wait_until

BULK = {"maxMessages": 10, "maxWait": "300ms"}


def push_all(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> dict[bytes, int]:
    """Publish ``(key, body)`` pairs in order with one producer; the offset of each body."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    offsets: dict[bytes, int] = {}

    def report(err: Any, msg: Any) -> None:
        assert err is None, err
        offsets[msg.value()] = msg.offset()

    for key, value in messages:
        producer.produce(topic, value, key=key, on_delivery=report)
    producer.flush(10)
    assert len(offsets) == len(messages), "broker did not acknowledge every message"
    return offsets


def keyed_messages(prefix: str, keys: int, per_key: int) -> list[tuple[bytes | None, bytes]]:
    """``per_key`` messages for each of ``keys`` keys, the keys interleaved."""
    return [(f"key-{k}".encode(), f"{prefix}-{k}-{i}".encode()) for i in range(per_key) for k in range(keys)]


def assert_key_order(deliveries: list[dict[str, Any]]) -> None:
    """Per key: offsets never go back (a retry repeats one), and each delivery is in a later batch."""
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for delivery in sorted(deliveries, key=lambda d: (d["batch"], d["t"])):
        if delivery.get("key") is not None:
            by_key[delivery["key"]].append(delivery)
    assert by_key, "no keyed deliveries"
    for key, seen in by_key.items():
        offsets = [d["offset"] for d in seen]
        assert offsets == sorted(offsets), f"key {key}: delivered out of order: {offsets}"
        batches = [d["batch"] for d in seen]
        assert len(set(batches)) == len(batches), f"key {key}: two messages in one batch: {batches}"


def test_http_bulk_per_message_results_and_key_order(
    make_sidecar: Callable[..., Sidecar], http_app: App, kafka_broker: Tansu, unique: str
) -> None:
    create_topics(kafka_broker.bootstrap, unique, f"{unique}.dlq")
    messages = keyed_messages("m", keys=4, per_key=6)
    # The retried message sits in the middle of key-1: the key's later messages must wait for it.
    messages.insert(5, (b"key-1", b"b-flaky"))
    messages.insert(9, (b"key-2", b"b-drop"))
    messages.append((None, "b-text-\u00e9".encode()))
    offsets = push_all(kafka_broker.bootstrap, unique, messages)
    http_app.script(
        {
            "b-flaky": [{"ack": "RETRY", "error": "later", "retryAfter": 0.2}, {"ack": "SUCCESS"}],
            "b-drop": [{"ack": "DROP", "error": "not mine"}],
        }
    )
    sidecar = make_sidecar(
        {"app": app_config(http_app), "queues": [kafka_queue(unique, kafka_broker.bootstrap, bulk=BULK)]}
    )
    wait_until(
        lambda: committed_offsets(kafka_broker.bootstrap, unique, f"{unique}-app") == {0: len(messages)},
        60,
        "every offset committed",
        sidecar.log_tail,
    )

    deliveries = http_app.received()
    assert all("batch" in d for d in deliveries), "a message came alone, not in a batch"
    assert max(d["batch_size"] for d in deliveries) > 1, "no batch held more than one message"
    assert max(d["batch_size"] for d in deliveries) <= BULK["maxMessages"]
    sample = next(d for d in deliveries if d["body"] == "m-0-0")
    assert sample["headers"]["Content-Type"] == "application/json"
    assert sample["headers"]["X-Queue-Name"] == unique
    assert (sample["kind"], sample["queue"], sample["key"], sample["partition"]) == (
        "kafka",
        unique,
        "key-0",
        0,
    )
    assert sample["id"] == f"{unique}/0/{offsets[b'm-0-0']}" and sample["offset"] == offsets[b"m-0-0"]
    assert "key" not in http_app.received("b-text-\u00e9")[0]

    # Each message's own answer: only the RETRY was sent again, only the DROP dead-lettered.
    for _, body in messages:
        text = body.decode()
        attempts = [d["attempt"] for d in http_app.received(text)]
        assert attempts == ([1, 2] if text == "b-flaky" else [1]), (text, attempts)
    [dead] = kafka_read_all(kafka_broker.bootstrap, f"{unique}.dlq", f"{unique}-reader", 1)
    assert dead.value() == b"b-drop"
    headers = dict(dead.headers())
    assert headers["x-dead-letter-reason"] == b"drop" and b"not mine" in headers["x-last-error"]
    assert_key_order(deliveries)
    assert sidecar.metric("queue_messages_delivered_total", kind="kafka", queue=unique, result="retry") == 1
    # The app's answers, one per message however they were counted (a batch's successes at once).
    answers = {
        answer: sidecar.metric("queue_sidecar_app_answers_total", kind="kafka", queue=unique, answer=answer)
        for answer in ("success", "retry", "drop")
    }
    assert answers == {"success": len(messages) - 1, "retry": 1, "drop": 1}, answers


def test_http_bulk_whole_batch_500_retries_every_message_and_loses_none(
    make_sidecar: Callable[..., Sidecar], http_app: App, kafka_broker: Tansu, unique: str
) -> None:
    create_topics(kafka_broker.bootstrap, unique, f"{unique}.dlq")
    messages = keyed_messages("w", keys=3, per_key=4) + [(None, f"w-free-{i}".encode()) for i in range(4)]
    push_all(kafka_broker.bootstrap, unique, messages)
    (http_app.script_path.parent / "script.tmp").write_text(
        '{"default": {}, "bodies": {}, "batches": [{"status": 500, "text": "db down"}, {}]}'
    )
    (http_app.script_path.parent / "script.tmp").replace(http_app.script_path)
    sidecar = make_sidecar(
        {"app": app_config(http_app), "queues": [kafka_queue(unique, kafka_broker.bootstrap, bulk=BULK)]}
    )
    wait_until(
        lambda: committed_offsets(kafka_broker.bootstrap, unique, f"{unique}-app") == {0: len(messages)},
        60,
        "every offset committed",
        sidecar.log_tail,
    )
    deliveries = http_app.received()
    failed = [d for d in deliveries if d["batch"] == 1]
    assert failed, "the first batch was not recorded"
    for delivery in failed:
        again = [d["attempt"] for d in http_app.received(delivery["body"])]
        assert again == [1, 2], (delivery["body"], again)
    # Every message got through, and none was given up on.
    done = {d["body"] for d in deliveries if d["batch"] > 1}
    assert done == {body.decode() for _, body in messages}
    assert_key_order(deliveries)
    assert sidecar.metric(
        "queue_messages_dead_lettered_total", kind="kafka", queue=unique, reason="drop"
    ) in (
        None,
        0,
    )


def test_http_bulk_delay_jobs_bury_only_the_dropped_one(
    make_sidecar: Callable[..., Sidecar],
    http_app: App,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    unique: str,
) -> None:
    http_app.script(
        {"d-drop": [{"ack": "DROP", "error": "expired"}], "d-flaky": [{"ack": "RETRY"}, {"ack": "SUCCESS"}]}
    )
    bodies = ["d-1", "d-2", "d-flaky", "d-drop", "d-3"]
    for body in bodies:
        dq_delay(beanstalk_cluster.addresses, unique, shared_redis.url, body.encode(), 0)
    sidecar = make_sidecar(
        {
            "app": app_config(http_app),
            "queues": [delay_queue(unique, beanstalk_cluster.addresses, shared_redis.url, bulk=BULK)],
        }
    )

    def counts() -> dict[str, int]:
        return tube_counts(beanstalk_cluster.addresses, unique)

    http_app.wait_for("d-flaky", 2)
    left = {"ready": 0, "delayed": 0, "reserved": 0, "buried": 1}
    wait_until(lambda: counts() == left, 20, "one buried job and no other", counts)
    for body in bodies:
        got = http_app.received(body)
        assert [d["attempt"] for d in got] == ([1, 2] if body == "d-flaky" else [1]), body
        assert got[0]["kind"] == "delay" and got[0]["dueAt"].endswith("Z") and "batch" in got[0]
    assert (
        sidecar.metric("queue_messages_dead_lettered_total", kind="delay", queue=unique, reason="drop") == 1
    )


def test_grpc_bulk_per_message_acks_failed_call_and_key_order(
    make_sidecar: Callable[..., Sidecar], grpc_app: App, kafka_broker: Tansu, unique: str
) -> None:
    create_topics(kafka_broker.bootstrap, unique, f"{unique}.dlq")
    messages = keyed_messages("g", keys=4, per_key=5)
    messages.insert(6, (b"key-3", b"g-drop"))
    messages.insert(7, (b"key-0", b"g-retry"))
    push_all(kafka_broker.bootstrap, unique, messages)
    (grpc_app.script_path.parent / "script.tmp").write_text(
        '{"default": {}, "batches": [{"code": "INTERNAL", "error": "boom"}, {}],'
        ' "bodies": {"g-drop": [{"ack": "DROP", "error": "bad order"}],'
        ' "g-retry": [{"ack": "RETRY", "error": "later"}, {"ack": "SUCCESS"}]}}'
    )
    (grpc_app.script_path.parent / "script.tmp").replace(grpc_app.script_path)
    sidecar = make_sidecar(
        {"app": app_config(grpc_app), "queues": [kafka_queue(unique, kafka_broker.bootstrap, bulk=BULK)]}
    )
    wait_until(
        lambda: committed_offsets(kafka_broker.bootstrap, unique, f"{unique}-app") == {0: len(messages)},
        60,
        "every offset committed",
        sidecar.log_tail,
    )
    deliveries = grpc_app.received()
    assert max(d["batch_size"] for d in deliveries) > 1, "no batch held more than one message"
    first_batch = {d["body"] for d in deliveries if d["batch"] == 1}
    for _, body in messages:
        text = body.decode()
        attempts = [d["attempt"] for d in grpc_app.received(text)]
        # The failed call retries its messages; after that only the message that asked for it.
        expected = [1]
        if text in first_batch:
            expected.append(2)
        if text == "g-retry":
            expected.append(expected[-1] + 1)
        if text == "g-drop" and text in first_batch:
            expected = [1, 2]
        assert attempts == expected, (text, attempts)
    [dead] = kafka_read_all(kafka_broker.bootstrap, f"{unique}.dlq", f"{unique}-reader", 1)
    assert dead.value() == b"g-drop"
    assert b"bad order" in dict(dead.headers())["x-last-error"]
    assert_key_order(deliveries)


def test_bulk_settings_are_checked_like_every_other_key() -> None:
    def config(bulk: Any) -> dict[str, Any]:
        queue = kafka_queue("orders", "127.0.0.1:9092", bulk=bulk)
        return {"app": {"port": 8080}, "queues": [queue]}

    bulk = parse_config(config({})).queues[0].delivery.bulk
    assert bulk is not None and (bulk.max_messages, bulk.max_wait) == (100, 0.01)
    assert (
        parse_config({**config({}), "queues": [kafka_queue("o", "k:9092")]}).queues[0].delivery.bulk is None
    )
    with pytest.raises(
        ConfigError,
        match=r"queues\[0\]\.delivery\.bulk\.maxMesages: unknown key \(did you mean maxMessages\?\)",
    ):
        parse_config(config({"maxMesages": 5}))
    with pytest.raises(ConfigError, match=r"bulk\.maxMessages"):
        parse_config(config({"maxMessages": 1001}))
    with pytest.raises(ConfigError, match=r"bulk\.maxWait"):
        parse_config(config({"maxWait": "1m"}))
