"""A failed delivery attempt is logged with the documented fields, its id as in X-Message-Id."""

from __future__ import annotations

import json
from collections.abc import Callable

from harness.servers import BeanstalkdCluster, RedisServer, Tansu

from .clients import create_topics, http
from .conftest import App, Sidecar, app_config, delay_queue, kafka_queue, wait_until


def _failed_attempts(sidecar: Sidecar) -> list[dict[str, object]]:
    lines = (json.loads(line) for line in sidecar.log_path.read_text().splitlines() if line.startswith("{"))
    return [line for line in lines if "attempt" in line and "message_id" in line]


def test_failed_attempts_are_logged_with_queue_message_id_attempt_and_error(  # noqa: PLR0917
    make_sidecar: Callable[..., Sidecar],
    http_app: App,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    kafka_broker: Tansu,
    unique: str,
) -> None:
    dq, kq = f"{unique}-d", f"{unique}-k"
    create_topics(kafka_broker.bootstrap, kq, f"{kq}.dlq")
    flaky = [{"status": 503}, {"status": 200}]
    http_app.script({"flaky-d": flaky, "flaky-k": flaky})
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
    assert http("POST", f"{sidecar.publish_url}/v1/delayqueues/{dq}/jobs?delay=0s", b"flaky-d")[0] == 201
    assert http("POST", f"{sidecar.publish_url}/v1/kafkaqueues/{kq}/messages", b"flaky-k")[0] == 201

    deliveries = http_app.wait_for("flaky-d", count=2) + http_app.wait_for("flaky-k", count=2)
    ids = {d["headers"]["X-Queue-Name"]: d["headers"]["X-Message-Id"] for d in deliveries}
    lines = wait_until(
        lambda: len(_failed_attempts(sidecar)) >= 2 and _failed_attempts(sidecar), 10, "log lines"
    )
    by_queue = {line["queue"]: line for line in lines}
    for queue in (dq, kq):
        line = by_queue[queue]
        assert line["message_id"] == ids[queue]  # one id format: the header's (topic/partition/offset)
        assert line["attempt"] == 1
        assert "HTTP 503" in str(line["error"])
        assert line["level"] == "info"
