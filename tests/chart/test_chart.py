"""The Helm chart lints, renders objects the Kubernetes schemas accept, and installs what it says."""

from __future__ import annotations

import base64
import filecmp
from typing import Any

import kubernetes_validate
import pytest

from harness.chart import CHART, REPO, by_kind, helm, render
from queue_operator.main import parse_args

KUBE_VERSION = "1.33.0"


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


def controller(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [
        d for d in by_kind(objects, "Deployment") if not d["metadata"]["name"].endswith("-webhook")
    ]
    return deployment


def webhook_deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [d for d in by_kind(objects, "Deployment") if d["metadata"]["name"].endswith("-webhook")]
    return deployment


def test_the_controller_is_leader_elected_with_two_replicas_rolling() -> None:
    deployment = controller(render())
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = parse_args(container["args"])
    assert args.leader_elect and args.role == "controller" and args.webhook_port is None
    assert args.leader_election_namespace == "queue-system"
    assert args.all_namespaces
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The Lease it elects on: its Role lets it get, create and update only leases, in its namespace.
    (lease_role,) = [
        r for r in by_kind(render(), "Role") if r["metadata"]["name"].endswith("-leader-election")
    ]
    assert lease_role["metadata"]["namespace"] == "queue-system"
    assert lease_role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("webhook.certManager.enabled=true",),
        ("watch.allNamespaces=false", "watch.namespaces={team-a}"),
        ("webhook.replicas=3", "replicaCount=3"),
    ],
)
def test_the_webhook_runs_apart_with_replicas_a_pdb_and_a_readiness_probe(sets: tuple[str, ...]) -> None:
    objects = render(*sets)
    deployment = webhook_deployment(objects)
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = parse_args(container["args"])
    assert args.role == "webhook" and not args.leader_elect and args.webhook_port == 9443
    assert container["readinessProbe"]["tcpSocket"]["port"] == "webhook"
    spread = pod["spec"]["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    (pdb,) = by_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    # The Service sends admissions to the webhook's pods only, and the controller's selector
    # (immutable once installed) never matches them.
    (service,) = [s for s in by_kind(objects, "Service") if s["metadata"]["name"].endswith("-webhook")]
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    selector = controller(objects)["spec"]["selector"]["matchLabels"]
    assert not all(labels.get(k) == v for k, v in selector.items())
    # Its own service account: it reads queues, lists pods to find those created without their
    # sidecar (deleting them for their controller to re-create) and posts events; no Secrets.
    assert pod["spec"]["serviceAccountName"].endswith("-webhook")
    for role in [*by_kind(objects, "ClusterRole"), *by_kind(objects, "Role")]:
        if role["metadata"]["name"].endswith("-webhook"):
            for rule in role["rules"]:
                assert "secrets" not in rule["resources"]
                allowed = {"pods": {"list", "delete"}, "events": {"list", "create"}}.get(
                    rule["resources"][0], {"get", "list", "watch"}
                )
                assert set(rule["verbs"]) <= allowed, rule


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
    (role,) = [r for r in by_kind(render(), "ClusterRole") if not r["metadata"]["name"].endswith("-webhook")]
    rules = role["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
    secret_rules = [rule for rule in rules if "secrets" in rule["resources"]]
    # Create a provisioned Redis's Secret, read a named one; never list, update or delete them.
    assert sorted(verb for rule in secret_rules for verb in rule["verbs"]) == ["create", "get"]
    assert not [rule for rule in rules if "pods" in rule["resources"]]


def test_namespaced_install_uses_roles_not_a_cluster_role() -> None:
    objects = render("watch.allNamespaces=false", "watch.namespaces={team-a,team-b}", "logLevel=debug")
    assert not by_kind(objects, "ClusterRole")
    roles = sorted(
        (role["metadata"]["namespace"], role["metadata"]["name"][-7:]) for role in by_kind(objects, "Role")
    )
    assert roles == [
        ("queue-system", "lection"),  # the leader Lease
        ("team-a", "perator"),
        ("team-a", "webhook"),
        ("team-b", "perator"),
        ("team-b", "webhook"),
    ]
    deployment = controller(objects)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--all-namespaces" not in args
    assert "--debug" in args


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("replicaCount=0", "replicaCount"),
        ("webhook.replicas=0", "replicas"),
        ("leaderElection.leaseSeconds=1", "leaseSeconds"),
        ("logLevel=chatty", "logLevel"),
        ("watch.allNamespaces=false", "watch.namespaces"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
    ],
)
def test_values_schema_refuses_bad_values_with_their_name(value: str, message: str) -> None:
    result = helm("template", "qo", str(CHART), "--set", value, check=False)
    assert result.returncode != 0
    assert message in result.stderr


# --- the sidecar injection webhook (docs/injection.md) ----------------------------------------


_DELAYQUEUE = {"metadata": {"name": "q", "namespace": "app"}, "spec": {"redis": {"url": "redis://r:6379/0"}}}


def _webhook_parts(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    (config,) = by_kind(objects, "MutatingWebhookConfiguration")
    deployment = webhook_deployment(objects)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return config["webhooks"][0], deployment, args


def test_webhook_is_served_over_tls_the_api_server_trusts() -> None:
    from cryptography import x509  # noqa: PLC0415

    from queue_operator.builders import beanstalkd  # noqa: PLC0415
    from queue_operator.spec import DelayQueueSpec  # noqa: PLC0415

    objects = render()
    hook, deployment, args = _webhook_parts(objects)
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    # Neither the operator's own pods nor its beanstalkd nodes wait for it while it is down.
    own = controller(objects)["spec"]["template"]["metadata"]["labels"]
    webhook_own = deployment["spec"]["template"]["metadata"]["labels"]
    node = beanstalkd.statefulset(
        {"metadata": {"name": "q", "namespace": "app"}}, DelayQueueSpec.from_body(_DELAYQUEUE)
    )["spec"]["template"]["metadata"]["labels"]
    for labels in (own, webhook_own, node):
        assert any(
            e["operator"] == "NotIn" and labels.get(e["key"]) in e["values"]
            for e in hook["objectSelector"]["matchExpressions"]
        ), labels
    assert "kube-system" in hook["namespaceSelector"]["matchExpressions"][0]["values"]

    service_ref = hook["clientConfig"]["service"]
    (service,) = [s for s in by_kind(objects, "Service") if s["metadata"]["name"] == service_ref["name"]]
    assert service_ref["path"] == "/inject-sidecar"  # the kopf handler id of queue_operator.webhook
    assert service["spec"]["ports"][0]["targetPort"] == "webhook"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container["ports"]

    (secret,) = by_kind(objects, "Secret")
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert f"{service['metadata']['name']}.queue-system.svc" in names
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-tls", "secret": {"secretName": secret["metadata"]["name"]}} in volumes

    # The chart's arguments are ones the operator accepts, pointing at the mounted Secret.
    parsed = parse_args(args)
    assert parsed.webhook_port == 9443
    mount = next(m for m in container["volumeMounts"] if m["name"] == "webhook-tls")["mountPath"]
    assert (parsed.webhook_cert, parsed.webhook_key) == (f"{mount}/tls.crt", f"{mount}/tls.key")
    assert parsed.sidecar_image == "ghcr.io/queue-operator/queue-operator:0.1.0"


def test_webhook_with_cert_manager_gets_a_certificate_and_an_injected_ca() -> None:
    objects = render("webhook.certManager.enabled=true", "webhook.failurePolicy=Ignore")
    hook, deployment, _ = _webhook_parts(objects)
    (certificate,) = [c for c in by_kind(objects, "Certificate") if not c["spec"].get("isCA")]
    issuers = {issuer["metadata"]["name"]: issuer for issuer in by_kind(objects, "Issuer")}
    assert not by_kind(objects, "Secret")  # cert-manager writes it
    (config,) = by_kind(objects, "MutatingWebhookConfiguration")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"queue-system/{certificate['metadata']['name']}"
    )
    assert "caBundle" not in hook["clientConfig"]
    assert hook["failurePolicy"] == "Ignore"
    # Issued by the chart's CA Issuer (tests/chart/test_webhook_scope.py checks the whole chain).
    assert "ca" in issuers[certificate["spec"]["issuerRef"]["name"]]["spec"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-tls", "secret": {"secretName": certificate["spec"]["secretName"]}} in volumes
    for obj in objects:
        if not obj["apiVersion"].startswith("cert-manager.io/"):
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)

    with_issuer = render(
        "webhook.certManager.enabled=true",
        "webhook.certManager.issuerRef.name=corp-ca",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    )
    assert not by_kind(with_issuer, "Issuer")
    (certificate,) = by_kind(with_issuer, "Certificate")
    assert certificate["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def test_webhook_can_be_turned_off_and_follows_the_watched_namespaces() -> None:
    objects = render("webhook.enabled=false")
    assert not by_kind(objects, "MutatingWebhookConfiguration") and not by_kind(objects, "Secret")
    (deployment,) = by_kind(objects, "Deployment")  # the controller only
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert not [a for a in container["args"] if a.startswith("--webhook")]

    namespaced = render("watch.allNamespaces=false", "watch.namespaces={team-a,team-b}")
    hook, _, _ = _webhook_parts(namespaced)
    expression = hook["namespaceSelector"]["matchExpressions"][0]
    assert (expression["operator"], expression["values"]) == ("In", ["team-a", "team-b"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("webhook.failurePolicy=Sometimes", "failurePolicy"),
        ("webhook.timeoutSeconds=60", "timeoutSeconds"),
        ("webhook.sidecar.tag=1", "Additional property tag is not allowed"),
        ("webhook.certManager.issuerRef.kind=Vault", "kind"),
    ],
)
def test_values_schema_refuses_bad_webhook_values(value: str, message: str) -> None:
    result = helm("template", "qo", str(CHART), "--set", value, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_images_default_to_the_app_version_and_can_be_pinned_by_digest() -> None:
    digest = "sha256:" + "ab" * 32
    default = render()
    for deployment in by_kind(default, "Deployment"):
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
            "ghcr.io/queue-operator/queue-operator:0.1.0"
        )
    pinned = render(f"image.digest={digest}")
    for deployment in by_kind(pinned, "Deployment"):
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
            f"ghcr.io/queue-operator/queue-operator@{digest}"
        )
    args = webhook_deployment(pinned)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert parse_args(args).sidecar_image == f"ghcr.io/queue-operator/queue-operator@{digest}"
    own = render(
        f"image.digest={digest}",
        "webhook.sidecar.image.repository=corp/sidecar",
        "webhook.sidecar.image.tag=v7",
    )
    args = webhook_deployment(own)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert parse_args(args).sidecar_image == "corp/sidecar:v7"
    result = helm("template", "qo", str(CHART), "--set", "image.digest=latest", check=False)
    assert result.returncode != 0 and "digest" in result.stderr
