"""How long the sidecar injection webhook takes to answer an AdmissionReview.

A fresh Kubernetes API emulator (tests/harness/kube_emulator) holding one DelayQueue and one
KafkaQueue, and a real ``queue-operator --role webhook`` process serving the webhook over HTTPS.
Each round POSTs an AdmissionReview for a pod naming both queues, one request at a time, over one
kept-alive connection as an API server does (kube-apiserver reuses its webhook connections; one
row also opens a new TLS connection per request, for comparison). The baseline is the
unavoidable API work done with the raw ``kubernetes`` client: reading the two queues (what the
webhook looks up), so the ratio shows the webhook's overhead (TLS, HTTP, building the patch)
over its lookups. The pure ``inject()`` step is timed alone as well.

With ``--queues N`` (default 1,000) the namespace also holds N more DelayQueues. The webhook is
timed twice: idle (no controller running), then while a separate controller process
(``--role controller``) reconciles them: the loaded rounds start once the controller has begun
reconciling and are spread over at least ``--loaded-seconds`` (default 10), so they overlap
its work (its status writes reach the webhook's watch); the table says how many reconciles ran
meanwhile. The raw client is timed under that load too. The webhook answers from its own watch
cache and event loop, so the controller's work must not show in its latency (goal: p99 < 20 ms).
The machine's cores are shared by the emulator, the controller, the webhook and this client:
the "floor" row times the webhook while two plain CPU-bound processes run instead of the
controller and emulator, i.e. what the operating system's scheduling alone adds.

Run: ``.venv/bin/python benchmarks/injection_bench.py [--requests 300] [--queues 1000]``
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from injection.objects import delay_queue, kafka_queue, pod  # noqa: E402
from injection.webhook_client import ANNOTATIONS, start_webhook  # noqa: E402
from kubernetes import client  # noqa: E402

from harness.kube import KubeApi  # noqa: E402
from harness.kube_operator import OperatorProcess  # noqa: E402
from queue_operator.injection import inject, read_request, sidecar_queue  # noqa: E402
from queue_operator.injection.pod import SidecarSettings  # noqa: E402

GROUP, VERSION = "queue-operator.dev", "v1alpha1"
NAMESPACE = "bench"


def timed(fn: Callable[[], object], rounds: int, gap: float = 0.0) -> list[float]:
    fn()  # warm up: connections, imports
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
        if gap:
            time.sleep(gap)
    return samples


def reconciles(controller: OperatorProcess) -> int:
    return controller.log().count("Handler 'reconcile' succeeded")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--loaded-seconds", type=float, default=10.0)
    args = parser.parse_args()
    rounds = args.requests
    rows: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        kube = KubeApi(Path(tmp) / "kube")
        kube.start()
        try:
            kube.apply_crds(sorted((REPO / "crds").glob("*.yaml")))
            kube.create_namespace(NAMESPACE)
            with kube.client() as api:
                objects = client.CustomObjectsApi(api)
                extra = [delay_queue(f"jobs-{i}") for i in range(args.queues)]
                for body in (delay_queue("reminders"), kafka_queue("orders"), *extra):
                    body["metadata"]["namespace"] = NAMESPACE
                    plural = body["kind"].lower() + "s"
                    objects.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, body)

                def lookups() -> None:
                    objects.get_namespaced_custom_object(
                        GROUP, VERSION, NAMESPACE, "delayqueues", "reminders"
                    )
                    objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "kafkaqueues", "orders")

                raw = timed(lookups, rounds)
                rows.append(("raw client: GET both queues (baseline, idle)", raw))

                (Path(tmp) / "webhook").mkdir()
                hook, process = start_webhook(kube, NAMESPACE, Path(tmp) / "webhook", role="webhook")
                controller = OperatorProcess(kube, NAMESPACE, Path(tmp))
                controller.reconcile_interval = 5.0
                controller.extra_args = ["--role", "controller"]
                try:
                    host, port = hook.url.removeprefix("https://").split("/")[0].split(":")
                    review = {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "request": {
                            "uid": str(uuid.uuid4()),
                            "resource": {"group": "", "version": "v1", "resource": "pods"},
                            "namespace": NAMESPACE,
                            "operation": "CREATE",
                            "userInfo": {"username": "bench"},
                            "object": pod(ANNOTATIONS),
                        },
                    }
                    payload = json.dumps(review).encode()
                    kept: list[http.client.HTTPSConnection] = []

                    def connect() -> http.client.HTTPSConnection:
                        return http.client.HTTPSConnection(host, int(port), context=hook.context, timeout=10)

                    def post(connection: http.client.HTTPSConnection) -> None:
                        connection.request(
                            "POST", "/inject-sidecar", payload, {"Content-Type": "application/json"}
                        )
                        answer = json.loads(connection.getresponse().read())
                        assert answer["response"]["allowed"] and answer["response"]["patch"], answer

                    def admission() -> None:
                        if not kept:
                            kept.append(connect())
                        post(kept[0])

                    def admission_new_connection() -> None:
                        connection = connect()
                        post(connection)
                        connection.close()

                    rows.append(("webhook: AdmissionReview over HTTPS (idle)", timed(admission, rounds)))
                    rows.append(
                        (
                            "webhook: new TLS connection each time (idle)",
                            timed(admission_new_connection, rounds),
                        )
                    )

                    # The floor the machine sets: the same paced admissions while two CPU-bound
                    # processes (about what the emulator and the controller take) share the cores.
                    gap = args.loaded_seconds / rounds
                    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
                    try:
                        rows.append(
                            ("webhook: idle, 2 CPU-bound processes (floor)", timed(admission, rounds, gap))
                        )
                    finally:
                        for burner in burners:
                            burner.kill()
                            burner.wait()

                    controller.start()
                    deadline = time.monotonic() + 120
                    while reconciles(controller) < 1 and time.monotonic() < deadline:
                        time.sleep(0.2)
                    before = reconciles(controller)
                    started = time.monotonic()
                    loaded = timed(admission, rounds, gap)
                    loaded_raw = timed(lookups, rounds, gap)
                    elapsed = time.monotonic() - started
                    during = reconciles(controller) - before
                    rows.append(("webhook: AdmissionReview over HTTPS (loaded)", loaded))
                    rows.append(("raw client: GET both queues (loaded)", loaded_raw))
                    for connection in kept:
                        connection.close()
                finally:
                    controller.stop()
                    process.stop()
        finally:
            kube.stop()

    original = pod(ANNOTATIONS)
    bodies = {"reminders": delay_queue("reminders"), "orders": kafka_queue("orders")}

    def pure() -> None:
        request = read_request(original)
        queues = [sidecar_queue(ref, bodies[ref.name], i) for i, ref in enumerate(request.queues)]
        inject(original, request, queues, SidecarSettings())

    rows.append(("pure inject() (annotations to mutated pod)", timed(pure, rounds)))

    def row(name: str, samples: list[float]) -> str:
        p50, p99 = statistics.median(samples), statistics.quantiles(samples, n=100)[98]
        ratio = p50 / statistics.median(raw)
        return f"| {name:<46} | {p50:8.2f} | {p99:8.2f} | {max(samples):8.2f} | {ratio:6.2f}x |"

    print(
        f"\n{rounds} requests per row, one at a time, {args.queues + 2} queues in the namespace; "
        f"loaded rows: the controller reconciled {during} queues during their {elapsed:.1f} s\n"
    )
    print(f"| {'what':<46} | {'p50 ms':>8} | {'p99 ms':>8} | {'max ms':>8} | {'vs raw':>7} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 9}|")
    for name, samples in rows:
        print(row(name, samples))


if __name__ == "__main__":
    main()
