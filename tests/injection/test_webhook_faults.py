"""The webhook while the Kubernetes API is down: pods asking for a sidecar are refused with the
reason, every other pod still passes, and the webhook keeps serving.

(Recovery is not exercised here: the emulator restarts empty, and kopf's watches stop the
operator when the CRDs they watch are gone, which a real API server does not do.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from injection.objects import pod
from injection.webhook_client import ANNOTATIONS, start_webhook

from harness.kube import KubeApi
from harness.kube_operator import REPO


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
