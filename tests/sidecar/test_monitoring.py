"""The chart's alerts and dashboard, run by a real Prometheus scraping a real sidecar.

Prometheus loads the PrometheusRule the chart renders (with ``for`` and the window made short
through values) and scrapes the sidecar's health port at the path the PodMonitor names. Under
load, and then with the app answering 500, every dashboard panel's query returns data and the
dead-letter, buried, lag and delivery-error alerts fire; once the app answers 200 again they
resolve. Then Redis goes away and comes back: the backend-down alert fires and resolves.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from pathlib import Path

from harness.chart import by_kind, render
from harness.prometheus import Prometheus
from harness.servers import BeanstalkdCluster, RedisServer, Tansu

from .clients import create_topics, http
from .conftest import App, Sidecar, app_config, delay_queue, kafka_queue, wait_until

RULE_VALUES = (
    "monitoring.rules.enabled=true",
    "monitoring.podMonitor.enabled=true",
    "monitoring.dashboard.enabled=true",
    "monitoring.rules.for=1s",
    "monitoring.rules.window=20s",
    "monitoring.rules.thresholds.lag=0",
)
# What Grafana puts in the panel queries: the pickers at "All", a rate range.
GRAFANA_VARIABLES = {"namespace": ".*", "queue": ".*", "__rate_interval": "1m"}


def grafana_expr(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in GRAFANA_VARIABLES, f"panel uses ${name}; teach the test its value"
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$(\w+)", value, expr)


class Publisher:
    """Publishes through the sidecar's API in the background until stopped."""

    def __init__(self, sidecar: Sidecar, dq: str, kq: str) -> None:
        self.sidecar, self.dq, self.kq = sidecar, dq, kq
        self.stopped = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def publish_once(self, tag: str) -> None:
        url = self.sidecar.publish_url
        code, _ = http("POST", f"{url}/v1/delayqueues/{self.dq}/jobs?delay=0s", f"job-{tag}".encode())
        assert code == 201
        # One key: the messages queue up behind the one being retried, so the lag grows.
        body, key = f"order-{tag}".encode(), {"X-Kafka-Key": "k"}
        code, _ = http("POST", f"{url}/v1/kafkaqueues/{self.kq}/messages", body, key)
        assert code == 201
        self.count += 1

    def run(self) -> None:
        while not self.stopped.wait(0.3):
            self.publish_once(f"bg-{self.count}")

    def __enter__(self) -> Publisher:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        self.thread.join(10)


def test_alerts_fire_on_faults_and_resolve_and_every_panel_has_data(  # noqa: PLR0917
    make_sidecar: Callable[..., Sidecar],
    http_app: App,
    tmp_path: Path,
    beanstalk_cluster: BeanstalkdCluster,
    redis_server: RedisServer,
    kafka_broker: Tansu,
    unique: str,
) -> None:
    objects = render(*RULE_VALUES)
    (rule,) = by_kind(objects, "PrometheusRule")
    (monitor,) = by_kind(objects, "PodMonitor")
    (config_map,) = by_kind(objects, "ConfigMap")
    board = json.loads(config_map["data"]["queue-operator.json"])

    dq, kq = f"{unique}-d", f"{unique}-k"
    create_topics(kafka_broker.bootstrap, kq, f"{kq}.dlq")
    backoff = {"initial": "200ms", "max": "1s", "multiplier": 2}
    sidecar = make_sidecar(
        {
            "app": app_config(http_app),
            "queues": [
                delay_queue(dq, beanstalk_cluster.addresses, redis_server.url, maxAttempts=2),
                kafka_queue(kq, kafka_broker.bootstrap, maxAttempts=4, backoff=backoff),
            ],
        }
    )
    sidecar.wait_ready()
    prometheus = Prometheus(
        tmp_path / "prometheus",
        [sidecar.address],
        metrics_path=monitor["spec"]["podMetricsEndpoints"][0]["path"],
        rules=rule["spec"],
    )
    prometheus.start()
    try:
        wait_until(lambda: prometheus.target_health() == ["up"], 30, "prometheus scrapes the sidecar")

        with Publisher(sidecar, dq, kq) as publisher:
            publisher.publish_once("first")
            http_app.wait_for("job-first")
            http_app.wait_for("order-first")

            # The app fails everything: retries, then buried jobs and dead letters; lag builds.
            http_app.script({}, default={"status": 500})
            expected = {
                ("QueueJobsBuried", dq),
                ("QueueDeadLettersGrowing", kq),
                ("QueueConsumerLagGrowing", kq),
                ("QueueDeliveryErrors", dq),
                ("QueueDeliveryErrors", kq),
            }
            wait_until(
                lambda: expected <= prometheus.firing(),
                120,
                "the fault alerts to fire",
                lambda: (prometheus.alerts(), sidecar.log_tail(10)),
            )
            assert ("QueueBackendDown", dq) not in prometheus.firing()

            # Every dashboard panel has data to show, as Grafana would ask for it.
            for panel in board["panels"]:
                for target in panel.get("targets", []):
                    expr = grafana_expr(target["expr"])
                    values = [float(r["value"][1]) for r in prometheus.query(expr)]
                    shown = f"panel {panel['title']!r}: {expr} -> {values}"
                    assert any(math.isfinite(v) for v in values), shown

            http_app.script({})  # the app works again

        wait_until(
            lambda: not [a for a in prometheus.alerts() if a["labels"].get("queue") in (dq, kq)],
            120,
            "the alerts to resolve",
            prometheus.alerts,
        )

        # Its Redis goes away: the DelayQueue's backend is down until it is back.
        redis_server.kill()
        wait_until(
            lambda: ("QueueBackendDown", dq) in prometheus.firing(), 60, "QueueBackendDown", prometheus.alerts
        )
        assert ("QueueBackendDown", kq) not in prometheus.firing()
        redis_server.start()
        wait_until(
            lambda: (
                ("QueueBackendDown", dq)
                not in {(a["labels"]["alertname"], a["labels"].get("queue")) for a in prometheus.alerts()}
            ),
            60,
            "QueueBackendDown to resolve",
            prometheus.alerts,
        )
    finally:
        prometheus.kill()
