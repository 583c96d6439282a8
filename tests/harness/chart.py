"""The Helm chart rendered by the real Helm, for tests that check or run what it outputs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from harness import tools

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "queue-operator"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tools.helm(), *args], capture_output=True, text=True, check=check)


def render(*sets: str, namespace: str = "queue-system") -> list[dict[str, Any]]:
    """``helm template`` with each ``--set`` of ``sets``: the objects, CRDs included."""
    argv = ["template", "qo", str(CHART), "--namespace", namespace, "--include-crds"]
    for value in sets:
        argv += ["--set", value]
    return [doc for doc in yaml.safe_load_all(helm(*argv).stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]
