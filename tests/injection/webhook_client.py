"""The webhook as an API server calls it: AdmissionReview v1 over HTTPS, and the operator serving it."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from injection.certs import write_certs

from harness.kube import KubeApi
from harness.kube_operator import OperatorProcess, eventually
from harness.servers import free_port

ANNOTATIONS = {
    "queue-operator.dev/inject": "true",
    "queue-operator.dev/queues": "delayqueue/reminders,kafkaqueue/orders",
    "queue-operator.dev/app-port": "8080",
}


IMAGE = "registry.example/queue-operator:e2e"


class Webhook:
    def __init__(self, url: str, ca: Path) -> None:
        self.url = url
        self.context = ssl.create_default_context(cafile=str(ca))

    def post(self, payload: bytes) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url, data=payload, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def review(self, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        uid = str(uuid.uuid4())
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": obj,
                "oldObject": None,
                "dryRun": False,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            },
        }
        status, answer = self.post(json.dumps(review).encode())
        assert status == 200, answer
        assert answer["response"]["uid"] == uid
        result: dict[str, Any] = answer["response"]
        return result


def start_webhook(
    kube: KubeApi, namespace: str, workdir: Path, role: str = "all", extra: Sequence[str] = ()
) -> tuple[Webhook, OperatorProcess]:
    """The operator process watching ``namespace``, serving the webhook over HTTPS once it answers."""
    ca, cert, key = write_certs(workdir)
    port = free_port()
    process = OperatorProcess(kube, namespace, workdir)
    process.extra_args = [
        *("--webhook-port", str(port), "--webhook-cert", str(cert), "--webhook-key", str(key)),
        *("--sidecar-image", IMAGE),
        *("--role", role),
        *extra,
    ]
    process.start()
    hook = Webhook(f"https://127.0.0.1:{port}/inject-sidecar", ca)

    def serving() -> bool:
        assert process.running, process.log()
        try:
            status, _ = hook.post(b"{}")
        except OSError:
            return False
        return status == 400

    eventually(serving, timeout=30, what="the webhook answers")
    return hook, process
