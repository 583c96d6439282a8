"""The Kubernetes API emulator is real enough for kopf and the official client, over HTTP."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch

from harness.kube import KubeApi

GROUP, VERSION, PLURAL = "selftest.dev", "v1", "widgets"

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1, "maximum": 9, "default": 3},
                                    "color": {"type": "string", "enum": ["red", "blue"]},
                                },
                            },
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


def eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, client.ApiException):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check}")
        time.sleep(0.1)


@pytest.fixture
def api(kube: KubeApi, tmp_path: Path, unique: str) -> Iterator[client.ApiClient]:
    crd_file = tmp_path / "crd.yaml"
    crd_file.write_text(yaml.safe_dump(WIDGET_CRD))
    kube.apply_crds([crd_file])
    kube.create_namespace(unique)
    with kube.client() as api_client:
        yield api_client
    kube.delete_namespace(unique)


def widget(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name, "labels": labels},
        "spec": {"color": "red"},
        "status": {"ignored": "on create"},
    }


def test_created_crd_is_discovered(api: client.ApiClient) -> None:
    resources = client.CustomObjectsApi(api).get_api_resources(GROUP, VERSION)
    served = {r.name: r for r in resources.resources}
    assert served[PLURAL].kind == "Widget"
    assert served[PLURAL].namespaced is True
    assert "widgets/status" in served
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert GROUP in groups


def test_create_sets_server_metadata_and_defaults(api: client.ApiClient, unique: str) -> None:
    objects = client.CustomObjectsApi(api)
    created = objects.create_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, widget("w1"))
    meta = created["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    assert meta["generation"] == 1 and meta["namespace"] == unique
    assert created["spec"] == {"color": "red", "size": 3}, "schema default applied"
    assert "status" not in created, "status is a subresource: ignored on create"
    with pytest.raises(client.ApiException) as conflict:
        objects.create_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, widget("w1"))
    assert conflict.value.status == 409
    with pytest.raises(client.ApiException) as invalid:
        objects.create_namespaced_custom_object(
            GROUP, VERSION, unique, PLURAL, {**widget("w2"), "spec": {"size": 12}}
        )
    assert invalid.value.status == 422 and "less than or equal to 9" in invalid.value.body


def test_status_subresource_and_generation(api: client.ApiClient, unique: str) -> None:
    objects = client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, widget("w1"))
    patched = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, unique, PLURAL, "w1", {"status": {"phase": "Ready"}, "spec": {"size": 7}}
    )
    assert patched["status"] == {"phase": "Ready"}
    assert patched["spec"]["size"] == 3, "a status write changes only status"
    assert patched["metadata"]["generation"] == 1
    patched = objects.patch_namespaced_custom_object(
        GROUP, VERSION, unique, PLURAL, "w1", {"spec": {"size": 5}, "status": {"phase": "Hacked"}}
    )
    assert patched["spec"]["size"] == 5
    assert patched["status"] == {"phase": "Ready"}, "a main write keeps status"
    assert patched["metadata"]["generation"] == 2
    patched = objects.patch_namespaced_custom_object(
        GROUP, VERSION, unique, PLURAL, "w1", {"metadata": {"labels": {"a": "b"}}}
    )
    assert patched["metadata"]["generation"] == 2, "metadata changes keep the generation"


def test_replace_uses_optimistic_concurrency(api: client.ApiClient, unique: str) -> None:
    objects = client.CustomObjectsApi(api)
    created = objects.create_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, widget("w1"))
    created["spec"]["color"] = "blue"
    replaced = objects.replace_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, "w1", created)
    assert replaced["spec"]["color"] == "blue"
    assert replaced["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    with pytest.raises(client.ApiException) as stale:
        objects.replace_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, "w1", created)
    assert stale.value.status == 409


def test_label_selector_filters_lists(api: client.ApiClient, unique: str) -> None:
    objects = client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, widget("a", tier="web"))
    objects.create_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, widget("b", tier="db"))
    objects.create_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, widget("c"))

    def names(selector: str) -> set[str]:
        found = objects.list_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, label_selector=selector)
        return {item["metadata"]["name"] for item in found["items"]}

    assert names("tier=web") == {"a"}
    assert names("tier") == {"a", "b"}
    assert names("!tier") == {"c"}
    assert names("tier in (web,db)") == {"a", "b"}
    assert names("tier!=web") == {"b", "c"}


def test_watch_sees_added_modified_deleted(api: client.ApiClient, unique: str) -> None:
    objects = client.CustomObjectsApi(api)
    listing = objects.list_namespaced_custom_object(GROUP, VERSION, unique, PLURAL)
    events: queue.Queue[tuple[str, str, str]] = queue.Queue()
    watcher = watch.Watch()

    def consume() -> None:
        with contextlib.suppress(Exception):  # the stream ends when the emulator stops
            stream_events()

    def stream_events() -> None:
        for event in watcher.stream(
            objects.list_namespaced_custom_object,
            GROUP,
            VERSION,
            unique,
            PLURAL,
            resource_version=listing["metadata"]["resourceVersion"],
            timeout_seconds=20,
        ):
            obj = event["object"]
            events.put((event["type"], obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    created = objects.create_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, widget("w1"))
    patched = objects.patch_namespaced_custom_object(
        GROUP, VERSION, unique, PLURAL, "w1", {"spec": {"size": 4}}
    )
    objects.delete_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, "w1")
    seen = [events.get(timeout=10) for _ in range(3)]
    watcher.stop()
    assert [(kind, name) for kind, name, _ in seen] == [
        ("ADDED", "w1"),
        ("MODIFIED", "w1"),
        ("DELETED", "w1"),
    ]
    assert seen[0][2] == created["metadata"]["resourceVersion"]
    assert seen[1][2] == patched["metadata"]["resourceVersion"]


def test_finalizers_hold_deletion_and_owners_collect_children(api: client.ApiClient, unique: str) -> None:
    objects, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    owner = widget("w1")
    owner["metadata"]["finalizers"] = ["selftest.dev/hold"]
    created = objects.create_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, owner)
    reference = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "name": "w1",
        "uid": created["metadata"]["uid"],
    }
    core.create_namespaced_config_map(unique, {"metadata": {"name": "child", "ownerReferences": [reference]}})
    objects.delete_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, "w1")
    held = objects.get_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, "w1")
    assert held["metadata"]["deletionTimestamp"]
    assert core.read_namespaced_config_map("child", unique).metadata.name == "child"
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, unique, PLURAL, "w1", {"metadata": {"finalizers": None}}
    )
    for read in (
        lambda: objects.get_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, "w1"),
        lambda: core.read_namespaced_config_map("child", unique),
    ):
        with pytest.raises(client.ApiException) as gone:
            read()
        assert gone.value.status == 404


KOPF_OPERATOR = """
import kopf
from kubernetes import client, config

