"""Container probes (httpGet, tcpSocket, exec) and the pod's Ready condition."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import urllib.error
import urllib.request
from typing import Any

from harness.kubelet.api import JsonObj

TIMEOUT = 1.0  # probes run often here; a slow answer is a failed probe, as with timeoutSeconds: 1


def port_number(port: Any, container: JsonObj) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"container {container.get('name')} has no port named {port!r}")


def check(probe: JsonObj, ip: str, container: JsonObj, env: dict[str, str]) -> bool:
    """One probe attempt against the pod at ``ip``."""
    if "httpGet" in probe:
        get = probe["httpGet"]
        url = f"http://{ip}:{port_number(get['port'], container)}{get.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                return 200 <= int(response.status) < 400
        except (urllib.error.URLError, OSError, ValueError):
            return False
    if "tcpSocket" in probe:
        port = port_number(probe["tcpSocket"]["port"], container)
        with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=TIMEOUT):
            return True
        return False
    if "exec" in probe:
        try:
            done = subprocess.run(
                probe["exec"]["command"], env=env, capture_output=True, timeout=TIMEOUT * 5, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0
    return True  # grpc probes: none in this project


def is_ready(pod: JsonObj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
