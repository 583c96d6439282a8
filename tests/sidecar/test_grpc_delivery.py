"""Delivery to a gRPC app (queueoperator.v1.MessageHandler) through the real sidecar process."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from harness.servers import BeanstalkdCluster, RedisServer, Tansu, free_port
from queue_engine.durations import parse_rfc3339
from queue_sidecar.proto import queue_pb2, queue_pb2_grpc

from .clients import create_topics, dq_delay, kafka_push, kafka_read_all, tube_counts
from .conftest import App, Sidecar, app_config, delay_queue, kafka_queue, wait_until


def test_grpc_app_gets_messages_and_its_acks_are_honoured(  # noqa: PLR0917
    make_sidecar: Callable[..., Sidecar],
    grpc_app: App,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    kafka_broker: Tansu,
    unique: str,
) -> None:
    dq, kq = f"{unique}-d", f"{unique}-k"
    create_topics(kafka_broker.bootstrap, kq, f"{kq}.dlq")
    grpc_app.script(
        {
            "g-retry": [{"ack": "RETRY", "retryAfter": 0.5, "error": "later"}, {"ack": "SUCCESS"}],
            "g-drop": [{"ack": "DROP", "error": "not for us"}],
            "g-down": [{"code": "UNAVAILABLE"}, {"ack": "SUCCESS"}],
            "g-fail": [{"code": "INTERNAL", "error": "boom"}, {"ack": "DROP", "error": "bad order"}],
        }
    )
    publisher_port = free_port()
    sidecar = make_sidecar(
        {
            "app": app_config(grpc_app),
            "publish": {"port": free_port(), "grpcPort": publisher_port},
            "queues": [
                delay_queue(dq, beanstalk_cluster.addresses, shared_redis.url),
                kafka_queue(kq, kafka_broker.bootstrap),
            ],
        }
    )
    sidecar.wait_ready()
    job_id = dq_delay(beanstalk_cluster.addresses, dq, shared_redis.url, b"g-hello", 0.2)
    dq_delay(beanstalk_cluster.addresses, dq, shared_redis.url, b"g-retry", 0)
    dq_delay(beanstalk_cluster.addresses, dq, shared_redis.url, b"g-drop", 0)
    partition, offset = kafka_push(
        kafka_broker.bootstrap, kq, b"g-order", key=b"cust-1", headers=[("h", b"\x00\x01")]
    )
    kafka_push(kafka_broker.bootstrap, kq, b"g-down", key=b"cust-2")
    _, fail_offset = kafka_push(kafka_broker.bootstrap, kq, b"g-fail", key=b"cust-3")

    [hello] = grpc_app.wait_for("g-hello")
    assert (hello["kind"], hello["queue"], hello["id"], hello["attempt"]) == ("delay", dq, job_id, 1)
    assert hello["method"] == "HandleStream"  # the app serves it, so single messages go that way
    assert hello["t"] >= parse_rfc3339(hello["due_at"]).timestamp()

    [order] = grpc_app.wait_for("g-order")
    assert (order["kind"], order["queue"], order["attempt"]) == ("kafka", kq, 1)
    assert order["id"] == f"{kq}/{partition}/{offset}"
    assert (order["key"], order["partition"], order["offset"]) == ("cust-1", partition, offset)
    assert order["headers"] == [["h", base64.b64encode(b"\x00\x01").decode()]]
    assert order["due_at"] is None

    first, second = grpc_app.wait_for("g-retry", 2)
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert second["t"] - first["t"] >= 0.5, "Ack.retry_after not honoured"

    # UNAVAILABLE from the app means "not serving": handed back without counting the attempt.
    assert [d["attempt"] for d in grpc_app.wait_for("g-down", 2)] == [1, 1]

    def counts() -> dict[str, int]:
        return tube_counts(beanstalk_cluster.addresses, dq)

    wait_until(lambda: counts()["buried"] == 1, 10, "g-drop buried", counts)
    assert len(grpc_app.received("g-drop")) == 1

    [dead] = kafka_read_all(kafka_broker.bootstrap, f"{kq}.dlq", f"{unique}-reader", 1)
    headers: dict[str, Any] = dict(dead.headers())
    assert dead.value() == b"g-fail"
    assert headers["x-original-offset"] == str(fail_offset).encode()
    assert headers["x-attempts"] == b"2" and headers["x-last-error"] == b"bad order"
    assert [d["attempt"] for d in grpc_app.received("g-fail")] == [1, 2]
    assert sidecar.get("/readyz")[0] == 200

    # The app publishes through the sidecar's gRPC Publisher, and gets the message back.
    async def publish() -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{publisher_port}") as channel:
            stub = queue_pb2_grpc.PublisherStub(channel)  # type: ignore[no-untyped-call]
            reply = await stub.Push(queue_pb2.PushRequest(queue=kq, body=b"g-published", key=b"cust-9"))
            return int(reply.offset)

    published_offset = asyncio.run(publish())
    [published] = grpc_app.wait_for("g-published")
    assert (published["key"], published["offset"]) == ("cust-9", published_offset)


def test_grpc_app_down_then_up_gets_the_message_without_a_burned_attempt(
    make_sidecar: Callable[..., Sidecar],
    tmp_path: Path,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    unique: str,
) -> None:
    app = App(tmp_path / "late-grpc-app", "grpc")
    app.script({})
    sidecar = make_sidecar(
        {
            "app": app_config(app),
            "queues": [delay_queue(unique, beanstalk_cluster.addresses, shared_redis.url)],
        }
    )
    try:
        app.start()
        sidecar.wait_ready()
        app.kill()  # the channel to it is now broken, not just never opened
        dq_delay(beanstalk_cluster.addresses, unique, shared_redis.url, b"g-while-down", 0)
        time.sleep(1.5)  # several rounds of UNAVAILABLE: none may count as an attempt
        app.start()
        [delivered] = app.wait_for("g-while-down")
        assert delivered["attempt"] == 1
    finally:
        app.kill()


def test_an_app_without_handle_stream_gets_each_message_through_handle(
    make_sidecar: Callable[..., Sidecar],
    tmp_path: Path,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    unique: str,
) -> None:
    # Stubs generated before HandleStream existed: the app answers it UNIMPLEMENTED.
    app = App(tmp_path / "unary-app", "grpc", "--unary-only")
    app.script(
        {
            "u-retry": [{"ack": "RETRY", "error": "later"}, {"ack": "SUCCESS"}],
            "u-drop": [{"ack": "DROP", "error": "not for us"}],
            "u-down": [{"code": "UNAVAILABLE"}, {"ack": "SUCCESS"}],
        }
    )
    app.start()
    try:
        sidecar = make_sidecar(
            {
                "app": app_config(app),
                "queues": [delay_queue(unique, beanstalk_cluster.addresses, shared_redis.url)],
            }
        )
        sidecar.wait_ready()
        for body in (b"u-first", b"u-retry", b"u-drop", b"u-down"):
            dq_delay(beanstalk_cluster.addresses, unique, shared_redis.url, body, 0)

        # Nothing is lost or counted twice on the way to Handle: the first message too.
        [first] = app.wait_for("u-first")
        assert (first["method"], first["attempt"]) == ("Handle", 1)
        assert [d["attempt"] for d in app.wait_for("u-retry", 2)] == [1, 2]
        assert [d["attempt"] for d in app.wait_for("u-down", 2)] == [1, 1]
        wait_until(
            lambda: tube_counts(beanstalk_cluster.addresses, unique)["buried"] == 1,
            10,
            "u-drop buried",
            lambda: tube_counts(beanstalk_cluster.addresses, unique),
        )
        everything = app.received()
        assert {d["method"] for d in everything} == {"Handle"}
        assert len(app.received("u-drop")) == 1
    finally:
        app.kill()
