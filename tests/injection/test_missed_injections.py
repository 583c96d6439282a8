"""Annotated pods created without their sidecar (the webhook was down) are replaced once it is back.

The real webhook process (``--role webhook``) on the API emulator: pods owned by a controller
are deleted for it to re-create (through the webhook), bare pods get a Warning event.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from injection.objects import pod
from injection.webhook_client import ANNOTATIONS, start_webhook

from harness.kube import KubeApi
from harness.kube_operator import REPO, Cluster, eventually
from queue_operator.injection import CONTAINER


def named(name: str, annotations: dict[str, str], owner: dict[str, Any] | None = None) -> dict[str, Any]:
    body = copy.deepcopy(pod(annotations))
    body["metadata"].pop("generateName")
    body["metadata"]["name"] = name
    if owner is not None:
        body["metadata"]["ownerReferences"] = [owner]
    return body


def events(cluster: Cluster, name: str) -> list[Any]:
    return [
        e
        for e in cluster.core.list_namespaced_event(cluster.namespace).items
        if e.involved_object.name == name
    ]


def pod_names(cluster: Cluster) -> set[str]:
    return {p.metadata.name for p in cluster.core.list_namespaced_pod(cluster.namespace).items}


def test_pods_created_without_their_sidecar_are_replaced_or_reported(
    kube: KubeApi, unique: str, tmp_path: Path
) -> None:
    kube.apply_crds(sorted((REPO / "crds").glob("*.yaml")))
    kube.create_namespace(unique)
    with kube.client() as api:
        cluster = Cluster(kube, unique, api)
        replicaset = cluster.apps.create_namespaced_replica_set(
            unique,
            {
                "metadata": {"name": "web-5d8f"},
                "spec": {
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
                    },
                },
            },
        )
        owner = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": "web-5d8f",
            "uid": replicaset.metadata.uid,
            "controller": True,
        }
        injected = named("web-5d8f-ok", ANNOTATIONS, owner)
        injected["spec"]["initContainers"] = [{"name": CONTAINER, "image": "q:1", "restartPolicy": "Always"}]
        for body in (
            named("web-5d8f-missed", ANNOTATIONS, owner),  # created while the webhook was down
            named("bare-missed", ANNOTATIONS),
            named("plain", {}),  # never asked for a sidecar
            injected,
        ):
            cluster.core.create_namespaced_pod(unique, body)

        _, process = start_webhook(
            kube, unique, tmp_path, role="webhook", extra=["--missed-injection-interval", "1"]
        )
        try:
            eventually(lambda: "web-5d8f-missed" not in pod_names(cluster), what="the missed pod deleted")
            assert pod_names(cluster) >= {"bare-missed", "plain", "web-5d8f-ok"}
            (replaced,) = events(cluster, "web-5d8f-missed")
            assert (replaced.type, replaced.reason) == ("Normal", "SidecarMissing")
            assert "ReplicaSet web-5d8f creates it again" in replaced.message
            warning = eventually(lambda: events(cluster, "bare-missed"), what="the bare pod told about")
            assert (warning[0].type, warning[0].reason) == ("Warning", "SidecarMissing")
            assert "delete it and create it again" in warning[0].message
            # Later rounds (one a second here) neither repeat the warning nor touch the others.
            time.sleep(2.5)
            assert len(events(cluster, "bare-missed")) == 1
            assert not events(cluster, "plain") and not events(cluster, "web-5d8f-ok")
        finally:
            process.stop()
