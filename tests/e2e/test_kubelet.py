"""The kubelet stand-in itself: what the user-path tests rely on, checked directly.

A pod's env from a Secret and the downward API, ConfigMap files refreshed in place, its own
loopback address, Ready from its probe, StatefulSet ordinals and scale-down order, and SIGTERM
before SIGKILL on deletion.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.e2e_bed import Bed, eventually
from harness.kubelet.containers import HOST_PATHS, hides_host_path
from harness.kubelet.probes import is_ready

NS = "kubelet"

# Serves what the pod sees on 127.0.0.1:8080 (its own address), and logs SIGTERM before exiting.
SERVER = """
import http.server, json, os, signal, socket, sys, time
def term(*_):
    open(os.environ["TERM_LOG"], "a").write(socket.gethostname() + "\\n")
    time.sleep(float(os.environ.get("TERM_SLEEP", "0")))
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({
            "secret": os.environ.get("PASSWORD"),
            "pod": os.environ.get("POD"),
            "config": open("/config/greeting").read(),
            "hostname": socket.gethostname(),
            "hosts": open("/etc/hosts").read(),
        }).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", 8080), H).serve_forever()
"""


def container(term_log: Path, term_sleep: float = 0) -> dict[str, Any]:
    return {
        "name": "server",
        "image": "localhost/test:dev",
        "command": ["python", "-c", SERVER],
        "env": [
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "TERM_LOG", "value": str(term_log)},
            {"name": "TERM_SLEEP", "value": str(term_sleep)},
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
        "volumeMounts": [{"name": "config", "mountPath": "/config"}],
    }


def workload(kind: str, name: str, replicas: int, spec: dict[str, Any], grace: int = 30) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            **({"serviceName": name} if kind == "StatefulSet" else {}),
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": grace,
                    "containers": [spec],
                    "volumes": [{"name": "config", "configMap": {"name": "greeting"}}],
                },
            },
        },
    }


def ask(pod: dict[str, Any]) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/", timeout=5) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


@pytest.fixture(scope="module")
def cluster(bed: Bed) -> Iterator[Bed]:
    bed.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    bed.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "greeting", "namespace": NS},
            "data": {"greeting": "hello"},
        }
    )
    secret = {"password": base64.b64encode(b"s3cret").decode()}
    bed.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": NS}, "data": secret}
    )
    yield bed
    bed.delete(f"/api/v1/namespaces/{NS}")


def test_a_pod_sees_its_env_volumes_address_and_names(cluster: Bed, records: Path) -> None:
    cluster.apply(workload("Deployment", "web", 1, container(records / "term.log")))
    pod = eventually(lambda: [p for p in cluster.pods(NS, {"app": "web"}) if is_ready(p)], 30, "web ready")[0]
    answer = ask(pod)
    assert answer["secret"] == "s3cret" and answer["pod"] == answer["hostname"] == pod["metadata"]["name"]
    assert answer["config"] == "hello"
    assert pod["status"]["podIP"].startswith(f"127.{cluster.block}.")
    assert f"{pod['status']['podIP']} {pod['metadata']['name']}" in answer["hosts"]
    cluster.patch(f"/api/v1/namespaces/{NS}/configmaps/greeting", {"data": {"greeting": "changed"}})
    eventually(lambda: ask(pod)["config"] == "changed", 10, "the ConfigMap file refreshed in the running pod")


def test_statefulset_ordinals_and_graceful_deletion(cluster: Bed, records: Path) -> None:
    term_log = records / "sts-term.log"
    cluster.apply(workload("StatefulSet", "db", 3, container(term_log, term_sleep=30), grace=2))
    pods = eventually(
        lambda: len(p := [p for p in cluster.pods(NS, {"app": "db"}) if is_ready(p)]) == 3 and p,
        30,
        "3 ready",
    )
    assert sorted(p["metadata"]["name"] for p in pods) == ["db-0", "db-1", "db-2"]
    assert f"db-1.db.{NS}.svc" in ask(pods[0])["hosts"]
    cluster.patch(f"/apis/apps/v1/namespaces/{NS}/statefulsets/db", {"spec": {"replicas": 1}})
    started = time.monotonic()
    eventually(
        lambda: [p["metadata"]["name"] for p in cluster.pods(NS, {"app": "db"})] == ["db-0"],
        30,
        "down to db-0",
    )
    # Highest ordinal first; each got SIGTERM, and SIGKILL only after its 2 s grace period.
    assert term_log.read_text().split() == ["db-2", "db-1"]
    assert time.monotonic() - started >= 2
    sts = cluster.get(f"/apis/apps/v1/namespaces/{NS}/statefulsets/db")
    eventually(
        lambda: cluster.get(f"/apis/apps/v1/namespaces/{NS}/statefulsets/db")["status"]["replicas"] == 1,
        10,
        "status",
    )
    assert sts["status"]["observedGeneration"] == sts["metadata"]["generation"]


def test_a_deployment_rolls_one_surge_pod_at_a_time(cluster: Bed) -> None:
    path = f"/apis/apps/v1/namespaces/{NS}/deployments/web"
    before = {p["metadata"]["name"] for p in cluster.pods(NS, {"app": "web"})}
    cluster.patch(path, {"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}})
    seen: set[int] = set()

    def rolled() -> bool:
        pods = cluster.pods(NS, {"app": "web"})
        seen.add(len(pods))
        names = {p["metadata"]["name"] for p in pods}
        return len(pods) == 1 and not names & before and is_ready(pods[0])

    eventually(rolled, 30, "rolled to a new pod")
    assert max(seen) <= 2  # maxSurge 1: never more than one extra pod
    eventually(
        lambda: (
            (s := cluster.get(path)["status"])["updatedReplicas"] == 1 == s["readyReplicas"] == s["replicas"]
        ),
        10,
        "the Deployment's status",
    )
    assert cluster.get(path)["status"]["observedGeneration"] == cluster.get(path)["metadata"]["generation"]


def test_no_volume_hides_the_checkout_or_the_interpreter() -> None:
    """A checkout under /tmp (a CI machine's) and the chart's /tmp emptyDir: the volume is left
    out, or the container would not find its executable."""
    for path in HOST_PATHS:
        assert hides_host_path(str(path))
        assert hides_host_path(str(path.parent))
    assert not hides_host_path("/etc/queue-sidecar/secrets/0")
    assert not hides_host_path("/var/lib/beanstalkd")
