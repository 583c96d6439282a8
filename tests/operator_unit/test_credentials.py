"""How the operator reaches the API server without the ``kubernetes`` library, and when it needs it.

The 401-then-login-again test uses a small stdlib HTTP server that checks a bearer token: the API
emulator accepts any token, so a rotated service account token cannot be shown with it.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest

from queue_operator import credentials
from queue_operator.kube import Kube

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {{server: "{server}"}}
users:
- name: u
  user: {user}
contexts:
- name: c
  context: {{cluster: c, user: u}}
current-context: c
"""


def kubeconfig(tmp_path: Path, user: str, server: str = "http://127.0.0.1:1") -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(server=server, user=user))
    return path


@pytest.mark.parametrize(
    ("user", "needed"),
    [
        ("{token: abc}", False),
        ("{username: a, password: b}", False),
        ("{client-certificate-data: Zm9v, client-key-data: YmFy}", False),
        ("{exec: {apiVersion: client.authentication.k8s.io/v1, command: aws}}", True),
        ("{auth-provider: {name: gcp}}", True),
    ],
)
def test_only_exec_plugins_and_auth_providers_need_the_kubernetes_library(
    tmp_path: Path, user: str, needed: bool
) -> None:
    path = kubeconfig(tmp_path, user)
    assert credentials.needs_kubernetes_library({"KUBECONFIG": str(path)}) is needed


def test_no_kubeconfig_at_all_falls_back_to_the_library(tmp_path: Path) -> None:
    assert credentials.needs_kubernetes_library({"KUBECONFIG": str(tmp_path / "missing")}) is True


def test_the_operator_loads_neither_the_kubernetes_library_nor_librdkafka(tmp_path: Path) -> None:
    """What ``queue-operator`` imports at start with a token kubeconfig (a fresh interpreter)."""
    script = (
        "import sys\n"
        "from queue_operator import credentials\n"
        "with credentials.kubernetes_library_hidden():\n"
        "    import queue_operator.main\n"
        "import queue_operator.handlers.kafkaqueue\n"
        "print(sorted(m for m in ('kubernetes', 'confluent_kafka') if m in sys.modules))\n"
        # Hidden only while kopf is imported: a later import (queuectl, an exec login) works.
        "import kubernetes.client\n"
        "print('later import works')\n"
    )
    env = {"KUBECONFIG": str(kubeconfig(tmp_path, "{token: abc}")), "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "later import works"]


class TokenServer(http.server.ThreadingHTTPServer):
    """Answers GET /api/v1/namespaces/x with 200 for ``Bearer <token>``, else 401."""

    token = "new"
    seen: list[str]


class Handler(http.server.BaseHTTPRequestHandler):
    server: TokenServer

    def do_GET(self) -> None:
        sent = self.headers.get("Authorization", "")
        self.server.seen.append(sent)
        ok = sent == f"Bearer {self.server.token}"
        body = json.dumps(
            {"kind": "Namespace", "metadata": {"name": "x"}} if ok else {"reason": "Unauthorized"}
        )
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    server = TokenServer(("127.0.0.1", 0), Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_rotated_token_is_read_again_after_a_401(token_server: TokenServer) -> None:
    tokens = iter(["old", "new"])
    server = f"http://127.0.0.1:{token_server.server_address[1]}"

    def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server, token=next(tokens))

    kube = Kube(credentials.HttpTransport(login), timeout=5)
    assert kube.read("v1", "Namespace", None, "x") == {"kind": "Namespace", "metadata": {"name": "x"}}
    assert token_server.seen == ["Bearer old", "Bearer new"]


def test_a_watch_stream_also_logs_in_again_after_a_401(token_server: TokenServer) -> None:
    tokens = iter(["old", "new"])
    server = f"http://127.0.0.1:{token_server.server_address[1]}"

    def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server, token=next(tokens))

    transport = credentials.HttpTransport(login)
    response = transport.stream("/api/v1/namespaces/x", [("watch", "true")], timeout=5)
    try:
        assert response.status == 200
        assert json.loads(response.read()) == {"kind": "Namespace", "metadata": {"name": "x"}}
    finally:
        response.release_conn()
    assert token_server.seen == ["Bearer old", "Bearer new"]
