"""The webhook while the Kubernetes API is down: pods asking for a sidecar are refused with the
reason, every other pod still passes, and the webhook keeps serving.

(Recovery is not exercised here: the emulator restarts empty, and kopf's watches stop the
operator when the CRDs they watch are gone, which a real API server does not do.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from injection.objects import delay_queue, pod
from injection.webhook_client import ANNOTATIONS, start_webhook

from harness.kube import KubeApi
from harness.kube_operator import REPO, Cluster, eventually


def test_api_outage_refuses_pods_naming_the_queue_and_lets_others_pass(
    kube: KubeApi, unique: str, tmp_path: Path
) -> None:
    if not kube.is_emulator:
        pytest.skip("stops the Kubernetes API: only with the emulator")
    kube.apply_crds(sorted((REPO / "crds").glob("*.yaml")))
    kube.create_namespace(unique)
    hook, process = start_webhook(kube, unique, tmp_path)
    try:
        annotations = {**ANNOTATIONS, "queue-operator.dev/queues": "delayqueue/reminders"}
        kube.stop()
        down = hook.review(unique, pod(annotations))
        assert down["allowed"] is False
        assert f"cannot read delayqueue/reminders in namespace {unique}" in down["status"]["message"]
        assert "patch" not in down
        # Pods that do not ask for a sidecar need no API call and are not held up.
        plain = hook.review(unique, pod({}))
        assert plain["allowed"] is True and "patch" not in plain
        assert process.running
        status, _ = hook.post(b"[]")
        assert status == 400
    finally:
        process.stop()
        sys.stderr.write(process.log())  # pytest shows it when the test failed


def test_the_webhook_alone_answers_from_its_cache_with_no_controller_and_no_api(
    kube: KubeApi, unique: str, tmp_path: Path
) -> None:
    """``--role webhook``: no controller replica runs at all, then the API server goes away too;
    pods naming a queue it has seen still get their sidecar, and the webhook keeps serving."""
    if not kube.is_emulator:
        pytest.skip("stops the Kubernetes API: only with the emulator")
    kube.apply_crds(sorted((REPO / "crds").glob("*.yaml")))
    kube.create_namespace(unique)
    with kube.client() as api:
        body = delay_queue("reminders")
        body["metadata"]["namespace"] = unique
        Cluster(kube, unique, api).create(body)
    hook, process = start_webhook(kube, unique, tmp_path, role="webhook")
    try:
        annotations = {**ANNOTATIONS, "queue-operator.dev/queues": "delayqueue/reminders"}
        up = eventually(
            lambda: (r := hook.review(unique, pod(annotations)))["allowed"] and r, what="admitted"
        )
        assert "patch" in up
        assert "Handler 'reconcile'" not in process.log(), "the webhook role reconciles nothing"
        kube.stop()
        down = hook.review(unique, pod(annotations))
        assert down["allowed"] is True and down["patch"] == up["patch"]
        assert process.running
    finally:
        process.stop()
        sys.stderr.write(process.log())  # pytest shows it when the test failed
