"""The end-to-end bed: API emulator, kubelet stand-in, Kafka broker and the Helm-rendered install.

``Bed`` starts the Kubernetes API emulator and a tansu broker on addresses of their own
(127.<block>.0.1 and .2: pods' 127.0.0.1 is their own, see harness/kubelet/podnet.c) and the
kubelet stand-in (``harness.kubelet``, in a process of its own), renders the chart with the real
Helm and applies what it rendered. Used by tests/e2e and ``scripts/demo.sh --k8s``; docs/e2e.md
describes it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import chart
from harness.kube import KubeApi
from harness.kubelet.api import Api, NotFound
from harness.servers import Tansu

TESTS_DIR = Path(__file__).resolve().parents[1]
RELEASE_NAMESPACE = "queue-system"
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "CustomResourceDefinition",
}
API_PATHS = {"v1": "/api/v1"}
# The operator's timing, test-sized (the chart keeps production values; only these flags change).
FAST_OPERATOR_ARGS = [
    "--reconcile-interval=2",
    "--retry-delay=0.5",
    "--retry-delay-max=2",
    "--kafka-timeout=2",
    # A leaving DelayQueue node's jobs move this long after it is marked draining: the stand-in's
    # ConfigMap refresh (0.3 s) plus the sidecars' 2 s poll of the nodes file, and some slack.
    "--drain-grace=6",
]
KEEP_ENV = "QUEUE_OPERATOR_E2E_KEEP"
CHART_SETS = ("leaderElection.leaseSeconds=4",)


def plural(kind: str) -> str:
    lower = kind.lower()
    return lower[:-1] + "ies" if lower.endswith("y") else lower + "s"


def object_path(obj: dict[str, Any], named: bool = True) -> str:
    api_version, kind, meta = obj["apiVersion"], obj["kind"], obj["metadata"]
    path = API_PATHS.get(api_version, f"/apis/{api_version}")
    if kind not in CLUSTER_SCOPED:
        path += f"/namespaces/{meta.get('namespace', 'default')}"
    path += f"/{plural(kind)}"
    return f"{path}/{meta['name']}" if named else path


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (AssertionError, KeyError, IndexError, OSError, NotFound, RuntimeError) as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what} (last: {last!r})")


class Bed:
    """Everything outside the chart: start, install, uninstall, stop."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.block = random.randint(100, 250)
        # Not under /tmp: pods mount their emptyDir over /tmp, and must still see these files.
        self.root = Path(tempfile.mkdtemp(prefix="qo-e2e-", dir="/var/tmp"))
        self.kube = KubeApi(workdir / "kube", host=f"127.{self.block}.0.1")
        self.broker = Tansu(workdir / "tansu", host=f"127.{self.block}.0.2")
        self.kubelet: subprocess.Popen[bytes] | None = None
        self.api = Api("http://unset")
        self.rendered: list[dict[str, Any]] = []

    @property
    def kubelet_log(self) -> Path:
        return self.workdir / "kubelet.log"

    def start(self) -> None:
        self.kube.start()
        self.api = Api(self.kube.url)
        self.broker.start()
        kubeconfig = self.root / "kubeconfig.yaml"
        shutil.copy(self.kube.kubeconfig_path, kubeconfig)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])),
        }
        with self.kubelet_log.open("ab") as log:
            self.kubelet = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "harness.kubelet",
                    "--api",
                    self.kube.url,
                    "--kubeconfig",
                    str(kubeconfig),
                    "--root",
                    str(self.root),
                    "--block",
                    str(self.block),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.kubelet is not None and self.kubelet.poll() is None:
            self.kubelet.send_signal(signal.SIGTERM)
            try:
                self.kubelet.wait(60)
            except subprocess.TimeoutExpired:
                self.kubelet.kill()  # its pods die with it (setpriv --pdeathsig)
                self.kubelet.wait()
        self.broker.stop()
        self.kube.stop()
        if os.environ.get(KEEP_ENV):  # pod logs and volumes for a post-mortem
            sys.stderr.write(f"e2e bed kept in {self.root}\n")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------ objects

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create, or replace when it exists (as ``kubectl apply`` ends up doing)."""
        try:
            created: dict[str, Any] = self.api.call("POST", object_path(obj, named=False), obj)
            return created
        except RuntimeError as exc:
            if " 409 " not in str(exc):
                raise
        current = self.api.call("GET", object_path(obj))
        replacement = {
            **obj,
            "metadata": {**obj["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
        }
        replaced: dict[str, Any] = self.api.call("PUT", object_path(obj), replacement)
        return replaced

    def get(self, obj_or_path: dict[str, Any] | str) -> dict[str, Any]:
        path = obj_or_path if isinstance(obj_or_path, str) else object_path(obj_or_path)
        found: dict[str, Any] = self.api.call("GET", path)
        return found

    def patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self.api.call("PATCH", path, patch, "application/merge-patch+json")
        return patched

    def delete(self, obj_or_path: dict[str, Any] | str) -> None:
        path = obj_or_path if isinstance(obj_or_path, str) else object_path(obj_or_path)
        with contextlib.suppress(NotFound):
            self.api.call("DELETE", path)

    def exists(self, obj_or_path: dict[str, Any] | str) -> bool:
        try:
            self.get(obj_or_path)
        except NotFound:
            return False
        return True

    def pods(self, namespace: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.api.call("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
        labels = labels or {}
        return [
            p
            for p in items
            if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    # ------------------------------------------------------------ the chart

    def install(self, *sets: str) -> list[dict[str, Any]]:
        """``helm template`` the chart and apply what it rendered: CRDs first, then the rest."""
        self.rendered = chart.render(*CHART_SETS, *sets, namespace=RELEASE_NAMESPACE)
        for obj in self.rendered:
            if (
                obj["kind"] == "Deployment"
                and obj["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
                == "controller"
            ):
                obj["spec"]["template"]["spec"]["containers"][0]["args"] += FAST_OPERATOR_ARGS
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RELEASE_NAMESPACE}})
        crds = [o for o in self.rendered if o["kind"] == "CustomResourceDefinition"]
        for obj in crds:
            self.apply(obj)
        for crd in crds:
            path = f"/apis/{crd['spec']['group']}/v1alpha1/{crd['spec']['names']['plural']}"
            eventually(functools.partial(self.api.call, "GET", path), 10, f"{path} served")
        for obj in self.rendered:
            if obj["kind"] != "CustomResourceDefinition":
                self.apply(obj)
        return self.rendered

    def uninstall(self) -> None:
        """What ``helm uninstall`` does: delete every rendered object but the CRDs (Helm keeps them)."""
        for obj in reversed(self.rendered):
            if obj["kind"] != "CustomResourceDefinition":
                self.delete(obj)
        self.delete(f"/api/v1/namespaces/{RELEASE_NAMESPACE}")
