"""A Kubernetes API for tests: the emulator as a real process, or a real cluster.

``KubeApi`` starts ``harness.kube_emulator`` (kmock plus the API semantics it lacks, see that
module) on a free loopback port and writes a kubeconfig pointing at it, so kopf, the
operator and the ``kubernetes`` client all talk to it over real HTTP exactly as they would
to a cluster. ``KubeApi.external(path)`` wraps an existing kubeconfig instead (kind, k3d, a
real cluster): the fixtures use it when ``QUEUE_OPERATOR_TEST_KUBECONFIG`` is set, so the same
tests run against a real API server. Tests must then keep to their own namespaces.

The emulator keeps everything in memory: a restart starts empty. It has no controllers, so a
test simulating ready pods patches a StatefulSet's ``status`` itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from harness.servers import ManagedProcess

TESTS_DIR = Path(__file__).resolve().parents[1]
KUBECONFIG_ENV = "QUEUE_OPERATOR_TEST_KUBECONFIG"

KUBECONFIG_TEMPLATE = """\
apiVersion: v1
kind: Config
clusters:
- name: emulator
  cluster: {{server: "{url}"}}
users:
- name: tester
  user: {{token: not-a-secret-emulator-token}}
contexts:
- name: emulator
  context: {{cluster: emulator, user: tester, namespace: default}}
current-context: emulator
"""


class KubeApi(ManagedProcess):
    """The Kubernetes API emulator process; ``.url`` and ``.kubeconfig_path`` point at it."""

    name = "kube-emulator"

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        kubeconfig: Path | None = None,
        host: str | None = None,
    ) -> None:
        super().__init__(workdir, port, host=host)
        self._external = kubeconfig
        self.kubeconfig_path = kubeconfig or workdir / "kubeconfig.yaml"

    @classmethod
    def external(cls, kubeconfig: Path, workdir: Path) -> KubeApi:
        """A real cluster behind ``kubeconfig``: start/stop do nothing."""
        return cls(workdir, kubeconfig=kubeconfig)

    @property
    def is_emulator(self) -> bool:
        return self._external is None

    @property
    def url(self) -> str:
        if self._external is not None:
            return str(self.client().configuration.host)
        return f"http://{self.host}:{self.port}"

    def argv(self) -> Sequence[str]:
        return [sys.executable, "-m", "harness.kube_emulator", "--host", self.host, "--port", str(self.port)]

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
        return env

    def start(self, timeout: float = 30.0) -> None:
        if self._external is None:
            super().start(timeout)

    def stop(self) -> None:
        if self._external is None:
            super().stop()

    def kill(self) -> None:
        if self._external is None:
            super().kill()

    def after_start(self) -> None:
        self.kubeconfig_path.write_text(KUBECONFIG_TEMPLATE.format(url=self.url))

    # ------------------------------------------------------------ client helpers

    def client(self) -> Any:
        """A fresh ``kubernetes.client.ApiClient`` for this API."""
        return _kubernetes().config.new_client_from_config(config_file=str(self.kubeconfig_path))

    def create_namespace(self, name: str) -> None:
        client = _kubernetes().client
        with self.client() as api:
            try:
                client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
            except client.ApiException as exc:
                if exc.status != 409:
                    raise

    def delete_namespace(self, name: str) -> None:
        client = _kubernetes().client
        with self.client() as api, contextlib.suppress(client.ApiException):
            client.CoreV1Api(api).delete_namespace(name)

    def apply_crds(self, paths: Iterable[Path], timeout: float = 15.0) -> list[dict[str, Any]]:
        """Create (or replace) every CRD in these YAML files and wait until each is served."""
        client = _kubernetes().client
        crds = [
            doc
            for path in paths
            for doc in yaml.safe_load_all(Path(path).read_text())
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
        ]
        with self.client() as api:
            extensions = client.ApiextensionsV1Api(api)
            for crd in crds:
                try:
                    extensions.create_custom_resource_definition(crd)
                except client.ApiException as exc:
                    if exc.status != 409:
                        raise
                    current = extensions.read_custom_resource_definition(crd["metadata"]["name"])
                    replacement = {
                        **crd,
                        "metadata": {**crd["metadata"], "resourceVersion": current.metadata.resource_version},
                    }
                    extensions.replace_custom_resource_definition(crd["metadata"]["name"], replacement)
            for crd in crds:
                self._wait_served(api, crd, timeout)
        return crds

    @staticmethod
    def _wait_served(api: Any, crd: dict[str, Any], timeout: float) -> None:
        """Discovery lists the CRD's plural in every served version (as kopf needs)."""
        client = _kubernetes().client
        spec = crd["spec"]
        deadline = time.monotonic() + timeout
        for version in (v["name"] for v in spec["versions"] if v.get("served", True)):
            while True:
                with contextlib.suppress(client.ApiException):
                    found = client.CustomObjectsApi(api).get_api_resources(spec["group"], version)
                    if any(r.name == spec["names"]["plural"] for r in found.resources):
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{spec['names']['plural']}.{spec['group']}/{version} not served")
                time.sleep(0.1)


def _kubernetes() -> Any:
    """The ``kubernetes`` package, imported only by tests that use it (and typed loosely)."""
    import kubernetes.config  # noqa: PLC0415

    return kubernetes


def kube_from_env(workdir: Path) -> KubeApi:
    """The emulator, or the real cluster named by ``QUEUE_OPERATOR_TEST_KUBECONFIG``."""
    path = os.environ.get(KUBECONFIG_ENV)
    if path:
        return KubeApi.external(Path(path), workdir)
    return KubeApi(workdir)


def load_yaml_docs(paths: Iterable[Path]) -> list[dict[str, Any]]:
    return [
        doc for path in paths for doc in yaml.safe_load_all(Path(path).read_text()) if isinstance(doc, dict)
    ]
