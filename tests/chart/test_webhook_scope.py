"""The rendered webhook can never stop the cluster: only pods asking for injection are sent to it.

For every values variant, the MutatingWebhookConfiguration is evaluated the way kube-apiserver
decides whether to call a webhook: the namespaceSelector against the namespace's labels, the
objectSelector against the pod's labels, then each matchConditions CEL expression against the
pod (cel-python evaluates the expressions; no API server can be had here). A pod the webhook is
not called for is created normally while the webhook is down, whatever its failurePolicy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import celpy
import pytest
import yaml
from celpy.adapter import json_to_cel
from chart.test_chart import CHART, by_kind, render

RELEASE_NAMESPACE = "queue-system"

VARIANTS = [
    (),
    ("webhook.failurePolicy=Ignore",),
    ("webhook.certManager.enabled=true",),
    ("webhook.certManager.enabled=true", "webhook.certManager.issuerRef.name=corp-ca"),
    ("watch.allNamespaces=false", "watch.namespaces={team-a,kube-system,queue-system}"),
    ("webhook.namespaceSelector.matchLabels.injection=enabled",),
    (
        "webhook.namespaceSelector.matchExpressions[0].key=env",
        "webhook.namespaceSelector.matchExpressions[0].operator=Exists",
    ),
]


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector's verdict (an empty selector selects everything)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        verdicts = {
            "In": key in labels and labels[key] in values,
            "NotIn": not (key in labels and labels[key] in values),
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }
        if not verdicts[operator]:
            return False
    return True


def _conditions_match(hook: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    env = celpy.Environment()
    for condition in hook.get("matchConditions", []):
        program = env.program(env.compile(condition["expression"]))
        if not bool(program.evaluate({"object": json_to_cel(pod)})):
            return False
    return True


def _called(hook: Mapping[str, Any], namespace: str, pod: Mapping[str, Any]) -> bool:
    """Whether kube-apiserver would send this pod's CREATE to the webhook."""
    namespace_labels = {"kubernetes.io/metadata.name": namespace, "env": "prod", "injection": "enabled"}
    return (
        _selects(hook.get("namespaceSelector", {}), namespace_labels)
        and _selects(hook.get("objectSelector", {}), pod["metadata"].get("labels", {}))
        and _conditions_match(hook, pod)
    )


def _pod(annotations: dict[str, str] | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p", "labels": {"app": "web"}}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {"containers": []}}


def _hooks(sets: tuple[str, ...]) -> list[dict[str, Any]]:
    (config,) = by_kind(render(*sets), "MutatingWebhookConfiguration")
    hooks: list[dict[str, Any]] = config["webhooks"]
    assert hooks
    return hooks


@pytest.mark.parametrize("sets", VARIANTS, ids=lambda sets: ",".join(sets) or "defaults")
def test_pods_not_asking_for_injection_never_reach_the_webhook(sets: tuple[str, ...]) -> None:
    for hook in _hooks(sets):
        # Without matchConditions every pod of a selected namespace would wait for the webhook.
        assert hook["matchConditions"], hook
        for pod_annotations in (None, {}, {"other": "true"}, {"queue-operator.dev/inject": "false"}):
            for namespace in ("default", "team-a", "monitoring"):
                assert not _called(hook, namespace, _pod(pod_annotations)), (namespace, pod_annotations)


@pytest.mark.parametrize("sets", VARIANTS, ids=lambda sets: ",".join(sets) or "defaults")
def test_system_and_release_namespaces_are_never_sent_to_the_webhook(sets: tuple[str, ...]) -> None:
    asking = _pod({"queue-operator.dev/inject": "true"})
    for hook in _hooks(sets):
        for namespace in ("kube-system", RELEASE_NAMESPACE):
            assert not _called(hook, namespace, asking), namespace


@pytest.mark.parametrize("sets", VARIANTS, ids=lambda sets: ",".join(sets) or "defaults")
def test_annotated_pods_still_get_their_sidecar(sets: tuple[str, ...]) -> None:
    (hook,) = _hooks(sets)
    namespace = "team-a"
    for value in ("true", "True", "TRUE"):
        assert _called(hook, namespace, _pod({"queue-operator.dev/inject": value})), value


def test_cert_manager_mode_is_a_ca_chain_so_renewals_keep_the_ca_bundle() -> None:
    objects = render("webhook.certManager.enabled=true")
    issuers = {issuer["metadata"]["name"]: issuer["spec"] for issuer in by_kind(objects, "Issuer")}
    certificates = {cert["metadata"]["name"]: cert["spec"] for cert in by_kind(objects, "Certificate")}
    (ca_name,) = [name for name, spec in certificates.items() if spec.get("isCA")]
    (serving_name,) = [name for name, spec in certificates.items() if not spec.get("isCA")]
    ca, serving = certificates[ca_name], certificates[serving_name]
    # self-signed Issuer -> CA Certificate -> CA Issuer -> serving Certificate
    assert issuers[ca["issuerRef"]["name"]] == {"selfSigned": {}}
    ca_issuer = issuers[serving["issuerRef"]["name"]]
    assert ca_issuer == {"ca": {"secretName": ca["secretName"]}}
    (config,) = by_kind(objects, "MutatingWebhookConfiguration")
    injected = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert injected == f"{RELEASE_NAMESPACE}/{serving_name}"


def test_chart_requires_native_sidecar_support() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.29.0-0"
