"""The chart's monitoring objects: off by default; when on, a PodMonitor that finds the injected
sidecar, alert rules promtool accepts and a Grafana dashboard, all on metrics the sidecar exports.

tests/sidecar/test_monitoring.py runs the same rules and dashboard queries in a real Prometheus
scraping a real sidecar.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import REGISTRY

import queue_sidecar.delivery.base
import queue_sidecar.delivery.readiness
import queue_sidecar.runtime  # noqa: F401 - registers the sidecar's own metrics
from harness import tools
from harness.chart import CHART, by_kind, helm, render
from queue_operator.injection import SidecarSettings, inject, read_request
from queue_operator.injection.annotations import HEALTH_PORT

KUBE_VERSION = "1.33.0"
ALL_ON = (
    "monitoring.podMonitor.enabled=true",
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.rules.enabled=true",
    "monitoring.dashboard.enabled=true",
)
ALERTS = {
    "QueueDeadLettersGrowing",
    "QueueJobsBuried",
    "QueueConsumerLagGrowing",
    "QueueDeliveryErrors",
    "QueueBackendDown",
    "QueueDqLatenessHigh",
    "QueueSidecarAppMisconfigured",
}
# On the operator's own metrics: only with the ServiceMonitor that scrapes them.
OPERATOR_ALERTS = {
    "QueueOperatorNoLeader",
    "QueueNotReady",
    "QueueOperatorReconcileFailing",
    "QueueWebhookErrors",
}


def rules_spec(*sets: str) -> dict[str, Any]:
    (rule,) = by_kind(render("monitoring.rules.enabled=true", *sets), "PrometheusRule")
    spec: dict[str, Any] = rule["spec"]
    return spec


def dashboard(*sets: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dashboard ConfigMap and the dashboard it carries."""
    (config_map,) = by_kind(render("monitoring.dashboard.enabled=true", *sets), "ConfigMap")
    return config_map, json.loads(config_map["data"]["queue-operator.json"])


def panel_exprs(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in board["panels"] if p["type"] != "row" for t in p["targets"]]


def exported_series() -> set[str]:
    """Every series name the sidecar's /metrics can show (engines' and sidecar's own metrics)."""
    names = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    # Another test imports the operator's metrics into this process's registry: not the sidecar's.
    return {name for name in names if not name.startswith("queue_operator_")}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bqueue_[a-z_]+\b", expr))


def test_monitoring_is_off_by_default() -> None:
    objects = render()
    assert not by_kind(objects, "PodMonitor")
    assert not by_kind(objects, "PrometheusRule")
    assert not [o for o in by_kind(objects, "ConfigMap") if "grafana_dashboard" in o["metadata"]["labels"]]
    assert not by_kind(objects, "ServiceMonitor")
    assert not [o for o in by_kind(objects, "Service") if o["metadata"]["name"].endswith("-metrics")]


