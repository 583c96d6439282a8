"""The one thin, idempotent layer between the operator and the Kubernetes API.

Create-or-patch (409 on create means "exists": merge-patch it to the desired state), delete
(404 means "already gone"), read (404 means ``None``) and Secret values. Objects are plain
dicts in and out, over :class:`queue_operator.credentials.HttpTransport` (urllib3 with kopf's
login), or, for kubeconfigs that need an exec plugin, through the ``kubernetes`` client's
configuration, auth and connection pool, skipping its typed models.
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from queue_operator import credentials

log = logging.getLogger("queue_operator.kube")

MERGE_PATCH = "application/merge-patch+json"

# apiVersion, kind -> plural: the kinds this operator reads or writes.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "Namespace"): "namespaces",
    ("v1", "Service"): "services",
    ("v1", "Secret"): "secrets",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("v1", "ConfigMap"): "configmaps",
    ("apps/v1", "StatefulSet"): "statefulsets",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("queue-operator.dev/v1alpha1", "DelayQueue"): "delayqueues",
    ("queue-operator.dev/v1alpha1", "KafkaQueue"): "kafkaqueues",
}


class KubeError(Exception):
    """The API answered an error other than the ones this layer absorbs."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


SECRET_LABEL = "queue-operator.dev/secret"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def own_namespace() -> str:
    """The namespace this process runs in (its service account's), else ``default``."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as handle:
            return handle.read().strip() or "default"
    except OSError:
        return "default"


class SecretMissing(Exception):
    """A referenced Secret or key does not exist (the message names it, never its value)."""


class SecretNotAllowed(SecretMissing):
    """A referenced Secret lacks the label that lets the operator use it."""


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural = PLURALS.get((api_version, kind))
    if plural is None:
        raise ValueError(f"queue_operator.kube does not know {kind} ({api_version})")
    root = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
    path = f"{root}/namespaces/{namespace}/{plural}" if namespace else f"{root}/{plural}"
    return f"{path}/{name}" if name else path


class Kube:
    """Idempotent object operations over an :class:`HttpTransport` or a ``kubernetes`` ApiClient."""

    def __init__(self, api_client: Any, timeout: float = 30.0) -> None:
        self._client = api_client
        self.timeout = timeout  # seconds, per request: nothing waits on a hung API server for good

    @classmethod
    def from_environment(cls, timeout: float = 30.0) -> Kube:
        """In-cluster service account credentials, else the kubeconfig (``KUBECONFIG``)."""
        if not credentials.needs_kubernetes_library():
            import kopf  # noqa: PLC0415

            settings = kopf.OperatorSettings()
            return cls(credentials.HttpTransport(lambda: credentials.login(settings)), timeout)
        from kubernetes import client, config  # noqa: PLC0415 - heavy import, only when needed

        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        return cls(client.ApiClient(), timeout)

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        if isinstance(self._client, credentials.HttpTransport):
            status, raw = self._client.request(
                method, path, body, content_type=content_type, query=query, timeout=self.timeout
            )
        else:
            serialized = self._client.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or None,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._client.call_api(*serialized, _request_timeout=self.timeout)
            status, raw = int(response.status), response.read()
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"message": raw[:200].decode(errors="replace")}
        return status, payload if isinstance(payload, dict) else {}

    def _checked(self, status: int, payload: dict[str, Any]) -> dict[str, Any]:
        if status >= 400:
            raise KubeError(status, str(payload.get("reason", "")), str(payload.get("message", "")))
        return payload

    def read(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        status, payload = self._request("GET", object_path(api_version, kind, namespace, name))
        return None if status == 404 else self._checked(status, payload)

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create the object, or merge-patch the existing one to it (409 on create = exists)."""
        meta = obj["metadata"]
        api_version, kind, namespace = obj["apiVersion"], obj["kind"], meta.get("namespace")
        status, payload = self._request("POST", object_path(api_version, kind, namespace), dict(obj))
        if status != 409:
            created = self._checked(status, payload)
            log.debug("created %s %s/%s", kind, namespace, meta["name"])
            return created
        status, payload = self._request(
            "PATCH", object_path(api_version, kind, namespace, meta["name"]), dict(obj), MERGE_PATCH
        )
        return self._checked(status, payload)

    def list(
        self, api_version: str, kind: str, namespace: str | None, *, page: int = 500
    ) -> Iterator[dict[str, Any]]:
        """Every object of ``kind`` in ``namespace`` (None: all), fetched ``page`` at a time."""
        token = ""
        while True:
            query = [("limit", str(page))] + ([("continue", token)] if token else [])
            payload = self._checked(
                *self._request("GET", object_path(api_version, kind, namespace), query=query)
            )
            yield from payload.get("items") or []
            token = str((payload.get("metadata") or {}).get("continue") or "")
            if not token:
                return

    def list_with_version(
        self, api_version: str, kind: str, namespace: str | None, *, page: int = 500
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        """Every object of ``kind`` and the list's resourceVersion (to watch from)."""
        items: builtins.list[dict[str, Any]] = []
        token, version = "", ""
        while True:
            query = [("limit", str(page))] + ([("continue", token)] if token else [])
            payload = self._checked(
                *self._request("GET", object_path(api_version, kind, namespace), query=query)
            )
            items.extend(payload.get("items") or [])
            meta = payload.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            token = str(meta.get("continue") or "")
            if not token:
                return items, version

    def watch(
        self, api_version: str, kind: str, namespace: str | None, resource_version: str, timeout: float
    ) -> Iterator[dict[str, Any]]:
        """The watch events (``{"type": ..., "object": ...}``) after ``resource_version``, as they
        come, for about ``timeout`` seconds (the server ends the watch then). A :class:`KubeError`
        with status 410 means the version is too old: list again."""
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(int(timeout))),
        ]
        path = object_path(api_version, kind, namespace)
        read_timeout = timeout + 10  # the server ends the watch; this only catches a silent one
        if isinstance(self._client, credentials.HttpTransport):
            response: Any = self._client.stream(path, query, timeout=read_timeout)
        else:
            serialized = self._client.param_serialize(
                method="GET",
                resource_path=path,
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            response = self._client.call_api(*serialized, _request_timeout=read_timeout).response
        try:
            if response.status >= 400:
                payload = json.loads(response.read() or b"{}")
                raise KubeError(
                    response.status, str(payload.get("reason", "")), str(payload.get("message", ""))
                )
            pending = b""
            while chunk := response.read1(65536):
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if line.strip():
                        event = orjson.loads(line)  # a few times faster: every queue change
                        if event.get("type") == "ERROR":
                            status = event.get("object") or {}
                            raise KubeError(
                                int(status.get("code") or 500),
                                str(status.get("reason", "")),
                                str(status.get("message", "")),
                            )
                        yield event
        finally:
            response.close()  # never back to the pool: a watch ended early leaves data unread

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create; a 409 (it exists) is a :class:`KubeError` like any other refusal."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        return self._checked(*self._request("POST", path, dict(obj)))

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT the whole object; with ``metadata.resourceVersion`` a concurrent change is a 409."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        return self._checked(*self._request("PUT", path, dict(obj)))

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete; ``False`` when it was already gone (404)."""
        status, payload = self._request("DELETE", object_path(api_version, kind, namespace, name))
        if status == 404:
            return False
        self._checked(status, payload)
        return True

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status_patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        path = object_path(api_version, kind, namespace, name) + "/status"
        status, payload = self._request("PATCH", path, {"status": dict(status_patch)}, MERGE_PATCH)
        return self._checked(status, payload)

    def secret_value(self, namespace: str, name: str, key: str) -> str:
        """One decoded value of a Secret in ``namespace`` (the resource's own), if it may be used.

        Only Secrets labelled ``queue-operator.dev/secret: "true"`` are used: whoever may create a
        queue must not be able to make the operator read (and send to brokers of their choosing)
        any other Secret of the namespace. :class:`SecretMissing` names what is absent,
        :class:`SecretNotAllowed` the label to add.
        """
        secret = self.read("v1", "Secret", namespace, name)
        if secret is None:
            raise SecretMissing(f"Secret {namespace}/{name} does not exist")
        labels = (secret.get("metadata") or {}).get("labels") or {}
        if labels.get(SECRET_LABEL) != "true":
            raise SecretNotAllowed(
                f'Secret {namespace}/{name} is not labelled {SECRET_LABEL}: "true"; the operator uses only '
                f"Secrets so labelled: kubectl label secret -n {namespace} {name} {SECRET_LABEL}=true"
            )
        data = secret.get("data") or {}
        if key not in data:
            raise SecretMissing(f"Secret {namespace}/{name} has no key {key!r}")
        return base64.b64decode(data[key]).decode()
