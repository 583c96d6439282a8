"""What the e2e tests do as the user and as a person watching: publish through the app, read records."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

from e2e.manifests import NAMESPACE

from harness.e2e_bed import Bed
from harness.kubelet.probes import is_ready


def ready_pods(bed: Bed, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
    return [
        p for p in bed.pods(namespace, labels) if is_ready(p) and not p["metadata"].get("deletionTimestamp")
    ]


def app_ip(bed: Bed) -> str:
    pods = ready_pods(bed, NAMESPACE, {"app": "app"})
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return str(pods[0]["status"]["podIP"])


def publish(bed: Bed, kind: str, queue: str, body: str, query: str = "") -> dict[str, Any]:
    """Ask the app to publish ``body``: it goes through its sidecar at $QUEUE_PUBLISH_URL."""
    url = f"http://{app_ip(bed)}:8080/publish/{kind}/{queue}{'?' + query if query else ''}"
    request = urllib.request.Request(url, data=body.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201, response.status
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def received(records: Path) -> list[dict[str, Any]]:
    lines = [line for path in sorted(records.glob("*.jsonl")) for line in path.read_text().splitlines()]
    return [json.loads(line) for line in lines if line.strip()]


def condition(obj: dict[str, Any], kind: str = "Ready") -> dict[str, Any]:
    conditions: list[dict[str, Any]] = (obj.get("status") or {}).get("conditions") or []
    found = next((c for c in conditions if c["type"] == kind), {})
    return dict(found)


def kill_process(pod_ip: str, needle: str) -> int:
    """SIGKILL the process of the pod at ``pod_ip`` whose command line has ``needle`` (a crash)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if f"QO_POD_IP={pod_ip}".encode() in environ and needle.encode() in cmdline:
            os.kill(int(proc.name), signal.SIGKILL)
            return int(proc.name)
    raise AssertionError(f"no process with {needle!r} in the pod at {pod_ip}")
