"""The Helm chart lints, renders objects the Kubernetes schemas accept, and installs what it says."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from harness import tools

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "queue-operator"
KUBE_VERSION = "1.33.0"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tools.helm(), *args], capture_output=True, text=True, check=check)


def render(*sets: str) -> list[dict[str, Any]]:
    argv = ["template", "qo", str(CHART), "--namespace", "queue-system", "--include-crds"]
    for value in sets:
        argv += ["--set", value]
    return [doc for doc in yaml.safe_load_all(helm(*argv).stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def test_helm_lint_is_clean_in_strict_mode() -> None:
    result = helm("lint", "--strict", str(CHART), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    "sets",
    [(), ("watch.allNamespaces=false", "watch.namespaces={team-a,team-b}", "logLevel=debug")],
    ids=["cluster-wide", "two-namespaces"],
)
def test_every_rendered_object_validates_strictly(sets: tuple[str, ...]) -> None:
    objects = render(*sets)
    assert objects
    for obj in objects:
        # Raises on any unknown field or schema violation (CRDs included: they are built-in kinds).
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_operator_runs_once_with_recreate_and_a_liveness_probe() -> None:
    (deployment,) = by_kind(render(), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--all-namespaces" in container["args"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_crds_are_installed_and_match_the_repository_copies() -> None:
    crds = by_kind(render(), "CustomResourceDefinition")
    assert {crd["metadata"]["name"] for crd in crds} == {
        "delayqueues.queue-operator.dev",
        "kafkaqueues.queue-operator.dev",
    }
    for path in (REPO / "crds").glob("*.yaml"):
        copy = CHART / "crds" / path.name
        assert filecmp.cmp(path, copy, shallow=False), f"copy {path} to {copy} (the chart ships the CRDs)"


def test_rbac_is_least_privilege() -> None:
    rules = by_kind(render(), "ClusterRole")[0]["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
    secret_rules = [rule for rule in rules if "secrets" in rule["resources"]]
    assert [rule["verbs"] for rule in secret_rules] == [["get"]]  # read a named Secret, never list
    assert not [rule for rule in rules if "pods" in rule["resources"]]


def test_namespaced_install_uses_roles_not_a_cluster_role() -> None:
    objects = render("watch.allNamespaces=false", "watch.namespaces={team-a,team-b}", "logLevel=debug")
    assert not by_kind(objects, "ClusterRole")
    assert sorted(role["metadata"]["namespace"] for role in by_kind(objects, "Role")) == ["team-a", "team-b"]
    (deployment,) = by_kind(objects, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--all-namespaces" not in args
    assert "--debug" in args


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("replicaCount=2", "Additional property replicaCount is not allowed"),
        ("logLevel=chatty", "logLevel"),
        ("watch.allNamespaces=false", "watch.namespaces"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
    ],
)
def test_values_schema_refuses_bad_values_with_their_name(value: str, message: str) -> None:
    result = helm("template", "qo", str(CHART), "--set", value, check=False)
    assert result.returncode != 0
    assert message in result.stderr
