"""The webhook while the Kubernetes API is down: pods are refused with the reason, then served again."""

from __future__ import annotations

from pathlib import Path

import pytest
from injection.objects import delay_queue, pod
from injection.webhook_client import ANNOTATIONS, start_webhook

from harness.kube import KubeApi
from harness.kube_operator import REPO


def test_api_outage_refuses_pods_naming_the_queue_and_the_webhook_recovers(
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
        assert process.running

        # The emulator comes back empty: the queue is now reported missing, then found once created.
        kube.start()
        kube.apply_crds(sorted((REPO / "crds").glob("*.yaml")))
        kube.create_namespace(unique)
        missing = hook.review(unique, pod(annotations))
        assert missing["allowed"] is False
        assert "delayqueue/reminders not found" in missing["status"]["message"]
        body = delay_queue("reminders")
        body["metadata"]["namespace"] = unique
        with kube.client() as api:
            from kubernetes import client  # noqa: PLC0415

            client.CustomObjectsApi(api).create_namespaced_custom_object(
                "queue-operator.dev", "v1alpha1", unique, "delayqueues", body
            )
        served = hook.review(unique, pod(annotations))
        assert served["allowed"] is True, served
        assert "patch" in served
    finally:
        process.stop()
