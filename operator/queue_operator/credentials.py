"""How the operator reaches the API server, and whether it needs the ``kubernetes`` library for it.

The ``kubernetes`` client library costs about 35 MB of memory on import (every typed model), for
what the operator does with plain dicts over HTTP. In a pod (a service account token) and with a
kubeconfig holding a token, a client certificate or a password, the operator uses kopf's own
login and :class:`HttpTransport` (urllib3). Only a kubeconfig whose user needs an ``exec`` plugin
or an ``auth-provider`` (cloud logins on a workstation) loads the ``kubernetes`` library for it.

This module is imported before kopf, so it imports nothing heavy at the top.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import json
import os
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import kopf
    import urllib3

SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def needs_kubernetes_library(environ: dict[str, str] | None = None) -> bool:
    """True when the credentials at hand need the ``kubernetes`` library (exec plugins, auth
    providers); False in a pod and for kubeconfigs with a token, a certificate or a password."""
    environ = dict(os.environ) if environ is None else environ
    if os.path.exists(SERVICE_ACCOUNT_TOKEN) and environ.get("KUBERNETES_SERVICE_HOST"):
        return False
    user = _kubeconfig_user(environ)
    return user is None or "exec" in user or "auth-provider" in user


def _kubeconfig_user(environ: dict[str, str]) -> dict[str, Any] | None:
    """The current context's user of the (first) kubeconfig, or None if there is none to read."""
    import yaml  # noqa: PLC0415 - light, and only needed here

    paths = [p for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p] or ["~/.kube/config"]
    try:
        config = yaml.safe_load(Path(os.path.expanduser(paths[0])).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    contexts = {c.get("name"): c.get("context") or {} for c in config.get("contexts") or []}
    context = contexts.get(config.get("current-context")) or {}
    users = {u.get("name"): u.get("user") or {} for u in config.get("users") or []}
    user = users.get(context.get("user"))
    return user if isinstance(user, dict) else None


class _Hidden(importlib.abc.MetaPathFinder):
    """Makes ``import kubernetes`` fail, so kopf skips its optional support for that library."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> None:
        if fullname == "kubernetes" or fullname.startswith("kubernetes."):
            raise ImportError(
                f"{fullname} is not loaded by the queue-operator (see queue_operator.credentials)"
            )


@contextlib.contextmanager
def kubernetes_library_hidden() -> Iterator[None]:
    """While importing kopf: it would import the ``kubernetes`` library just to recognise its
    model classes, which the operator never hands it. Later imports of it work again."""
    if "kubernetes" in sys.modules:  # already loaded (an embedding process): nothing to save
        yield
        return
    finder = _Hidden()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """kopf's own login: the pod's service account, else the kubeconfig."""
    import kopf  # noqa: PLC0415 - imported by then; keeps this module light before

    info = kopf.login_with_service_account(settings=settings)
    if info is None:
        info = kopf.login_with_kubeconfig(settings=settings)
    return info


class HttpTransport:
    """Requests to the API server over one urllib3 pool, with kopf's :class:`kopf.ConnectionInfo`.

    A 401 logs in again once (a service account token is rotated in place) and retries.
    """

    def __init__(self, login: Callable[[], kopf.ConnectionInfo | None]) -> None:
        self._login = login
        self._lock = threading.Lock()
        self._pool: urllib3.PoolManager | None = None
        self._server = ""
        self._headers: dict[str, str] = {}
        self._connect()

    def _connect(self) -> None:
        import urllib3  # noqa: PLC0415

        info = self._login()
        if info is None:
            raise RuntimeError("no Kubernetes credentials: not in a pod, and no kubeconfig (KUBECONFIG)")
        secure = info.server.startswith("https:")
        pool = urllib3.PoolManager(maxsize=16, ssl_context=info.as_ssl_context() if secure else None)
        with self._lock:
            self._pool, self._server, self._headers = pool, info.server.rstrip("/"), info.as_http_headers()

    def request(
        self,
        method: str,
        path: str,
        body: Any,
        *,
        content_type: str,
        query: list[tuple[str, str]] | None,
        timeout: float,
    ) -> tuple[int, bytes]:
        import urllib3  # noqa: PLC0415

        response = self._send(
            method,
            path + ("?" + urllib.parse.urlencode(query) if query else ""),
            None if body is None else json.dumps(body).encode(),
            {"Content-Type": content_type, "Accept": "application/json"},
            urllib3.Timeout(total=timeout),
            preload_content=True,
        )
        return int(response.status), bytes(response.data)

    def stream(self, path: str, query: list[tuple[str, str]], *, timeout: float) -> urllib3.BaseHTTPResponse:
        """A GET whose body is read as it arrives (a watch); the caller closes the response."""
        import urllib3  # noqa: PLC0415

        return self._send(
            "GET",
            path + "?" + urllib.parse.urlencode(query),
            None,
            {"Accept": "application/json"},
            urllib3.Timeout(connect=timeout, read=timeout),
            preload_content=False,
        )

    def _send(
        self,
        method: str,
        url_tail: str,
        payload: bytes | None,
        extra_headers: dict[str, str],
        timeout: urllib3.Timeout,
        *,
        preload_content: bool,
    ) -> urllib3.BaseHTTPResponse:
        """Send once; on a 401 log in again and send once more."""
        import urllib3  # noqa: PLC0415

        for fresh_login in (False, True):
            if fresh_login:
                self._connect()
            with self._lock:
                pool, server, headers = self._pool, self._server, dict(self._headers)
            assert pool is not None
            headers.update(extra_headers)
            response = pool.request(
                method,
                server + url_tail,
                body=payload,
                headers=headers,
                timeout=timeout,
                # A pooled connection the server closed meanwhile: connecting again is always
                # safe; resending after the request went out is not (a POST may have been applied).
                retries=urllib3.Retry(total=2, connect=2, read=0, status=0, redirect=False),
                preload_content=preload_content,
            )
            if response.status != 401 or fresh_login:
                break
            if not preload_content:
                response.release_conn()
        return response
