"""End to end: the operator process serves the webhook over HTTPS, the queues live in the API.

Requests are what an API server sends: an AdmissionReview v1 POSTed to the path in the
chart's MutatingWebhookConfiguration, trusted through the CA that signed the webhook's cert.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import jsonpatch
import pytest
import yaml
from injection.objects import delay_queue, kafka_queue, pod
from injection.webhook_client import ANNOTATIONS, IMAGE, Webhook, start_webhook

from harness.kube import KubeApi
from harness.kube_operator import REPO, Cluster
from queue_operator.injection import CONTAINER, PUBLISH_URL_ENV, SIDECAR_CONFIG
from queue_sidecar.config import DelayQueueConfig, parse_config


@pytest.fixture(scope="module")
def cluster(kube_session: KubeApi) -> Iterator[Cluster]:
    namespace = f"inject-{uuid.uuid4().hex[:8]}"
    kube_session.apply_crds(sorted((REPO / "crds").glob("*.yaml")))
    kube_session.create_namespace(namespace)
    with kube_session.client() as api:
        cluster = Cluster(kube_session, namespace, api)
        for body in (delay_queue("reminders"), kafka_queue("orders")):
            body["metadata"]["namespace"] = namespace
            cluster.create(body)
        yield cluster
    kube_session.delete_namespace(namespace)


@pytest.fixture(scope="module")
def webhook(
    kube_session: KubeApi, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Webhook]:
    """One operator process for the module: starting it takes seconds."""
    hook, process = start_webhook(kube_session, cluster.namespace, tmp_path_factory.mktemp("webhook"))
    yield hook
    process.stop()
    if os.environ.get("QUEUE_OPERATOR_TEST_SHOW_LOG"):
        sys.stderr.write(process.log())


def _patched(obj: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(obj, ops)
    return result


def test_a_pod_naming_existing_queues_gets_the_sidecar_once(webhook: Webhook, cluster: Cluster) -> None:
    original = pod(ANNOTATIONS)
    response = webhook.review(cluster.namespace, original)
    assert response["allowed"] is True, response
    mutated = _patched(original, response)
    sidecars = [c for c in mutated["spec"]["initContainers"] if c["name"] == CONTAINER]
    assert len(sidecars) == 1
    assert sidecars[0]["image"] == IMAGE
    env = {e["name"]: e["value"] for e in mutated["spec"]["containers"][0]["env"]}
    assert env[PUBLISH_URL_ENV] == "http://127.0.0.1:3500"
    assert "namespace" not in mutated["metadata"]  # the request's namespace is used, not written
    config = parse_config(yaml.safe_load(mutated["metadata"]["annotations"][SIDECAR_CONFIG]))
    reminders = config.queue("reminders")
    assert isinstance(reminders, DelayQueueConfig)
    # The nodes come from the DelayQueue's ConfigMap, mounted (in the pod's own namespace).
    assert str(reminders.nodes_file) == "/etc/queue-sidecar/nodes/0/nodes.json"
    assert [q.name for q in config.queues] == ["reminders", "orders"]

    # Re-invoked on the already mutated pod: nothing more to change.
    again = webhook.review(cluster.namespace, mutated)
    assert again["allowed"] is True
    assert "patch" not in again


def test_a_pod_naming_a_missing_queue_is_refused_with_its_name(webhook: Webhook, cluster: Cluster) -> None:
    annotations = {**ANNOTATIONS, "queue-operator.dev/queues": "dq/reminders,kq/nonexistent"}
    response = webhook.review(cluster.namespace, pod(annotations))
    assert response["allowed"] is False
    assert "kafkaqueue/nonexistent not found" in response["status"]["message"]
    assert "delayqueue/reminders" not in response["status"]["message"]
    assert "patch" not in response


def test_bad_annotations_are_refused_and_other_pods_pass_untouched(
    webhook: Webhook, cluster: Cluster
) -> None:
    bad = webhook.review(cluster.namespace, pod({**ANNOTATIONS, "queue-operator.dev/app-protocol": "tcp"}))
    assert bad["allowed"] is False
    assert "queue-operator.dev/app-protocol" in bad["status"]["message"]
    plain = webhook.review(cluster.namespace, pod({}))
    assert plain["allowed"] is True
    assert "patch" not in plain


@pytest.mark.parametrize(
    "payload", [b"not json", b"[1, 2]", b'{"request": {"uid": "x"}}', b'{"request": "x"}']
)
def test_malformed_requests_get_400_and_the_webhook_keeps_serving(
    webhook: Webhook, cluster: Cluster, payload: bytes
) -> None:
    status, _ = webhook.post(payload)
    assert status == 400
    assert webhook.review(cluster.namespace, pod({}))["allowed"] is True


def test_the_patch_gives_exactly_the_pure_injection_of_a_busy_pod(webhook: Webhook, cluster: Cluster) -> None:
    from queue_operator.injection import inject, read_request, sidecar_queue  # noqa: PLC0415
    from queue_operator.injection.pod import SidecarSettings  # noqa: PLC0415

    original = pod({**ANNOTATIONS, "queue-operator.dev/publish-port": "3600"}, containers=2)
    original["metadata"]["labels"] = {"app": "worker"}
    original["spec"]["initContainers"] = [{"name": "migrate", "image": "example/migrate:1"}]
    original["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    original["spec"]["containers"][1]["env"] = [{"name": "A", "value": "1"}]
    response = webhook.review(cluster.namespace, original)
    assert response["allowed"] is True, response

    request = read_request(original)
    bodies = {
        "reminders": cluster.get("delayqueues", "reminders"),
        "orders": cluster.get("kafkaqueues", "orders"),
    }
    queues = [sidecar_queue(ref, bodies[ref.name], i) for i, ref in enumerate(request.queues)]
    assert _patched(original, response) == inject(original, request, queues, SidecarSettings(image=IMAGE))
