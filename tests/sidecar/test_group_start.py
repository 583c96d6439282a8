"""offset: last, outside Kubernetes: what the app publishes before the sidecar's group joined is delivered.

The sidecar consumes only once the app accepts connections, and a new group "at the latest
offset" would start at the end as it was when it joined, after these messages.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.servers import Tansu

from .clients import committed_offsets, create_topics, http
from .conftest import App, Sidecar, app_config, kafka_queue


def test_messages_published_before_the_group_first_joined_are_delivered(
    make_sidecar: Callable[..., Sidecar], kafka_broker: Tansu, tmp_path: Path, unique: str
) -> None:
    existing, created = f"{unique}-e", f"{unique}-c"  # a topic made beforehand; one the push makes
    create_topics(kafka_broker.bootstrap, existing, partitions=2)
    app = App(tmp_path / "late-app", "http")  # not started: nothing is consumed yet
    app.script({})
    queues = [{**kafka_queue(name, kafka_broker.bootstrap), "offset": "last"} for name in (existing, created)]
    sidecar = make_sidecar({"app": app_config(app), "queues": queues})
    try:
        for name in (existing, created):
            for body in (b"early-1", b"early-2"):
                status, answer = http("POST", f"{sidecar.publish_url}/v1/kafkaqueues/{name}/messages", body)
                assert status == 201, answer
        # The group starts where the first publish found the topic, not where it will be on joining.
        starts = committed_offsets(kafka_broker.bootstrap, existing, f"{existing}-app", partitions=2)
        assert starts == {0: 0, 1: 0}

        app.start()
        for body in ("early-1", "early-2"):  # once from each queue
            delivered = app.wait_for(body, count=2, timeout=40)
            assert {d["headers"]["X-Queue-Name"] for d in delivered} == {existing, created}
    finally:
        app.kill()
