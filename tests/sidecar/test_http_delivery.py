"""Delivery to an HTTP app through the real sidecar process: headers, answers, retries, dead letters."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from harness.servers import BeanstalkdCluster, RedisServer, Tansu
from queue_engine.durations import parse_rfc3339

from .clients import create_topics, dq_at, dq_delay, http, kafka_push, kafka_read_all, tube_counts
from .conftest import App, Sidecar, app_config, delay_queue, kafka_queue, wait_until


def test_delayed_timed_and_kafka_messages_arrive_with_the_documented_headers(  # noqa: PLR0917
    make_sidecar: Callable[..., Sidecar],
    http_app: App,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    kafka_broker: Tansu,
    unique: str,
) -> None:
    dq, kq = f"{unique}-d", f"{unique}-k"
    create_topics(kafka_broker.bootstrap, kq, f"{kq}.dlq")
    sidecar = make_sidecar(
        {
            "app": app_config(http_app),
            "queues": [
                delay_queue(dq, beanstalk_cluster.addresses, shared_redis.url),
                kafka_queue(kq, kafka_broker.bootstrap),
            ],
        }
    )
    sidecar.wait_ready()

    # Through the sidecar's own publish API, as an app would.
    status, created = http("POST", f"{sidecar.publish_url}/v1/delayqueues/{dq}/jobs?delay=500ms", b"in-500ms")
    assert status == 201, created
    published_at = time.time()
    status, doomed = http("POST", f"{sidecar.publish_url}/v1/delayqueues/{dq}/jobs?delay=500ms", b"revoked")
    assert status == 201
    assert http("DELETE", f"{sidecar.publish_url}/v1/delayqueues/{dq}/jobs/{doomed['id']}")[0] == 204
    when = datetime.now(UTC) + timedelta(seconds=1)
    timed_id = dq_at(beanstalk_cluster.addresses, dq, shared_redis.url, b"at-a-time", when)
    partition, offset = kafka_push(
        kafka_broker.bootstrap, kq, b"order-1", key=b"cust-7", headers=[("trace", b"abc")]
    )

    [delayed] = http_app.wait_for("in-500ms")
    headers = delayed["headers"]
    assert delayed["method"] == "POST" and delayed["path"] == "/messages"
    assert headers["X-Queue-Kind"] == "delay" and headers["User-Agent"] == "queue-sidecar"
    assert headers["X-Queue-Name"] == dq
    assert headers["X-Message-Id"] == created["id"]
    assert headers["X-Attempt"] == "1"
    due = parse_rfc3339(headers["X-Due-At"]).timestamp()
    assert published_at - 1 + 0.5 <= due <= published_at + 0.5
    assert delayed["t"] >= due, "delivered before its due time"

    [timed] = http_app.wait_for("at-a-time")
    assert timed["headers"]["X-Message-Id"] == timed_id
    assert abs(parse_rfc3339(timed["headers"]["X-Due-At"]) - when) < timedelta(milliseconds=1)
    assert timed["t"] >= when.timestamp()

    status, pushed = http(
        "POST",
        f"{sidecar.publish_url}/v1/kafkaqueues/{kq}/messages",
        b"order-2",
        {"X-Kafka-Key": "cust-8", "X-Header-source": "publish-api"},
    )
    assert status == 201, pushed
    [order2] = http_app.wait_for("order-2")
    sent = {name.lower(): value for name, value in order2["headers"].items()}  # names are case-blind
    assert sent["x-kafka-key"] == "cust-8"
    assert sent["x-header-source"] == "publish-api"
    assert order2["headers"]["X-Kafka-Offset"] == str(pushed["offset"])

    [order] = http_app.wait_for("order-1")
    headers = order["headers"]
    assert headers["X-Queue-Kind"] == "kafka"
    assert headers["X-Queue-Name"] == kq
    assert headers["X-Message-Id"] == f"{kq}/{partition}/{offset}"
    assert headers["X-Attempt"] == "1"
    assert headers["X-Kafka-Key"] == "cust-7"
    assert (headers["X-Kafka-Partition"], headers["X-Kafka-Offset"]) == (str(partition), str(offset))
    assert headers["X-Header-trace"] == "abc"
    assert "X-Due-At" not in headers

    assert time.time() > published_at + 0.5 and http_app.received("revoked") == []

    # Health, readiness and metrics on the health port.
    assert sidecar.get("/healthz")[0] == 200
    status, ready = sidecar.get("/readyz")
    assert status == 200 and '"ready": true' in ready
    wait_until(
        lambda: (
            sidecar.metric("queue_messages_delivered_total", kind="delay", queue=dq, result="success") == 2
        )
    )
    assert sidecar.metric("queue_messages_delivered_total", kind="kafka", queue=kq, result="success") == 2
    assert sidecar.metric("queue_messages_received_total", kind="kafka", queue=kq) == 2
    assert sidecar.metric("queue_sidecar_app_up") == 1
    _, text = sidecar.get("/metrics")
    for name in ("queue_delivery_latency_seconds_bucket", "queue_in_flight", "queue_sidecar_app_answers"):
        assert name in text
    # The dq job gauges are refreshed from the nodes; lag per partition once the consumer reports it.
    wait_until(lambda: "queue_dq_jobs{" in sidecar.get("/metrics")[1], 15, "dq job gauges")
    wait_until(lambda: sidecar.metric("queue_kafka_consumer_lag", queue=kq, partition="0") == 0, 15, "lag 0")


def test_answers_retry_drop_and_retry_after_for_delay_jobs(
    make_sidecar: Callable[..., Sidecar],
    http_app: App,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    unique: str,
) -> None:
    http_app.script(
        {
            "flaky": [{"status": 500}, {"status": 200}],
            "busy": [{"status": 503, "headers": {"Retry-After": "1"}}, {"status": 200}],
            "json-retry": [{"status": 200, "json": {"status": "RETRY"}}, {"status": 200}],
            "bad": [{"status": 400, "text": "no such order"}],
            "json-drop": [{"status": 200, "json": {"status": "DROP", "error": "not mine"}}],
            "hopeless": [{"status": 500}],
            "slowpoke": [{"sleep": 5}, {"status": 200}],
        }
    )
    sidecar = make_sidecar(
        {
            "app": app_config(http_app),
            "queues": [delay_queue(unique, beanstalk_cluster.addresses, shared_redis.url, timeout="1s")],
        }
    )
    sidecar.wait_ready()
    for body in ("flaky", "busy", "json-retry", "bad", "json-drop", "hopeless", "slowpoke"):
        dq_delay(beanstalk_cluster.addresses, unique, shared_redis.url, body.encode(), 0)

    flaky = http_app.wait_for("flaky", 2)
    assert [d["headers"]["X-Attempt"] for d in flaky] == ["1", "2"]
    assert flaky[0]["headers"]["X-Message-Id"] == flaky[1]["headers"]["X-Message-Id"]
    busy = http_app.wait_for("busy", 2)
    assert busy[1]["t"] - busy[0]["t"] >= 1.0, "Retry-After: 1 not honoured"
    assert len(http_app.wait_for("json-retry", 2)) == 2
    assert [d["headers"]["X-Attempt"] for d in http_app.wait_for("hopeless", 3)] == ["1", "2", "3"]
    # Over the 1s per-attempt timeout: the sidecar gives up on the attempt and retries.
    slow = http_app.wait_for("slowpoke", 2)
    assert [d["headers"]["X-Attempt"] for d in slow] == ["1", "2"]
    assert 1.0 <= slow[1]["t"] - slow[0]["t"] < 5.0
    http_app.wait_for("bad")
    http_app.wait_for("json-drop")

    # 400, a DROP answer and running out of attempts (maxAttempts 3) each leave one buried job.
    def counts() -> dict[str, int]:
        return tube_counts(beanstalk_cluster.addresses, unique)

    left = {"ready": 0, "delayed": 0, "reserved": 0, "buried": 3}
    wait_until(lambda: counts() == left, 10, "3 buried jobs and no other", counts)
    assert len(http_app.received("bad")) == 1 and len(http_app.received("json-drop")) == 1
    assert len(http_app.received("hopeless")) == 3
    assert (
        sidecar.metric("queue_messages_dead_lettered_total", kind="delay", queue=unique, reason="drop") == 2
    )
    assert (
        sidecar.metric(
            "queue_messages_dead_lettered_total", kind="delay", queue=unique, reason="max_attempts"
        )
        == 1
    )


def test_kafka_retries_then_dead_letters_with_headers(
    make_sidecar: Callable[..., Sidecar], http_app: App, kafka_broker: Tansu, unique: str
) -> None:
    create_topics(kafka_broker.bootstrap, unique, f"{unique}.dlq")
    http_app.script(
        {"flaky": [{"status": 500}, {"status": 200}], "bad": [{"status": 422, "text": "bad order"}]}
    )
    sidecar = make_sidecar(
        {"app": app_config(http_app), "queues": [kafka_queue(unique, kafka_broker.bootstrap)]}
    )
    sidecar.wait_ready()
    kafka_push(kafka_broker.bootstrap, unique, b"flaky", key=b"k1")
    kafka_push(kafka_broker.bootstrap, unique, b"after-flaky", key=b"k1")  # same key: must wait
    _, bad_offset = kafka_push(kafka_broker.bootstrap, unique, b"bad", key=b"k2", headers=[("trace", b"t-1")])

    flaky = http_app.wait_for("flaky", 2)
    assert [d["headers"]["X-Attempt"] for d in flaky] == ["1", "2"]
    [after] = http_app.wait_for("after-flaky")
    assert after["t"] > flaky[1]["t"], "a later message of the same key overtook a retried one"
    [dead] = kafka_read_all(kafka_broker.bootstrap, f"{unique}.dlq", f"{unique}-reader", 1)
    assert dead.value() == b"bad" and dead.key() == b"k2"
    headers: dict[str, Any] = {k: v for k, v in dead.headers()}
    assert headers["trace"] == b"t-1"
    assert headers["x-original-topic"] == unique.encode()
    assert headers["x-original-offset"] == str(bad_offset).encode()
    assert headers["x-attempts"] == b"1"
    assert b"HTTP 422" in headers["x-last-error"] and b"bad order" in headers["x-last-error"]
    assert headers["x-dead-letter-reason"] == b"drop"
    assert len(http_app.received("bad")) == 1
