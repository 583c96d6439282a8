"""The sidecar under test, and the apps it delivers to, as real processes.

``make_sidecar(config)`` writes the YAML and starts ``queue-sidecar --config`` (stopped after
the test); ``http_app`` / ``grpc_app`` start a scriptable app (see apps/script.py) on a free
port; each records every message it receives, which tests read with ``app.wait_for(...)``.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.servers import ManagedProcess, free_port

from .in_process import Servers

REPO = Path(__file__).resolve().parents[2]
APPS = REPO / "tests" / "apps"
SIDECAR_BIN = Path(sys.executable).parent / "queue-sidecar"

# Fast retries so failure paths take fractions of a second.
FAST_DELIVERY = {
    "maxAttempts": 3,
    "backoff": {"initial": "100ms", "max": "500ms", "multiplier": 2},
    "timeout": "5s",
}
# The engine passes these through to librdkafka; tansu joins a group in ~3 s with them.
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def wait_until(
    check: Callable[[], Any],
    timeout: float = 20.0,
    what: str = "condition",
    show: Callable[[], Any] | None = None,
) -> Any:
    """Poll ``check`` until truthy; on timeout fail with ``what`` and what ``show()`` returns then."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f" (now: {show()!r})" if show is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{seen}")
        time.sleep(0.05)


class App(ManagedProcess):
    """A scriptable test app (HTTP or gRPC) as a process."""

    def __init__(self, workdir: Path, protocol: str, *args: str) -> None:
        super().__init__(workdir)
        self.name = f"{protocol}-app"
        self.protocol = protocol
        self.args = args
        self.script_path = workdir / "script.json"
        self.record_path = workdir / "received.jsonl"

    def argv(self) -> Sequence[str]:
        return [
            sys.executable,
            str(APPS / f"{self.protocol}_app.py"),
            "--port",
            str(self.port),
            "--script",
            str(self.script_path),
            "--record",
            str(self.record_path),
            *self.args,
        ]

    def script(self, bodies: dict[str, list[dict[str, Any]]], default: dict[str, Any] | None = None) -> None:
        tmp = self.script_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"default": default or {}, "bodies": bodies}))
        tmp.replace(self.script_path)

    def received(self, body: str | None = None) -> list[dict[str, Any]]:
        if not self.record_path.exists():
            return []
        entries = [json.loads(line) for line in self.record_path.read_text().splitlines() if line]
        return [e for e in entries if body is None or e["body"] == body]

    def wait_for(self, body: str, count: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        return list(
            wait_until(
                lambda: (got := self.received(body)) and len(got) >= count and got,
                timeout,
                f"{count} deliveries of {body!r} to the {self.protocol} app",
            )
        )


class Sidecar(ManagedProcess):
    """``queue-sidecar --config FILE``; started means its health port answers."""

    name = "sidecar"

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        health_port = config.setdefault("health", {}).setdefault("port", free_port())
        super().__init__(workdir, health_port)
        config.setdefault("publish", {}).setdefault("port", free_port())
        self.config = config
        self.config_path = workdir / "sidecar.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.returncode: int | None = None

    @property
    def publish_url(self) -> str:
        return f"http://127.0.0.1:{self.config['publish']['port']}"

    def argv(self) -> Sequence[str]:
        return [str(SIDECAR_BIN), "--config", str(self.config_path)]

    def env(self) -> dict[str, str]:
        return {**super().env(), "PYTHONUNBUFFERED": "1"}

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def status(self) -> dict[str, Any]:
        """The sidecar's /v1/status document."""
        code, text = self.get("/v1/status")
        assert code == 200, text
        document: dict[str, Any] = json.loads(text)
        return document

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until /readyz is 200 and every queue is consuming with the app up (/v1/status)."""
        wait_until(
            lambda: self.get("/readyz")[0] == 200 and self.status()["healthy"],
            timeout,
            f"sidecar ready and consuming\n{self.log_tail(40)}",
            self.status,
        )

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample on /metrics, or None when there is no such sample."""
        _, text = self.get("/metrics")
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return None

    def terminate_and_wait(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code (the harness's stop() would hide it)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.returncode = self.proc.wait(timeout)
        self.proc = None
        return self.returncode


@pytest.fixture
def http_app(tmp_path: Path) -> Iterator[App]:
    app = App(tmp_path / "http-app", "http")
    app.script({})
    app.start()
    yield app
    app.kill()


@pytest.fixture
def grpc_app(tmp_path: Path) -> Iterator[App]:
    app = App(tmp_path / "grpc-app", "grpc")
    app.script({})
    app.start()
    yield app
    app.kill()


@pytest.fixture
def make_sidecar(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    started: list[Sidecar] = []

    def make(config: dict[str, Any], *, start: bool = True, name: str = "sidecar") -> Sidecar:
        sidecar = Sidecar(tmp_path / f"{name}{len(started)}", config)
        started.append(sidecar)
        if start:
            sidecar.start()
        return sidecar

    yield make
    for sidecar in started:
        sidecar.kill()


def delay_queue(name: str, cluster_addresses: list[str], redis_url: str, **delivery: Any) -> dict[str, Any]:
    return {
        "kind": "DelayQueue",
        "name": name,
        "nodes": cluster_addresses,
        "tube": name,
        "redis": {"url": redis_url},
        "delivery": {**FAST_DELIVERY, **delivery},
    }


def kafka_queue(name: str, bootstrap: str, **delivery: Any) -> dict[str, Any]:
    return {
        "kind": "KafkaQueue",
        "name": name,
        "brokers": [bootstrap],
        "topic": name,
        "group": f"{name}-app",
        "offset": "first",
        "deadLetterTopic": f"{name}.dlq",
        "delivery": {**FAST_DELIVERY, **delivery},
        "librdkafka": FAST_GROUP,  # tansu: a group join in ~3 s instead of ~23 s
    }


def app_config(app: App, **extra: Any) -> dict[str, Any]:
    return {"protocol": app.protocol, "port": app.port, "timeout": "5s", **extra}


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    """Servers a test starts in this process (see in_process.py), stopped after it."""
    started = Servers()
    yield started
    await started.stop()