@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    settings.persistence.finalizer = "selftest.dev/finalizer"
    settings.watching.server_timeout = 10
    settings.watching.client_timeout = 15
    config.load_kube_config()

@kopf.on.create("selftest.dev", "v1", "widgets")
def create(name, namespace, body, patch, **_):
    child = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-child"}}
    kopf.adopt(child, owner=body)
    client.CoreV1Api().create_namespaced_config_map(namespace, child)
    patch.status["child"] = child["metadata"]["name"]

@kopf.on.delete("selftest.dev", "v1", "widgets")
def delete(name, **_):
    pass
"""


def test_kopf_operator_creates_owned_child_and_releases_finalizer(
    kube: KubeApi, api: client.ApiClient, unique: str, tmp_path: Path
) -> None:
    script = tmp_path / "operator.py"
    script.write_text(KOPF_OPERATOR)
    log = (tmp_path / "kopf.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", unique, str(script)],
        env={**os.environ, "KUBECONFIG": str(kube.kubeconfig_path)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        objects, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        objects.create_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, widget("w1"))
        child = eventually(lambda: core.read_namespaced_config_map("w1-child", unique))
        owner = objects.get_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, "w1")
        assert child.metadata.owner_references[0].uid == owner["metadata"]["uid"]
        eventually(
            lambda: (
                "selftest.dev/finalizer"
                in objects.get_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, "w1")["metadata"][
                    "finalizers"
                ]
            )
        )
        eventually(
            lambda: (
                objects.get_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, "w1")
                .get("status", {})
                .get("child")
                == "w1-child"
            )
        )
        objects.delete_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, "w1")

        def gone() -> bool:
            try:
                objects.get_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, "w1")
            except client.ApiException as exc:
                return exc.status == 404
            return False

        eventually(gone)
        with pytest.raises(client.ApiException):
            core.read_namespaced_config_map("w1-child", unique)
        assert proc.poll() is None, "the operator is still running"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    assert "Traceback" not in (tmp_path / "kopf.log").read_text()


def test_watch_resumes_after_a_resource_version(api: client.ApiClient, unique: str) -> None:
    objects = client.CustomObjectsApi(api)
    created = objects.create_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, widget("w1"))
    objects.patch_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, "w1", {"spec": {"size": 6}})
    events = list(
        watch.Watch().stream(
            objects.list_namespaced_custom_object,
            GROUP,
            VERSION,
            unique,
            PLURAL,
            resource_version=created["metadata"]["resourceVersion"],
            timeout_seconds=1,
        )
    )
    assert [(e["type"], e["object"]["spec"]["size"]) for e in events] == [("MODIFIED", 6)]


def test_undeclared_fields_are_pruned(api: client.ApiClient, unique: str) -> None:
    objects = client.CustomObjectsApi(api)
    body = widget("w1")
    body["spec"]["unknownField"] = "dropped"
    created = objects.create_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, body)
    assert "unknownField" not in created["spec"]
    patched = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, unique, PLURAL, "w1", {"status": {"anything": {"goes": True}}}
    )
    assert patched["status"] == {"anything": {"goes": True}}, "preserve-unknown-fields keeps it"


def test_a_child_created_after_its_owner_was_deleted_is_collected(api: client.ApiClient, unique: str) -> None:
    # A controller's reconcile racing the owner's deletion: Kubernetes' garbage collector
    # deletes the late child; so does the emulator. A child of a live owner stays.
    objects, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    created = objects.create_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, widget("w2"))
    reference = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "name": "w2",
        "uid": created["metadata"]["uid"],
    }
    core.create_namespaced_config_map(unique, {"metadata": {"name": "kept", "ownerReferences": [reference]}})
    assert core.read_namespaced_config_map("kept", unique).metadata.name == "kept"
    objects.delete_namespaced_custom_object(GROUP, VERSION, unique, PLURAL, "w2")
    core.create_namespaced_config_map(unique, {"metadata": {"name": "late", "ownerReferences": [reference]}})
    for name in ("kept", "late"):
        with pytest.raises(client.ApiException) as gone:
            core.read_namespaced_config_map(name, unique)
        assert gone.value.status == 404
