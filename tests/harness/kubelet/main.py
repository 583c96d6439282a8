"""The loop: list the API's objects, run the controllers, run and stop pods, write pod status.

Run it as root (the pods get their own mount namespaces):
``python -m harness.kubelet --api URL --kubeconfig FILE --root DIR --block N``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from pathlib import Path

from harness.kubelet import hosts, podnet
from harness.kubelet.api import Api, JsonObj
from harness.kubelet.controllers import Controllers
from harness.kubelet.pods import PodRunner

log = logging.getLogger("kubelet")

PASS_EVERY = 0.3  # seconds between passes


class Kubelet:
    def __init__(self, api: Api, root: Path, kubeconfig: Path, block: int) -> None:
        self.api, self.root = api, root
        self.hosts = root / "hosts"
        hosts.write_in_place(self.hosts, hosts.BASE)
        self.addresses = podnet.Addresses(block)
        self.base_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "KUBECONFIG": str(kubeconfig),  # in place of the service account token
            "LD_PRELOAD": str(podnet.build(root)),
            "PYTHONUNBUFFERED": "1",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
        }
        self.runners: dict[str, PodRunner] = {}  # by pod uid
        self.written: dict[str, JsonObj] = {}  # the last status written, by pod uid
        self.controllers = Controllers(api, self.gone, self.running)

    def gone(self, namespace: str, name: str) -> bool:
        return not any(
            r.pod["metadata"]["namespace"] == namespace and r.name == name and r.alive
            for r in self.runners.values()
        )

    def running(self, owner_uid: str) -> int:
        return sum(
            1
            for r in self.runners.values()
            if r.alive
            and any(ref.get("uid") == owner_uid for ref in r.pod["metadata"].get("ownerReferences") or [])
        )

    def run_pass(self) -> None:
        pods = self.api.list("pods")
        for deploy in self.api.list("deployments"):
            self.controllers.deployment(
                deploy, [p for p in pods if p["metadata"]["namespace"] == deploy["metadata"]["namespace"]]
            )
        for sts in self.api.list("statefulsets"):
            self.controllers.statefulset(
                sts, [p for p in pods if p["metadata"]["namespace"] == sts["metadata"]["namespace"]]
            )
        pods = self.api.list("pods")
        secrets = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in self.api.list("secrets")}
        maps = {(m["metadata"]["namespace"], m["metadata"]["name"]): m for m in self.api.list("configmaps")}
        hosts.write_in_place(self.hosts, hosts.render(pods, self.api.list("services")))
        present = {p["metadata"]["uid"]: p for p in pods}
        for uid, stale in list(self.runners.items()):
            if uid not in present:
                stale.stop()
                if not stale.alive and stale.stopping is not None and not stale.stopping.is_alive():
                    del self.runners[uid]
                    self.written.pop(uid, None)
        for uid, pod in present.items():
            if pod["metadata"].get("deletionTimestamp"):
                continue
            runner = self.runners.get(uid)
            if runner is None:
                ip = self.addresses.allocate()
                directory = (
                    self.root / "pods" / f"{pod['metadata']['namespace']}.{pod['metadata']['name']}.{uid[:8]}"
                )
                env = {**self.base_env, "QO_POD_IP": ip}
                runner = PodRunner(pod, ip, directory, self.root / "claims", env)
                self.runners[uid] = runner
                log.info("pod %s/%s on %s", pod["metadata"]["namespace"], pod["metadata"]["name"], ip)
            try:
                runner.tick(pod, self.hosts, secrets, maps)
            except Exception:  # one pod's trouble (a bad spec) must not stop the others
                log.exception("pod %s", pod["metadata"]["name"])
            status = runner.status()
            if status != self.written.get(uid):
                try:
                    self.api.patch_status(
                        "pods", pod["metadata"]["namespace"], pod["metadata"]["name"], status
                    )
                    self.written[uid] = status
                except Exception as exc:  # deleted meanwhile: the next pass sees it gone
                    log.debug("status of %s: %s", pod["metadata"]["name"], exc)

    def stop_all(self) -> None:
        for runner in self.runners.values():
            runner.stop()
        for runner in self.runners.values():
            if runner.stopping is not None:
                runner.stopping.join(60)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="kubelet and workload controllers for the e2e bed")
    parser.add_argument("--api", required=True, help="the API server URL (no auth)")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="what the pods get as KUBECONFIG")
    parser.add_argument("--root", type=Path, required=True, help="pod directories, claims, hosts file")
    parser.add_argument("--block", type=int, required=True, help="pods get 127.BLOCK.x.y")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    kubelet = Kubelet(Api(args.api), args.root, args.kubeconfig, args.block)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.is_set():
        started = time.monotonic()
        try:
            kubelet.run_pass()
        except Exception:  # the API restarting, a race with a deletion: the next pass tries again
            log.exception("pass failed")
        stop.wait(max(PASS_EVERY - (time.monotonic() - started), 0.05))
    kubelet.stop_all()


if __name__ == "__main__":
    main()
