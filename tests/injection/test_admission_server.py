"""The admission HTTPS server on its own thread: connections kept alive as kube-apiserver reuses
them, no listening before it serves, bad requests answered 400, renewed certificates picked up."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from injection.certs import write_certs

from harness.kube_operator import eventually
from harness.servers import free_port
from queue_operator import admission_server
from queue_operator.admission_server import AdmissionServer, BadReview


async def echo(review: Any) -> dict[str, Any]:
    if not isinstance(review, dict) or "request" not in review:
        raise BadReview("expected an AdmissionReview with a request")
    uid = review["request"].get("uid", "")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": True},
    }


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path, Path]:
    return write_certs(tmp_path)


@pytest.fixture
def server(certs: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[AdmissionServer]:
    monkeypatch.setattr(admission_server, "CERT_CHECK_SECONDS", 0.2)
    _, cert, key = certs
    served = AdmissionServer(echo, port=free_port(), host="127.0.0.1", certfile=str(cert), keyfile=str(key))
    yield served
    served.stop()


def connection(port: int, ca: Path | None) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)


def post(conn: http.client.HTTPSConnection, body: bytes, path: str = "/inject-sidecar") -> tuple[int, bytes]:
    conn.request("POST", path, body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def review(uid: str) -> bytes:
    return json.dumps({"request": {"uid": uid}}).encode()


def test_refused_until_started_then_one_connection_serves_many(
    server: AdmissionServer, certs: tuple[Path, Path, Path]
) -> None:
    with pytest.raises(ConnectionRefusedError):  # the readiness probe's TCP connect fails until then
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    released = threading.Event()
    server.start(before=released.wait)  # e.g. the queue cache's first listing
    assert not server.wait_serving(0.3)
    released.set()
    assert server.wait_serving(5)

    conn = connection(server.port, certs[0])
    status, body = post(conn, review("a"))
    assert status == 200 and json.loads(body)["response"]["uid"] == "a"
    first = conn.sock
    for i in range(5):
        assert post(conn, review(str(i)))[0] == 200
    assert conn.sock is first  # kept alive: no new TLS handshake per admission
    conn.close()


def test_bad_requests_get_400_and_other_paths_404(
    server: AdmissionServer, certs: tuple[Path, Path, Path]
) -> None:
    server.start()
    assert server.wait_serving(5)
    conn = connection(server.port, certs[0])
    assert post(conn, b"not json")[0] == 400
    assert post(conn, b"[1]")[0] == 400
    assert post(conn, review("x"), path="/elsewhere")[0] == 404
    assert post(conn, review("y"))[0] == 200
    conn.close()


def test_a_renewed_certificate_is_served_without_dropping_connections(
    server: AdmissionServer, certs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    server.start()
    assert server.wait_serving(5)
    kept = connection(server.port, None)
    assert post(kept, review("before"))[0] == 200
    old = kept.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]

    (tmp_path / "renewed").mkdir()
    _, new_cert, new_key = write_certs(tmp_path / "renewed")
    shutil.copy(new_key, certs[2])
    shutil.copy(new_cert, certs[1])

    def served_cert() -> bytes | None:
        fresh = connection(server.port, None)
        post(fresh, review("probe"))
        der = fresh.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        fresh.close()
        return der if der != old else None

    assert eventually(served_cert, 10, "the renewed certificate served") == new_cert_der(new_cert)
    assert post(kept, review("after"))[0] == 200  # the open connection was not dropped
    kept.close()


def new_cert_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())
