"""One container as a process: its command line, environment and mounts from the pod spec.

Each container runs in its own mount and UTS namespace (``unshare``): the private /etc/hosts
and the pod's volumes are bind-mounted at their paths, the hostname is the pod's name (the
operator's leader identity uses it), and the process dies with the kubelet (``setpriv
--pdeathsig``). ``podnet.c`` (preloaded) gives it the pod's own loopback address.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

from harness.kubelet.api import JsonObj
from harness.kubelet.images import entrypoint, executable
from harness.kubelet.volumes import field_value

VARIABLE = re.compile(r"\$\((\w+)\)")

# Where the containers' programs come from: the checkout, its virtualenv and the interpreter.
# A volume mounted over one of them (the chart's /tmp emptyDir, with a checkout under /tmp)
# would hide the executable, so such a volume is left out: that path stays the machine's.
HOST_PATHS = tuple(
    {Path(p).resolve() for p in (Path(__file__).resolve().parents[3], sys.prefix, sys.base_prefix)}
)


def hides_host_path(mount_path: str) -> bool:
    target = Path(mount_path)
    return any(target == path or target in path.parents for path in HOST_PATHS)


# $1 hosts file, $2 hostname, then source/target pairs up to "--", then the command.
WRAPPER = """set -e
mount --bind "$1" /etc/hosts
hostname "$2"
shift 2
while [ "$1" != "--" ]; do mkdir -p "$2"; mount --bind "$1" "$2"; shift 2; done
shift
exec setpriv --pdeathsig KILL -- "$@"
"""


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion (unknown names stay as written)."""
    return VARIABLE.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def environment(
    pod: JsonObj,
    container: JsonObj,
    secrets: dict[tuple[str, str], JsonObj],
    maps: dict[tuple[str, str], JsonObj],
) -> dict[str, str]:
    """The container's ``env``, ``valueFrom`` resolved from the API (later entries see earlier ones)."""
    namespace, env = pod["metadata"]["namespace"], dict[str, str]()
    for entry in container.get("env") or []:
        source = entry.get("valueFrom")
        if source is None:
            env[entry["name"]] = expand(str(entry.get("value", "")), env)
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = (secrets.get((namespace, ref["name"])) or {}).get("data") or {}
            if ref["key"] not in data and not ref.get("optional"):
                raise LookupError(f"secret {namespace}/{ref['name']} has no key {ref['key']!r} (yet)")
            env[entry["name"]] = base64.b64decode(data.get(ref["key"], "")).decode()
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = (maps.get((namespace, ref["name"])) or {}).get("data") or {}
            if ref["key"] not in data and not ref.get("optional"):
                raise LookupError(f"configmap {namespace}/{ref['name']} has no key {ref['key']!r} (yet)")
            env[entry["name"]] = str(data.get(ref["key"], ""))
        elif "fieldRef" in source:
            env[entry["name"]] = field_value(pod, source["fieldRef"]["fieldPath"])
    return env


def argv(container: JsonObj, env: dict[str, str]) -> list[str]:
    command = list(container.get("command") or [entrypoint(container["image"])])
    line = [expand(part, env) for part in [*command, *(container.get("args") or [])]]
    return [executable(line[0]), *line[1:]]


def start(  # noqa: PLR0917 - the pod, and what the kubelet prepared for this container
    pod: JsonObj,
    container: JsonObj,
    env: dict[str, str],
    hosts: Path,
    volumes: dict[str, Path],
    log: Path,
) -> subprocess.Popen[bytes]:
    mounts: list[str] = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] in volumes and not mount.get("subPath") and not hides_host_path(mount["mountPath"]):
            mounts += [str(volumes[mount["name"]]), mount["mountPath"]]
    wrapped = [
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "sh",
        "-c",
        WRAPPER,
        "pod",
        str(hosts),
        pod["metadata"]["name"],
        *mounts,
        "--",
        *argv(container, env),
    ]
    with log.open("ab") as output:
        return subprocess.Popen(
            wrapped,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=container.get("workingDir") or "/",
            start_new_session=True,
        )
