"""The private /etc/hosts every pod sees: pod, StatefulSet pod and Service names (INFRA.md).

The file is bind-mounted over /etc/hosts inside each pod's mount namespace and rewritten in
place, so names of pods created later resolve without restarting anyone (glibc rereads it).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from harness.kubelet.api import JsonObj
from harness.kubelet.probes import is_ready

BASE = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
DOMAINS = ("svc", "svc.cluster.local")


def render(pods: Iterable[JsonObj], services: Iterable[JsonObj]) -> str:
    lines = [BASE]
    pods = [p for p in pods if (p.get("status") or {}).get("podIP")]
    for pod in pods:
        meta, spec, ip = pod["metadata"], pod.get("spec") or {}, pod["status"]["podIP"]
        names = [meta["name"]]
        if spec.get("hostname") and spec.get("subdomain"):
            base = f"{spec['hostname']}.{spec['subdomain']}.{meta['namespace']}"
            names += [f"{base}.{domain}" for domain in DOMAINS]
        lines.append(f"{ip} {' '.join(names)}\n")
    for service in services:
        meta, selector = service["metadata"], (service.get("spec") or {}).get("selector")
        if not selector:
            continue
        # No cluster IPs here: a Service name resolves to one ready pod behind it.
        backing = [
            p
            for p in pods
            if p["metadata"]["namespace"] == meta["namespace"]
            and all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
            and is_ready(p)
        ]
        if backing:
            base = f"{meta['name']}.{meta['namespace']}"
            names = [base, *(f"{base}.{domain}" for domain in DOMAINS)]
            lines.append(f"{backing[0]['status']['podIP']} {' '.join(names)}\n")
    return "".join(lines)


def write_in_place(path: Path, text: str) -> None:
    """Same inode (the bind mounts point at it); only when the text changed."""
    if path.exists() and path.read_text() == text:
        return
    with path.open("r+" if path.exists() else "w") as file:
        file.seek(0)
        file.write(text)
        file.truncate()
