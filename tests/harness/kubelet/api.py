"""The few JSON calls the kubelet makes to the API, over plain HTTP (the emulator needs no auth)."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from typing import Any

JsonObj = dict[str, Any]

PATHS = {
    "pods": "/api/v1",
    "services": "/api/v1",
    "secrets": "/api/v1",
    "configmaps": "/api/v1",
    "namespaces": "/api/v1",
    "events": "/api/v1",
    "persistentvolumeclaims": "/api/v1",
    "deployments": "/apis/apps/v1",
    "statefulsets": "/apis/apps/v1",
}


class NotFound(Exception):
    pass


class Api:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _path(self, plural: str, namespace: str | None, name: str | None, sub: str | None) -> str:
        path = PATHS[plural]
        if namespace is not None:
            path += f"/namespaces/{namespace}"
        path += f"/{plural}"
        if name is not None:
            path += f"/{name}"
        if sub is not None:
            path += f"/{sub}"
        return path

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise NotFound(path) from None
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"{method} {path}: {exc.code} {detail}") from None

    def list(self, plural: str) -> list[JsonObj]:
        items: list[JsonObj] = self.call("GET", self._path(plural, None, None, None))["items"]
        return items

    def create(self, plural: str, namespace: str, obj: JsonObj) -> JsonObj:
        created: JsonObj = self.call("POST", self._path(plural, namespace, None, None), obj)
        return created

    def patch_status(self, plural: str, namespace: str, name: str, status: JsonObj) -> None:
        path = self._path(plural, namespace, name, "status")
        self.call("PATCH", path, {"status": status}, "application/merge-patch+json")

    def delete(self, plural: str, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFound):  # gone already: what a delete wants
            self.call("DELETE", self._path(plural, namespace, name, None))
