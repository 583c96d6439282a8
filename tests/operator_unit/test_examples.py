"""The resources people copy (examples/ and the YAML in docs/operator.md) are accepted as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from operator_unit.crd_admission import admit, yaml_documents

from queue_operator.builders import beanstalkd
from queue_operator.spec import DelayQueueSpec, KafkaQueueSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
DOC = ROOT / "docs" / "operator.md"
CUSTOM_KINDS = {"DelayQueue", "KafkaQueue"}


def doc_yaml_blocks() -> list[Any]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    return [doc for block in blocks for doc in yaml.safe_load_all(block) if doc]


def check_resource(obj: dict[str, Any]) -> None:
    """Accepted by the CRD schema (or Kubernetes' own), and by the operator's spec reader."""
    if obj["kind"] not in CUSTOM_KINDS:
        kubernetes_validate.validate(obj, "1.33.0", strict=True)
        return
    obj = {**obj, "metadata": {"namespace": "default", **obj["metadata"]}}
    stored = admit(obj)
    if obj["kind"] == "DelayQueue":
        spec = DelayQueueSpec.from_body(stored)
        for child in beanstalkd.children(stored, spec):
            kubernetes_validate.validate(child, "1.33.0", strict=True)
    else:
        KafkaQueueSpec.from_body(stored)


def test_there_are_examples_of_both_kinds_and_a_sasl_one() -> None:
    kinds = [doc["kind"] for path in EXAMPLES for doc in yaml_documents(path)]
    assert {"DelayQueue", "KafkaQueue", "Secret"} <= set(kinds)
    sasl = [
        doc
        for path in EXAMPLES
        for doc in yaml_documents(path)
        if doc["kind"] == "KafkaQueue" and "sasl" in doc["spec"].get("auth", {})
    ]
    assert sasl


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted(path: Path) -> None:
    for obj in yaml_documents(path):
        check_resource(obj)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_secrets_an_example_names_are_in_the_same_file(path: Path) -> None:
    docs = yaml_documents(path)
    secrets = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Secret"}
    for obj in docs:
        if obj["kind"] == "DelayQueue":
            ref = DelayQueueSpec.from_body(admit({**obj, "metadata": {"namespace": "d", **obj["metadata"]}}))
            # A provisioned Redis's Secret is the operator's to make, not the example's.
            refs = [ref.redis_secret_ref] if ref.redis_secret_ref and not ref.redis_provisioned else []
            wanted = [(r.name, r.key) for r in refs]
        elif obj["kind"] == "KafkaQueue":
            kq = KafkaQueueSpec.from_body(obj)
            wanted = []
            if kq.sasl_secret_ref:
                s = kq.sasl_secret_ref
                wanted += [(s.name, s.username_key), (s.name, s.password_key)]
            if kq.tls_ca_secret_ref:
                wanted.append((kq.tls_ca_secret_ref.name, kq.tls_ca_secret_ref.key))
        else:
            continue
        for name, key in wanted:
            assert key in secrets[name]["stringData"], f"Secret {name} lacks key {key}"


def test_doc_resources_are_accepted() -> None:
    resources = [doc for doc in doc_yaml_blocks() if "kind" in doc]
    assert {doc["kind"] for doc in resources} >= CUSTOM_KINDS
    for obj in resources:
        check_resource(obj)


def test_doc_status_examples_fit_the_status_schema() -> None:
    statuses = [doc for doc in doc_yaml_blocks() if "kind" not in doc and "status" in doc]
    assert len(statuses) == 3  # a DelayQueue's, one during a drain, a KafkaQueue's
    for block in statuses:
        if "endpoints" in block["status"] or "drain" in block["status"]:
            obj = {
                "kind": "DelayQueue",
                "metadata": {"name": "reminders"},
                "spec": {"redis": {"url": "redis://r"}},
            }
        else:
            obj = {"kind": "KafkaQueue", "metadata": {"name": "orders"}, "spec": {"brokers": ["k:9092"]}}
        admit({"apiVersion": "queue-operator.dev/v1alpha1", **obj, **block})


def test_doc_endpoints_are_what_the_builder_gives() -> None:
    (status,) = [doc["status"] for doc in doc_yaml_blocks() if "endpoints" in doc.get("status", {})]
    body = {
        "metadata": {"name": "reminders", "namespace": "default"},
        "spec": {"redis": {"url": "redis://r"}},
    }
    assert status["endpoints"] == beanstalkd.endpoints(body, DelayQueueSpec.from_body(body))
