"""Run the whole thing locally on the embedded defaults.

Starts three beanstalkd nodes, Redis and a Kafka-protocol broker (tansu) on free loopback
ports, the sample app (demo/app.py) and the real ``queue-sidecar`` in front of it; then
publishes delayed, timed and Kafka messages through the sidecar's publish API and shows them
arriving at the app. ``--once`` exits when every message has arrived (used by the tests);
otherwise it keeps running so you can publish more with curl or queuectl.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from harness.servers import BeanstalkdCluster, RedisServer, Tansu, free_port, wait_for_port  # noqa: E402

BIN = Path(sys.executable).parent


def _http(method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(
        url, data=body if method != "GET" else None, method=method, headers=headers or {}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else None


def _wait_ready(url: str, timeout: float, sidecar: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sidecar.poll() is not None:
            raise SystemExit(f"the sidecar exited with {sidecar.returncode}; see its log above")
        try:
            _http("GET", url)
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise SystemExit(f"the sidecar was not ready after {timeout}s ({url})")


def _create_topics(bootstrap: str, *topics: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic  # noqa: PLC0415

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(t, 3, 1) for t in topics]).values():
        future.result(15)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--once", action="store_true", help="exit when the demo messages have arrived")
    parser.add_argument(
        "--k8s",
        action="store_true",
        help="the Kubernetes path instead: chart, operator, webhook and pods on the e2e bed (demo/k8s.py)",
    )
    args = parser.parse_args()
    if args.k8s:
        sys.path.insert(0, str(REPO))
        from demo.k8s import run  # noqa: PLC0415 - only this path needs the bed

        return run(once=args.once)

    work = Path(tempfile.mkdtemp(prefix="queue-operator-demo-"))
    cluster = BeanstalkdCluster(work / "beanstalkd", size=3)
    redis = RedisServer(work / "redis")
    broker = Tansu(work / "tansu")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cluster.start()
        redis.start()
        broker.start()
        _create_topics(broker.bootstrap, "orders", "orders.dlq")
        app_port, publish_port, health_port = free_port(), free_port(), free_port()
        config = {
            "app": {
                "protocol": "http",
                "port": app_port,
                "path": "/messages",
                "maxConcurrency": 8,
                "timeout": "10s",
            },
            "publish": {"port": publish_port},
            "health": {"port": health_port},
            "queues": [
                {
                    "kind": "DelayQueue",
                    "name": "reminders",
                    "nodes": cluster.addresses,
                    "tube": "reminders",
                    "redis": {"url": redis.url},
                    "delivery": {
                        "maxAttempts": 5,
                        "backoff": {"initial": "1s", "max": "60s", "multiplier": 2},
                    },
                },
                {
                    "kind": "KafkaQueue",
                    "name": "orders",
                    "brokers": [broker.bootstrap],
                    "topic": "orders",
                    "group": "orders-app",
                    "offset": "first",
                    "deadLetterTopic": "orders.dlq",
                    "delivery": {"maxAttempts": 3},
                    # The local broker (tansu) joins a group in ~3 s with these, ~23 s without.
                    "librdkafka": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
                },
            ],
        }
        config_path = work / "sidecar.yaml"
        config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        print(
            f"servers: beanstalkd {', '.join(cluster.addresses)}; redis {redis.url}; kafka {broker.bootstrap}"
        )
        print(f"sidecar config: {config_path}")

        procs.append(
            subprocess.Popen([sys.executable, str(REPO / "demo" / "app.py"), "--port", str(app_port)])
        )
        wait_for_port(app_port, 10, procs[-1])
        procs.append(subprocess.Popen([str(BIN / "queue-sidecar"), "--config", str(config_path)]))
        _wait_ready(f"http://127.0.0.1:{health_port}/readyz", 90, procs[-1])

        publish = f"http://127.0.0.1:{publish_port}"
        sent: list[str] = []
        for body, query in [
            (b"remind me in 2s", "delay=2s"),
            (b"fail-once, then ok", "delay=1s"),
            (b"at a fixed time", "at=" + (datetime.now(UTC) + timedelta(seconds=3)).isoformat()),
        ]:
            job = _http("POST", f"{publish}/v1/delayqueues/reminders/jobs?{query}", body)
            print(f"published delayed job {job['id']}: {body.decode()!r} ({query})")
            sent.append(body.decode())
        revoked = _http(
            "POST", f"{publish}/v1/delayqueues/reminders/jobs?delay=2s", b"revoked, never delivered"
        )
        _http("DELETE", f"{publish}/v1/delayqueues/reminders/jobs/{revoked['id']}")
        print(f"published and revoked job {revoked['id']}")
        for i in range(3):
            body = f"order {i}".encode()
            ack = _http(
                "POST",
                f"{publish}/v1/kafkaqueues/orders/messages",
                body,
                {"X-Kafka-Key": f"customer-{i % 2}", "X-Header-source": "demo"},
            )
            print(f"pushed {body.decode()!r}: partition {ack['partition']} offset {ack['offset']}")
            sent.append(body.decode())

        deadline = time.monotonic() + 60
        received: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            received = _http("GET", f"http://127.0.0.1:{app_port}/received")
            done = {
                r["body"]
                for r in received
                if "fail-once" not in r["body"] or r["headers"].get("X-Attempt") == "2"
            }
            if set(sent) <= done:
                break
            time.sleep(0.2)
        bodies = {r["body"] for r in received}
        missing = set(sent) - bodies
        print(
            f"\nthe app received {len(received)} deliveries; missing: {sorted(missing) or 'none'}; "
            f"revoked job delivered: {'revoked, never delivered' in bodies}"
        )
        if missing or "revoked, never delivered" in bodies:
            return 1
        if args.once:
            return 0
        print(
            "\nrunning; try:\n"
            f"  curl -X POST --data-binary hello '{publish}/v1/delayqueues/reminders/jobs?delay=3s'\n"
            f"  curl -X POST -H 'X-Kafka-Key: k' --data-binary hi {publish}/v1/kafkaqueues/orders/messages\n"
            f"  queuectl --config {config_path} stats reminders\n"
            f"  curl http://127.0.0.1:{health_port}/metrics\nCtrl-C to stop."
        )
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(25)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()
        redis.stop()
        cluster.stop()
        if os.environ.get("DEMO_KEEP_WORKDIR") is None:
            import shutil  # noqa: PLC0415

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
