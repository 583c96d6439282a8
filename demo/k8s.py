"""``scripts/demo.sh --k8s``: the user's path on Kubernetes, on the e2e bed (docs/e2e.md).

The chart rendered by Helm and applied to the API emulator; the operator, its webhook, the
beanstalkd nodes, the provisioned Redis and the app with its injected sidecar running as real
processes under the kubelet stand-in; a DelayQueue and a KafkaQueue; then delayed, timed and
Kafka messages published by the app through its sidecar, and shown as they arrive.
"""

from __future__ import annotations

import datetime
import functools
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from e2e import manifests
from e2e.user import condition, publish, ready_pods, received

from harness.e2e_bed import RELEASE_NAMESPACE, Bed, eventually

REPO = Path(__file__).resolve().parents[1]


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show_pods(bed: Bed, namespace: str) -> None:
    for pod in bed.pods(namespace):
        status = pod.get("status") or {}
        containers = [c["name"] for c in pod["spec"].get("initContainers") or []] + [
            c["name"] for c in pod["spec"]["containers"]
        ]
        ready = condition(pod).get("status") == "True"
        print(f"   {pod['metadata']['name']:48} {status.get('podIP', ''):16} ready={ready} {containers}")


def _ready(bed: Bed, kind: str, name: str) -> dict[str, Any] | None:
    queue = bed.get(f"/apis/queue-operator.dev/v1alpha1/namespaces/shop/{kind}/{name}")
    return queue if condition(queue).get("status") == "True" else None


def run(once: bool) -> int:
    bed = Bed(Path(tempfile.mkdtemp(prefix="queue-operator-k8s-demo-")))
    bed.start()
    try:
        say("helm template charts/queue-operator | apply to the Kubernetes API emulator")
        kinds = sorted({o["kind"] for o in bed.install()})
        print(f"   applied: {', '.join(kinds)}")
        eventually(lambda: len(ready_pods(bed, RELEASE_NAMESPACE, {})) == 4, 60, "operator and webhook ready")
        show_pods(bed, RELEASE_NAMESPACE)

        say("kubectl apply: namespace shop, DelayQueue reminders, KafkaQueue orders")
        bed.apply(manifests.namespace())
        bed.apply(manifests.delay_queue("reminders"))
        bed.apply(manifests.kafka_queue("orders", bed.broker.address))
        for kind, name in (("delayqueues", "reminders"), ("kafkaqueues", "orders")):
            ready = eventually(functools.partial(_ready, bed, kind, name), 90, f"{kind}/{name} Ready")
            print(f"   {kind}/{name}: Ready ({condition(ready)['message']})")

        say("an annotated app Deployment: the webhook injects the sidecar")
        records = bed.root / "records"
        records.mkdir()
        bed.apply(manifests.app("app", ["delayqueue/reminders", "kafkaqueue/orders"], records))
        eventually(lambda: ready_pods(bed, "shop", {"app": "app"}), 90, "the app pod ready")
        show_pods(bed, "shop")

        say("the app publishes through QUEUE_PUBLISH_URL (its sidecar)")
        at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=4)
        for body, kind, queue, query in (
            ("remind me in 3s", "delayqueues", "reminders", "delay=3s"),
            (
                f"due at {at:%H:%M:%S}",
                "delayqueues",
                "reminders",
                "at=" + at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            ),
            ("order 42 placed", "kafkaqueues", "orders", ""),
        ):
            print(f"   {queue}: {body!r} -> {json.dumps(publish(bed, kind, queue, body, query))}")
        shown: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(shown) < 3:
            for record in received(records):
                if record["body"] not in shown:
                    shown.add(record["body"])
                    now = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S.%f")[:-3]
                    print(
                        f"   {now} the app received {record['kind']} {record['body']!r} (id {record['id']})"
                    )
            time.sleep(0.2)
        if len(shown) < 3:
            print("   not every message arrived", file=sys.stderr)
            return 1
        if once:
            return 0
        print(
            f"\nrunning; the API: .tools/kubectl --kubeconfig {bed.kube.kubeconfig_path} get pods -A\n"
            f"pod logs: {bed.root}/pods/*/*.log\nCtrl-C to stop."
        )
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    finally:
        say("uninstall")
        bed.delete("/api/v1/namespaces/shop")
        eventually(lambda: not bed.pods("shop"), 60, "the user's pods gone")
        bed.uninstall()
        bed.stop()