def test_helm_lint_is_clean_with_monitoring_on() -> None:
    argv = ["lint", "--strict", str(CHART)]
    for value in ALL_ON:
        argv += ["--set", value]
    result = helm(*argv, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_monitoring_objects_are_well_formed() -> None:
    objects = render(*ALL_ON)
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            # No schema for the Prometheus Operator's kinds here: check what they must have.
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            assert obj["metadata"]["namespace"] == "queue-system" and obj["spec"]
        else:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    assert {o["kind"] for o in objects} >= {"PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap"}


def test_servicemonitor_scrapes_the_operators_metrics_port_on_both_deployments() -> None:
    objects = render("monitoring.serviceMonitor.enabled=true", "metrics.port=9100")
    (monitor,) = by_kind(objects, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    selected = [
        s
        for s in by_kind(objects, "Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert sorted(s["metadata"]["name"] for s in selected) == [
        "qo-queue-operator-metrics",
        "qo-queue-operator-webhook-metrics",
    ]
    deployments = by_kind(objects, "Deployment")
    for service in selected:
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        # The Service picks exactly one Deployment's pods, whose container names that port.
        (deployment,) = [
            d
            for d in deployments
            if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports[port["targetPort"]] == 9100
        assert "--metrics-port=9100" in container["args"]
    assert endpoint["path"] == "/metrics" and endpoint["honorLabels"] is True
    # Without the webhook, only the controller's Service.
    objects = render("monitoring.serviceMonitor.enabled=true", "webhook.enabled=false")
    names = [s["metadata"]["name"] for s in by_kind(objects, "Service")]
    assert "qo-queue-operator-metrics" in names and "qo-queue-operator-webhook-metrics" not in names


def test_operator_alerts_come_with_the_servicemonitor_and_use_its_metrics(tmp_path: Path) -> None:
    from queue_operator import metrics  # noqa: PLC0415 - here only: its registry is the operator's

    spec = rules_spec("monitoring.serviceMonitor.enabled=true")
    rules = spec["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == ALERTS | OPERATOR_ALERTS
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [tools.promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    operator_series = set()
    for collector in (metrics.LEADER, metrics.RECONCILIATIONS, metrics.ADMISSIONS, metrics.READINESS):
        for family in collector.collect():
            operator_series |= {family.name, family.name + "_total"}
    for rule in rules:
        if rule["alert"] in OPERATOR_ALERTS:
            assert metric_names(rule["expr"]) <= operator_series, rule["expr"]


def test_podmonitor_scrapes_the_port_the_webhook_gives_the_sidecar() -> None:
    (monitor,) = by_kind(render("monitoring.podMonitor.enabled=true"), "PodMonitor")
    spec = monitor["spec"]
    (endpoint,) = spec["podMetricsEndpoints"]
    # The pod the webhook makes: find the container and port the PodMonitor keeps.
    pod = {
        "metadata": {
            "name": "app",
            "namespace": "shop",
            "annotations": {
                "queue-operator.dev/inject": "true",
                "queue-operator.dev/queues": "kafkaqueue/orders",
                "queue-operator.dev/app-port": "8080",
            },
        },
        "spec": {"containers": [{"name": "app", "image": "app", "ports": [{"containerPort": 8080}]}]},
    }
    injected = inject(pod, read_request(pod), [], SidecarSettings())
    keep = [r for r in endpoint["relabelings"] if r["action"] == "keep"]
    assert [r["sourceLabels"] for r in keep] == [["__meta_kubernetes_pod_container_name"]]
    containers = injected["spec"]["initContainers"] + injected["spec"]["containers"]
    scraped = [c for c in containers if re.fullmatch(keep[0]["regex"], c["name"])]
    assert [c["name"] for c in scraped] == ["queue-sidecar"]
    ports = {p["name"]: p["containerPort"] for p in scraped[0]["ports"]}
    assert ports[endpoint["port"]] == HEALTH_PORT
    assert endpoint["path"] == "/metrics"
    # No label marks injected pods: every namespace, every pod, narrowed by the port and container.
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["selector"] == {}


def test_podmonitor_can_be_narrowed_and_picked_up_by_a_prometheus() -> None:
    (monitor,) = by_kind(
        render(
            "monitoring.podMonitor.enabled=true",
            "monitoring.podMonitor.labels.release=kube-prometheus-stack",
            "monitoring.podMonitor.namespaces={shop,billing}",
            "monitoring.podMonitor.selector.matchLabels.team=payments",
            "monitoring.podMonitor.interval=15s",
        ),
        "PodMonitor",
    )
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["shop", "billing"]}
    assert monitor["spec"]["selector"] == {"matchLabels": {"team": "payments"}}
    assert monitor["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"


@pytest.mark.parametrize(
    "sets",
    [
        (),
        (
            "monitoring.rules.for=30s",
            "monitoring.rules.window=2m",
            "monitoring.rules.thresholds.lag=5000000",
            "monitoring.rules.thresholds.latenessSeconds=2",
            "monitoring.rules.alertLabels.team=payments",
        ),
    ],
    ids=["defaults", "tuned"],
)
def test_promtool_accepts_the_rules(sets: tuple[str, ...], tmp_path: Path) -> None:
    spec = rules_spec(*sets)
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [tools.promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout
    rules = spec["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_rule_durations_thresholds_and_labels_come_from_values() -> None:
    rules = rules_spec(
        "monitoring.rules.for=1s",
        "monitoring.rules.window=20s",
        "monitoring.rules.thresholds.lag=7",
        "monitoring.rules.alertLabels.team=payments",
        "monitoring.rules.disabled={QueueDqLatenessHigh}",
    )["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == ALERTS - {"QueueDqLatenessHigh"}
    assert {r["for"] for r in rules} == {"1s"}
    assert all(r["labels"]["team"] == "payments" for r in rules)
    (lag,) = [r for r in rules if r["alert"] == "QueueConsumerLagGrowing"]
    assert "> 7)" in lag["expr"] and "[20s:]" in lag["expr"]
    (dead,) = [r for r in rules if r["alert"] == "QueueDeadLettersGrowing"]
    assert "[20s]" in dead["expr"]


def test_rules_and_dashboard_use_only_metrics_the_sidecar_exports() -> None:
    exported = exported_series()
    rules = rules_spec()["groups"][0]["rules"]
    _, board = dashboard()
    for expr in [r["expr"] for r in rules] + panel_exprs(board):
        assert metric_names(expr), expr
        assert metric_names(expr) <= exported, f"{expr}: not exported: {metric_names(expr) - exported}"


def test_dashboard_configmap_carries_the_grafana_sidecar_label() -> None:
    config_map, board = dashboard()
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "queue-system"
    assert board["uid"] == "queue-operator"
    titles = {p["title"] for p in board["panels"]}
    wanted = {"Received", "Delivery latency", "Kafka consumer lag", "Retries", "Dead letters and buried jobs"}
    assert titles >= wanted
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "namespace", "queue"}
    for expr in panel_exprs(board):
        assert 'queue=~"$queue"' in expr, expr  # every panel follows the queue picker

    config_map, _ = dashboard(
        "monitoring.dashboard.label.key=grafana_dashboard_queues",
        "monitoring.dashboard.label.value=yes",
        "monitoring.dashboard.namespace=monitoring",
        "monitoring.dashboard.annotations.grafana_folder=Queues",
    )
    assert config_map["metadata"]["labels"]["grafana_dashboard_queues"] == "yes"
    assert "grafana_dashboard" not in config_map["metadata"]["labels"]
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Queues"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("monitoring.rules.for=5 minutes", "for"),
        ("monitoring.rules.disabled={QueueNoSuchAlert}", "disabled"),
        ("monitoring.rules.thresholds.errorRatio=2", "errorRatio"),
        ("monitoring.podMonitor.port=9464", "Additional property port is not allowed"),
        ("monitoring.serviceMonitor.port=9464", "Additional property port is not allowed"),
        ("metrics.port=0", "metrics"),
    ],
)
def test_values_schema_refuses_bad_monitoring_values(value: str, message: str) -> None:
    result = helm("template", "qo", str(CHART), "--set", value, check=False)
    assert result.returncode != 0
    assert message in result.stderr
