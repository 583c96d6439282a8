"""The queue-operator as a real process, and the calls its end-to-end tests make against the API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from harness.kube import KubeApi

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "queue-operator.dev", "v1alpha1"
OPERATOR = Path(sys.executable).parent / "queue-operator"


def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy (assertions and 404s count as 'not yet')."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, client.ApiException, KeyError, IndexError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what or check}; last: {last!r}")


def example(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((REPO / "examples" / name).read_text()) if doc]


class OperatorProcess:
    """``queue-operator`` watching one namespace, with test-sized timings."""

    def __init__(self, kube: KubeApi, namespace: str, workdir: Path) -> None:
        self.kube = kube
        self.namespace = namespace
        self.log_path = workdir / "operator.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.reconcile_interval = 1.0  # change before (re)start to take timers out of a test
        self.extra_args: list[str] = []
        self.all_namespaces = False  # watch the whole cluster instead of the test's namespace
        self.wrapper: list[str] = []  # runs the operator through this (e.g. a private /etc/hosts)

    def start(self) -> None:
        log = self.log_path.open("ab")
        argv = [
            str(OPERATOR),
            *(["--all-namespaces"] if self.all_namespaces else ["--namespace", self.namespace]),
            "--verbose",
            "--reconcile-interval",
            str(self.reconcile_interval),
            "--retry-delay",
            "0.5",
            "--retry-delay-max",
            "2",
            "--kafka-timeout",
            "2",
            "--watch-timeout",
            "30",
            *self.extra_args,
        ]
        env = {**os.environ, "KUBECONFIG": str(self.kube.kubeconfig_path)}
        self.proc = subprocess.Popen([*self.wrapper, *argv], stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a node failure or an OOM kill would: nothing is cleaned up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    """The test's namespace on the API, with the calls the tests make."""

    def __init__(self, kube: KubeApi, namespace: str, api: Any) -> None:
        self.kube = kube
        self.namespace = namespace
        self.api = api
        # Typed loosely: tests pass plain dicts, as the client accepts at run time.
        self.objects: Any = client.CustomObjectsApi(api)
        self.core: Any = client.CoreV1Api(api)
        self.apps: Any = client.AppsV1Api(api)
        self.policy: Any = client.PolicyV1Api(api)

    def apply(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            if doc["kind"] == "Secret":
                self.core.create_namespaced_secret(self.namespace, doc)
            else:
                self.create(doc)

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        plural = doc["kind"].lower() + "s"
        created: dict[str, Any] = self.objects.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, doc
        )
        return created

    def get(self, plural: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.objects.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name
        )
        return found

    def patch(self, plural: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self.objects.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name, patch
        )
        return patched

    def delete(self, plural: str, name: str) -> None:
        self.objects.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)

    def gone(self, plural: str, name: str) -> bool:
        try:
            self.get(plural, name)
        except client.ApiException as exc:
            return bool(exc.status == 404)
        return False

    def ready(self, plural: str, name: str) -> dict[str, Any]:
        """The Ready condition (empty until the operator wrote one)."""
        return self.condition(plural, name, "Ready")

    def condition(self, plural: str, name: str, kind: str) -> dict[str, Any]:
        """The condition of that type (empty until the operator wrote one)."""
        conditions = (self.get(plural, name).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), {})

    def events_text(self) -> str:
        return "\n".join(str(e.message) for e in self.core.list_namespaced_event(self.namespace).items)
