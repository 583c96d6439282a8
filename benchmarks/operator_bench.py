"""How fast the operator reconciles many DelayQueues, and how much memory it takes.

For each size (200, then 1,000): a fresh Kubernetes API emulator (tests/harness/kube_emulator)
and a fresh ``queue-operator`` process watching one namespace. All DelayQueues are created at
once; the clock stops when every one has its StatefulSet, Service and PodDisruptionBudget and a
status written. The operator's peak RSS is its ``VmHWM`` from /proc. The baseline is the raw
``kubernetes`` client doing the same API work (three creates and a status patch per queue,
with as many threads as the operator's workers) against the same emulator, so the ratio shows
the operator's overhead over the API calls it cannot avoid.

Run: ``.venv/bin/python benchmarks/operator_bench.py [--sizes 200 1000]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kubernetes import client  # noqa: E402

from harness.kube import KubeApi  # noqa: E402
from queue_operator.builders import beanstalkd  # noqa: E402
from queue_operator.kube import Kube  # noqa: E402
from queue_operator.spec import DelayQueueSpec  # noqa: E402

GROUP, VERSION, PLURAL = "queue-operator.dev", "v1alpha1", "delayqueues"
WORKERS = 8


def delayqueue(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DelayQueue",
        "metadata": {"name": name},
        "spec": {"replicas": 3, "redis": {"url": "redis://redis:6379/0"}},
    }


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    """``VmHWM`` is the peak resident set size, ``VmRSS`` the current one."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the operator did not finish in time")
        time.sleep(interval)


def create_all(objects: Any, namespace: str, count: int) -> None:
    with ThreadPoolExecutor(WORKERS) as pool:
        list(
            pool.map(
                lambda i: objects.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, delayqueue(f"dq-{i:05d}")
                ),
                range(count),
            )
        )


def run_operator(
    kube: KubeApi, api: Any, namespace: str, count: int, workdir: Path
) -> tuple[float, float, float]:
    """Seconds until every DelayQueue has children and status; the operator's idle and peak RSS."""
    objects, apps = client.CustomObjectsApi(api), client.AppsV1Api(api)
    log = (workdir / f"operator-{count}.log").open("wb")
    operator = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "queue-operator"),
            "--namespace",
            namespace,
            "--workers",
            str(WORKERS),
        ],
        env={**os.environ, "KUBECONFIG": str(kube.kubeconfig_path)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(2)  # let it start watching, so its start-up is not in the measurement
        idle = memory_mb(operator.pid, "VmRSS")
        started = time.monotonic()
        create_all(objects, namespace, count)

        def done() -> bool:
            if len(apps.list_namespaced_stateful_set(namespace).items) < count:
                return False
            queues = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
            return sum(1 for q in queues if (q.get("status") or {}).get("conditions")) >= count

        wait_until(done, timeout=600)
        elapsed = time.monotonic() - started
        services = client.CoreV1Api(api).list_namespaced_service(namespace).items
        pdbs = client.PolicyV1Api(api).list_namespaced_pod_disruption_budget(namespace).items
        assert len(services) == count and len(pdbs) == count, "every queue has all three children"
        return elapsed, idle, memory_mb(operator.pid)
    finally:
        operator.terminate()
        operator.wait(30)
        log.close()


def run_raw(kube: KubeApi, api: Any, namespace: str, count: int) -> float:
    """The same API work without the operator: create the queues, their children, a status."""
    objects = client.CustomObjectsApi(api)
    kube_layer = Kube(api)
    started = time.monotonic()
    create_all(objects, namespace, count)

    def reconcile(i: int) -> None:
        body = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, f"dq-{i:05d}")
        spec = DelayQueueSpec.from_body(body)
        for child in beanstalkd.children(body, spec):
            kube_layer.apply(child)
        kube_layer.patch_status(
            f"{GROUP}/{VERSION}", "DelayQueue", namespace, body["metadata"]["name"], {"conditions": []}
        )

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(reconcile, range(count)))
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="operator-bench-") as tmp:
        for count in args.sizes:
            kube = KubeApi(Path(tmp) / f"kube-{count}")
            kube.start()
            try:
                kube.apply_crds(sorted((REPO / "crds").glob("*.yaml")))
                for namespace in ("bench", "raw"):
                    kube.create_namespace(namespace)
                with kube.client() as api:
                    elapsed, idle, peak = run_operator(kube, api, "bench", count, Path(tmp))
                    raw = run_raw(kube, api, "raw", count)
            finally:
                kube.stop()
            rows.append((count, elapsed, raw, idle, peak))

    print()
    header = ("DelayQueues", "operator s", "raw client s", "ratio", "queues/s", "idle RSS MB", "peak RSS MB")
    widths = (11, 10, 12, 5, 8, 11, 11)
    print(" | ".join(f"{title:>{width}}" for title, width in zip(header, widths, strict=True)))
    print("-" * 88)
    for count, elapsed, raw, idle, peak in rows:
        print(
            f"{count:>11} | {elapsed:>10.1f} | {raw:>12.1f} | {elapsed / raw:>5.1f} | "
            f"{count / elapsed:>8.1f} | {idle:>11.1f} | {peak:>11.1f}"
        )


if __name__ == "__main__":
    main()
