"""A real Prometheus (Debian's package) scraping given targets and evaluating given rules.

It runs on a free loopback port with its storage in its work directory; ``query`` and ``alerts``
read its HTTP API. Short scrape and evaluation intervals let a test see rules fire in seconds.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from harness import tools
from harness.servers import ManagedProcess


class Prometheus(ManagedProcess):
    name = "prometheus"

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        *,
        metrics_path: str = "/metrics",
        rules: dict[str, Any] | None = None,
        interval: str = "1s",
    ) -> None:
        super().__init__(workdir)
        self.config_path = workdir / "prometheus.yml"
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": "queue-sidecar",
                    "metrics_path": metrics_path,
                    "static_configs": [{"targets": list(targets)}],
                }
            ],
        }
        if rules is not None:
            rules_path = workdir / "rules.yml"
            rules_path.write_text(yaml.safe_dump(rules))
            config["rule_files"] = [str(rules_path)]
        self.config_path.write_text(yaml.safe_dump(config))

    def argv(self) -> Sequence[str]:
        return [
            tools.prometheus(),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
        ]

    def after_start(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prometheus on {self.address} never got ready\n{self.log_tail()}")

    def _api(self, path: str, **params: str) -> Any:
        url = f"http://{self.address}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            document = json.load(response)
        if document.get("status") != "success":
            raise AssertionError(f"prometheus {path} {params}: {document}")
        return document["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now (a PromQL error raises, naming it)."""
        try:
            data = self._api("query", query=expr)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"prometheus refused {expr!r}: {exc.read().decode()}") from exc
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing), each with ``labels`` and ``state``."""
        alerts: list[dict[str, Any]] = self._api("alerts")["alerts"]
        return alerts

    def firing(self) -> set[tuple[str, str]]:
        """(alertname, queue) of every firing alert."""
        return {
            (a["labels"]["alertname"], a["labels"].get("queue", ""))
            for a in self.alerts()
            if a["state"] == "firing"
        }

    def target_health(self) -> list[str]:
        return [t["health"] for t in self._api("targets")["activeTargets"]]
