"""Pod volumes as directories on this machine, refreshed in place as the kubelet does.

Secret, ConfigMap and downward API volumes are written from the API's current objects on every
pass: a changed ConfigMap reaches the mounted files within a pass (the files are replaced by
rename, so a reader never sees half a file). PersistentVolumeClaims are directories that outlive
the pod (a StatefulSet pod's data survives its deletion); emptyDir lives and dies with the pod.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

from harness.kubelet.api import JsonObj

FIELD = re.compile(r"^metadata\.(annotations|labels)\['(.+)'\]$")


def field_value(pod: JsonObj, path: str) -> str:
    """A downward API ``fieldPath`` of the pod."""
    meta, status = pod["metadata"], pod.get("status") or {}
    if match := FIELD.match(path):
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": "stand-in-node",
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP", ""),
        "status.hostIP": "127.0.0.1",
    }
    return str(simple.get(path, ""))


def _write(directory: Path, files: dict[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and target.read_bytes() == content:
            continue
        temporary = target.with_name(f".{target.name}.new")
        temporary.write_bytes(content)
        os.replace(temporary, target)
    for stale in [p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")]:
        if str(stale.relative_to(directory)) not in files:
            stale.unlink()


def _keyed(data: dict[str, bytes], items: list[JsonObj] | None) -> dict[str, bytes]:
    if not items:
        return data
    return {item["path"]: data[item["key"]] for item in items if item["key"] in data}


class Volumes:
    """The volumes of one pod under ``root``; claims live under ``claims``."""

    def __init__(self, root: Path, claims: Path) -> None:
        self.root, self.claims = root, claims

    def sync(
        self, pod: JsonObj, secrets: dict[tuple[str, str], JsonObj], maps: dict[tuple[str, str], JsonObj]
    ) -> dict[str, Path]:
        """Bring every volume's files up to date; the host directory of each volume by name."""
        namespace = pod["metadata"]["namespace"]
        paths: dict[str, Path] = {}
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            name, directory = volume["name"], self.root / volume["name"]
            if "secret" in volume:
                source = secrets.get((namespace, volume["secret"]["secretName"])) or {}
                data = {k: base64.b64decode(v) for k, v in (source.get("data") or {}).items()}
                _write(directory, _keyed(data, volume["secret"].get("items")))
            elif "configMap" in volume:
                source = maps.get((namespace, volume["configMap"]["name"])) or {}
                data = {k: str(v).encode() for k, v in (source.get("data") or {}).items()}
                _write(directory, _keyed(data, volume["configMap"].get("items")))
            elif "downwardAPI" in volume:
                items = volume["downwardAPI"].get("items") or []
                _write(
                    directory,
                    {i["path"]: field_value(pod, i["fieldRef"]["fieldPath"]).encode() for i in items},
                )
            elif "persistentVolumeClaim" in volume:
                directory = self.claims / f"{namespace}.{volume['persistentVolumeClaim']['claimName']}"
                directory.mkdir(parents=True, exist_ok=True)
            elif "hostPath" in volume:
                directory = Path(volume["hostPath"]["path"])
                directory.mkdir(parents=True, exist_ok=True)
            else:  # emptyDir, and anything else as an empty directory
                directory.mkdir(parents=True, exist_ok=True)
            paths[name] = directory
        return paths
