"""One pod's containers as processes: start order, restarts, probes, status, graceful stop.

Native sidecars (init containers with ``restartPolicy: Always``) start first and the app
containers only once each sidecar passed its startup probe, as the kubelet does; on deletion
the app containers get SIGTERM first, the sidecars after them, each SIGKILLed when
``terminationGracePeriodSeconds`` runs out.
"""

from __future__ import annotations

import datetime
import logging
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.kubelet import containers, probes
from harness.kubelet.api import JsonObj
from harness.kubelet.volumes import Volumes

log = logging.getLogger("kubelet.pods")

PROBE_EVERY = 0.5  # seconds, whatever periodSeconds says: the bed is for speed
RESTART_BACKOFF = 1.0


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    spec: JsonObj
    sidecar: bool
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = -1  # the first start is not a restart
    exited_at: float = 0.0
    started: bool = False  # passed the startup probe
    ready: bool = False
    last_probe: float = 0.0

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class PodRunner:
    pod: JsonObj
    ip: str
    directory: Path
    claims: Path
    base_env: dict[str, str]
    containers: list[Container] = field(default_factory=list)
    started_at: str = field(default_factory=now)
    stopping: threading.Thread | None = None
    waiting: str = ""  # why a container could not start yet (a Secret not there, ...)

    def __post_init__(self) -> None:
        spec = self.pod.get("spec") or {}
        self.directory.mkdir(parents=True, exist_ok=True)
        self.volumes = Volumes(self.directory / "volumes", self.claims)
        self.containers = [
            Container(c, sidecar=True)
            for c in spec.get("initContainers") or []
            if c.get("restartPolicy") == "Always"
        ] + [Container(c, sidecar=False) for c in spec.get("containers") or []]

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def alive(self) -> bool:
        return any(c.running for c in self.containers)

    def tick(
        self, pod: JsonObj, hosts: Path, secrets: dict[tuple[str, str], Any], maps: dict[tuple[str, str], Any]
    ) -> None:
        """Refresh volumes, (re)start what should run, probe."""
        if self.stopping is not None:
            return
        self.pod = pod
        mounts = self.volumes.sync(
            {**pod, "status": {**(pod.get("status") or {}), "podIP": self.ip}}, secrets, maps
        )
        sidecars_started = all(c.started for c in self.containers if c.sidecar)
        for container in self.containers:
            if not container.running and (container.sidecar or sidecars_started):
                self._start(container, hosts, mounts, secrets, maps)
            self._probe(container)

    def _start(
        self, container: Container, hosts: Path, mounts: dict[str, Path], secrets: Any, maps: Any
    ) -> None:
        if container.proc is not None:
            container.proc = None
            container.exited_at = time.monotonic()
            container.started = container.ready = False
        if time.monotonic() - container.exited_at < RESTART_BACKOFF:
            return
        try:
            env = {**self.base_env, **containers.environment(self.pod, container.spec, secrets, maps)}
        except LookupError as exc:
            self.waiting = str(exc)
            return
        self.waiting = ""
        log.info("%s: starting %s", self.name, container.name)
        container.proc = containers.start(
            self.pod, container.spec, env, hosts, mounts, self.directory / f"{container.name}.log"
        )
        container.restarts += 1

    def _probe(self, container: Container) -> None:
        if not container.running:
            container.ready = container.started = False
            return
        if time.monotonic() - container.last_probe < PROBE_EVERY:
            return
        container.last_probe = time.monotonic()
        spec, env = container.spec, self.base_env
        if not container.started:
            startup = spec.get("startupProbe")
            container.started = startup is None or probes.check(startup, self.ip, spec, env)
        readiness = spec.get("readinessProbe")
        container.ready = container.started and (
            readiness is None or probes.check(readiness, self.ip, spec, env)
        )

    def status(self) -> JsonObj:
        ready = all(c.ready for c in self.containers)

        def statuses(sidecar: bool) -> list[JsonObj]:
            return [
                {
                    "name": c.name,
                    "image": c.spec.get("image", ""),
                    "ready": c.ready,
                    "started": c.started,
                    "restartCount": max(c.restarts, 0),
                    "state": {"running": {"startedAt": self.started_at}}
                    if c.running
                    else {"waiting": {"reason": self.waiting or "ContainerCreating"}},
                }
                for c in self.containers
                if c.sidecar == sidecar
            ]

        flag = "True" if ready else "False"
        return {
            "phase": "Running",
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "hostIP": "127.0.0.1",
            "startTime": self.started_at,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": flag},
                {"type": "Ready", "status": flag},
            ],
            "initContainerStatuses": statuses(True),
            "containerStatuses": statuses(False),
        }

    def stop(self) -> None:
        """Graceful stop in the background: app containers, then sidecars, SIGKILL after the grace."""
        if self.stopping is None:
            self.stopping = threading.Thread(target=self._stop, name=f"stop-{self.name}", daemon=True)
            self.stopping.start()

    def _stop(self) -> None:
        grace = float((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        deadline = time.monotonic() + grace
        for group in (
            [c for c in self.containers if not c.sidecar],
            [c for c in self.containers if c.sidecar],
        ):
            procs = [c.proc for c in group if c.proc is not None and c.proc.poll() is None]
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(max(deadline - time.monotonic(), 0.01))
                except subprocess.TimeoutExpired:
                    log.warning("%s: SIGKILL after the %.0fs grace period", self.name, grace)
                    proc.kill()
                    proc.wait()
        log.info("%s: stopped", self.name)
