"""A KafkaQueue whose brokers cannot be reached (a mistyped address): a quiet log, fast 503s.

Before, every Kafka client of the queue logged each failed connection attempt (about 40 lines
a second) and each publish waited out the 30 s message timeout before its 503.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from harness.servers import Tansu, free_port

from .clients import http
from .conftest import App, Sidecar, app_config, kafka_queue, wait_until

WATCH_SECONDS = 12.0


def _log_lines(sidecar: Sidecar) -> list[dict[str, object]]:
    lines = []
    for line in sidecar.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_an_unreachable_broker_is_logged_sparingly_and_publishes_fail_at_once(
    make_sidecar: Callable[..., Sidecar], http_app: App, tmp_path: Path, unique: str
) -> None:
    port = free_port()  # nothing listens here until the broker starts below
    sidecar = make_sidecar(
        {"app": app_config(http_app), "queues": [kafka_queue(unique, f"127.0.0.1:{port}")]}
    )
    started = time.monotonic()

    # The publish side learns within seconds that no broker can be reached, and says so.
    reason = wait_until(
        lambda: sidecar.status()["queues"][unique].get("publish"), 15, "/v1/status to name the problem"
    )
    assert f"127.0.0.1:{port}" in reason and "Connection refused" in reason
    # Then a publish is refused at once with that reason (the client gives up long before the
    # 30 s message timeout a push waited out before), and nothing is left queued to go out later.
    messages = f"{sidecar.publish_url}/v1/kafkaqueues/{unique}/messages"
    status, answer = http("POST", messages, b"lost?")
    assert status == 503, answer
    assert "no Kafka broker reachable" in answer["error"] and "Connection refused" in answer["error"]

    time.sleep(max(0.0, WATCH_SECONDS - (time.monotonic() - started)))
    lines = _log_lines(sidecar)
    refused = [line for line in lines if "Connection refused" in str(line["msg"])]
    assert refused, "the connection failure must still be reported"
    # Each distinct complaint at most once per 30 s: a handful of lines, not hundreds.
    assert len(lines) < 40, "\n".join(str(line["msg"])[:120] for line in lines)

    # The broker comes up at the configured address: publishing works again, by itself.
    broker = Tansu(tmp_path / "late-broker", port)
    broker.start()
    try:
        wait_until(
            lambda: http("POST", messages, b"late")[0] == 201,
            30,
            "a publish to succeed once the broker is up",
        )
        assert "publish" not in sidecar.status()["queues"][unique]
    finally:
        broker.kill()
