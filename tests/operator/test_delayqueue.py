"""DelayQueue end to end: the operator process provisions beanstalkd children and reports status."""

from __future__ import annotations

import json

import kubernetes_validate
from kubernetes import client

from harness.kube_operator import Cluster, OperatorProcess, eventually, example
from queue_operator.kube import Kube

PLURAL = "delayqueues"


def children_of(cluster: Cluster, name: str) -> tuple[object, object, object]:
    child = f"{name}-beanstalkd"
    return (
        cluster.core.read_namespaced_service(child, cluster.namespace),
        cluster.apps.read_namespaced_stateful_set(child, cluster.namespace),
        cluster.policy.read_namespaced_pod_disruption_budget(child, cluster.namespace),
    )


def set_ready_pods(cluster: Cluster, name: str, ready: int) -> None:
    """The emulator runs no controllers: play the StatefulSet controller reporting pods (and,
    for a queue with a provisioned Redis, its Redis pod ready)."""
    cluster.apps.patch_namespaced_stateful_set_status(
        f"{name}-beanstalkd",
        cluster.namespace,
        {"status": {"replicas": ready, "readyReplicas": ready, "updatedReplicas": ready}},
    )
    try:
        cluster.apps.patch_namespaced_stateful_set_status(
            f"{name}-redis",
            cluster.namespace,
            {"status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}},
        )
    except client.ApiException as exc:
        if exc.status != 404:  # a queue with a Redis of its own has none
            raise


def test_example_creates_owned_children_and_ready_status(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.apply(example("delayqueue.yaml"))
    service, statefulset, pdb = eventually(lambda: children_of(cluster, "reminders"), what="children")
    owner = cluster.get(PLURAL, "reminders")
    for child in (service, statefulset, pdb):
        refs = child.metadata.owner_references  # type: ignore[attr-defined]
        assert [(r.kind, r.name, r.uid, r.controller) for r in refs] == [
            ("DelayQueue", "reminders", owner["metadata"]["uid"], True)
        ]
        labels = child.metadata.labels  # type: ignore[attr-defined]
        assert labels["app.kubernetes.io/instance"] == "reminders"
        assert labels["app.kubernetes.io/managed-by"] == "queue-operator"
    assert service.spec.cluster_ip == "None"  # type: ignore[attr-defined]
    assert statefulset.spec.replicas == 3  # type: ignore[attr-defined]
    args = statefulset.spec.template.spec.containers[0].args  # type: ignore[attr-defined]
    assert args[args.index("-z") + 1] == "65535" and "-b" in args

    ready = eventually(lambda: cluster.ready(PLURAL, "reminders"), what="a Ready condition")
    assert (ready["status"], ready["reason"]) == ("False", "NodesNotReady")
    assert "0/3" in ready["message"]
    # A StatefulSet event may refresh the observed fields (and Ready) before the reconcile that
    # applied generation 1 records it: observedGeneration follows, never ahead of the apply.
    status = eventually(
        lambda: (s := cluster.get(PLURAL, "reminders")["status"]).get("observedGeneration") == 1 and s,
        what="observedGeneration 1",
    )
    assert status["endpoints"] == [
        f"reminders-beanstalkd-{i}.reminders-beanstalkd.{cluster.namespace}.svc:11300" for i in range(3)
    ]

    set_ready_pods(cluster, "reminders", 3)
    eventually(lambda: cluster.ready(PLURAL, "reminders")["status"] == "True", what="Ready=True")
    assert cluster.get(PLURAL, "reminders")["status"]["readyReplicas"] == 3
    assert "Traceback" not in operator.log()


def test_children_as_stored_pass_strict_schema_validation(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    cluster.apply(example("delayqueue-full.yaml"))
    eventually(lambda: children_of(cluster, "invoices"), what="children")
    kube = Kube(cluster.api)
    for api_version, kind in (
        ("v1", "Service"),
        ("apps/v1", "StatefulSet"),
        ("policy/v1", "PodDisruptionBudget"),
    ):
        stored = kube.read(api_version, kind, cluster.namespace, "invoices-beanstalkd")
        assert stored is not None
        stored.pop("status", None)  # written by controllers, not by the operator
        kubernetes_validate.validate(stored, "1.33.0", strict=True)


def test_full_example_with_persistence_settings(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.apply(example("delayqueue-full.yaml"))
    _, statefulset, _ = eventually(lambda: children_of(cluster, "invoices"), what="children")
    assert statefulset.spec.replicas == 5  # type: ignore[attr-defined]
    container = statefulset.spec.template.spec.containers[0]  # type: ignore[attr-defined]
    assert container.args[container.args.index("-f") + 1] == "0"
    assert container.args[container.args.index("-z") + 1] == "262144"
    claim = statefulset.spec.volume_claim_templates[0]  # type: ignore[attr-defined]
    assert claim.spec.storage_class_name == "standard"
    assert claim.spec.resources.requests["storage"] == "5Gi"
    eventually(lambda: len(cluster.get(PLURAL, "invoices")["status"]["endpoints"]) == 5, what="5 endpoints")
    secret_url = "redis://:change-me@"
    assert secret_url not in json.dumps(cluster.get(PLURAL, "invoices")["status"])
    assert secret_url not in operator.log()


def test_update_scales_and_changes_image(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.apply(example("delayqueue.yaml"))
    eventually(lambda: children_of(cluster, "reminders"), what="children")
    cluster.patch(PLURAL, "reminders", {"spec": {"replicas": 5, "image": "example.org/beanstalkd:1.13"}})

    def scaled() -> bool:
        sts = cluster.apps.read_namespaced_stateful_set("reminders-beanstalkd", cluster.namespace)
        return bool(
            sts.spec.replicas == 5
            and sts.spec.template.spec.containers[0].image == "example.org/beanstalkd:1.13"
        )

    eventually(scaled, what="StatefulSet scaled to 5 with the new image")
    eventually(
        lambda: cluster.get(PLURAL, "reminders")["status"]["observedGeneration"] == 2, what="generation 2"
    )
    assert len(cluster.get(PLURAL, "reminders")["status"]["endpoints"]) == 5
    set_ready_pods(cluster, "reminders", 5)
    eventually(lambda: cluster.ready(PLURAL, "reminders")["message"].startswith("5/5"), what="5/5 ready")


def test_delete_removes_the_resource_and_its_children(cluster: Cluster, operator: OperatorProcess) -> None:
    cluster.apply(example("delayqueue.yaml"))
    eventually(lambda: children_of(cluster, "reminders"), what="children")
    eventually(lambda: cluster.ready(PLURAL, "reminders"), what="status")
    cluster.delete(PLURAL, "reminders")
    eventually(lambda: cluster.gone(PLURAL, "reminders"), what="the DelayQueue gone (finalizer released)")
    assert cluster.apps.list_namespaced_stateful_set(cluster.namespace).items == []
    assert cluster.core.list_namespaced_service(cluster.namespace).items == []
    assert cluster.policy.list_namespaced_pod_disruption_budget(cluster.namespace).items == []


def test_operator_restart_creates_no_duplicates(cluster: Cluster, operator: OperatorProcess) -> None:
    doc = example("delayqueue.yaml")[0]
    cluster.apply([doc, {**doc, "metadata": {"name": "second"}}])
    eventually(lambda: children_of(cluster, "reminders") and children_of(cluster, "second"), what="children")
    # Each has its nodes' StatefulSet and its provisioned Redis's.
    eventually(lambda: len(cluster.apps.list_namespaced_stateful_set(cluster.namespace).items) == 4, what="4")
    before = {
        s.metadata.name: s.metadata.uid
        for s in cluster.apps.list_namespaced_stateful_set(cluster.namespace).items
    }
    operator.restart()
    eventually(lambda: operator.log().count("Handler 'reconcile' succeeded") >= 4, what="both resumed")
    after = {
        s.metadata.name: s.metadata.uid
        for s in cluster.apps.list_namespaced_stateful_set(cluster.namespace).items
    }
    assert after == before, "the same StatefulSets, not re-created"
    assert len(cluster.core.list_namespaced_service(cluster.namespace).items) == 4
    for name in ("reminders", "second"):
        # Nothing outside Kubernetes to clean up: no finalizer (deleting never waits for us).
        assert not cluster.get(PLURAL, name)["metadata"].get("finalizers")


def test_missing_child_is_recreated_by_the_periodic_check(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    cluster.apply(example("delayqueue.yaml"))
    _, statefulset, _ = eventually(lambda: children_of(cluster, "reminders"), what="children")
    cluster.apps.delete_namespaced_stateful_set("reminders-beanstalkd", cluster.namespace)

    def recreated() -> bool:
        sts = cluster.apps.read_namespaced_stateful_set("reminders-beanstalkd", cluster.namespace)
        return bool(sts.metadata.uid != statefulset.metadata.uid)  # type: ignore[attr-defined]

    eventually(recreated, what="a new StatefulSet")


def test_invalid_spec_is_reported_in_the_ready_condition(cluster: Cluster, operator: OperatorProcess) -> None:
    doc = example("delayqueue.yaml")[0]
    long_name = "a-delay-queue-name-that-is-far-too-long-for-dns"
    cluster.create({**doc, "metadata": {"name": long_name}})
    ready = eventually(lambda: cluster.ready(PLURAL, long_name), what="a Ready condition")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "at most 41 characters" in ready["message"]
    assert cluster.apps.list_namespaced_stateful_set(cluster.namespace).items == []
    assert operator.running


def test_ready_follows_pods_without_waiting_for_the_periodic_check(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    operator.stop()
    operator.reconcile_interval = 3600  # only the StatefulSet watch can update the status now
    operator.start()
    cluster.apply(example("delayqueue.yaml"))
    eventually(lambda: cluster.ready(PLURAL, "reminders").get("reason") == "NodesNotReady", what="not ready")
    set_ready_pods(cluster, "reminders", 2)
    eventually(lambda: cluster.get(PLURAL, "reminders")["status"]["readyReplicas"] == 2, what="2 ready")
    assert cluster.ready(PLURAL, "reminders")["status"] == "False"
    set_ready_pods(cluster, "reminders", 3)
    eventually(lambda: cluster.ready(PLURAL, "reminders")["status"] == "True", what="Ready=True")


def test_missing_redis_secret_is_reported_until_it_exists(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    secret, queue = example("delayqueue-full.yaml")
    cluster.apply([queue])
    missing = eventually(
        lambda: (c := cluster.ready(PLURAL, "invoices")).get("reason") == "RedisSecretMissing" and c,
        what="the missing Secret reported",
    )
    assert "billing-redis" in missing["message"] and missing["status"] == "False"
    eventually(lambda: children_of(cluster, "invoices"), what="children are provisioned anyway")
    unlabelled = {**secret, "metadata": {"name": secret["metadata"]["name"]}}
    cluster.apply([unlabelled])  # any Secret of the namespace: not used without the label
    refused = eventually(
        lambda: (c := cluster.ready(PLURAL, "invoices")).get("reason") == "SecretNotAllowed" and c,
        what="the unlabelled Secret refused",
    )
    assert "kubectl label secret" in refused["message"]
    cluster.core.delete_namespaced_secret(secret["metadata"]["name"], cluster.namespace)
    cluster.apply([secret])
    eventually(
        lambda: cluster.ready(PLURAL, "invoices").get("reason") == "NodesNotReady", what="Secret found"
    )


def test_an_apply_the_api_refuses_is_degraded_with_its_message_and_keeps_the_generation(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    # A StatefulSet of that name already exists with another serviceName, which the API server
    # does not let anyone change: the operator's apply is refused with 422.
    stray = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "reminders-beanstalkd", "namespace": cluster.namespace},
        "spec": {
            "serviceName": "someone-else",
            "replicas": 1,
            "selector": {"matchLabels": {"app": "stray"}},
            "template": {
                "metadata": {"labels": {"app": "stray"}},
                "spec": {"containers": [{"name": "x", "image": "busybox"}]},
            },
        },
    }
    cluster.apps.create_namespaced_stateful_set(cluster.namespace, stray)
    cluster.apply(example("delayqueue.yaml"))
    degraded = eventually(
        lambda: (
            (c := cluster.condition(PLURAL, "reminders", "Degraded")).get("reason") == "ApplyFailed" and c
        ),
        what="the refusal reported",
    )
    assert degraded["status"] == "True"
    assert "StatefulSet reminders-beanstalkd" in degraded["message"]
    assert "Forbidden: updates to statefulset spec" in degraded["message"]
    assert degraded["observedGeneration"] == 1
    status = cluster.get(PLURAL, "reminders")["status"]
    assert "observedGeneration" not in status, "generation 1 was never applied"
    assert cluster.ready(PLURAL, "reminders")["status"] == "False"

    # Once the obstacle is gone the retry applies it: Degraded clears, the generation is observed.
    cluster.apps.delete_namespaced_stateful_set("reminders-beanstalkd", cluster.namespace)
    eventually(
        lambda: cluster.condition(PLURAL, "reminders", "Degraded").get("status") == "False",
        what="Degraded cleared",
    )
    eventually(
        lambda: cluster.get(PLURAL, "reminders")["status"].get("observedGeneration") == 1,
        what="generation 1 applied",
    )
    assert cluster.apps.read_namespaced_stateful_set(
        "reminders-beanstalkd", cluster.namespace
    ).spec.service_name == ("reminders-beanstalkd")


def test_a_rollout_is_progressing_and_not_ready_until_every_node_is_updated(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    cluster.apply(example("delayqueue.yaml"))
    eventually(lambda: children_of(cluster, "reminders"), what="children")
    set_ready_pods(cluster, "reminders", 3)
    eventually(lambda: cluster.ready(PLURAL, "reminders").get("status") == "True", what="Ready")
    assert cluster.condition(PLURAL, "reminders", "Progressing")["status"] == "False"
    # The StatefulSet controller rolls a new template out: one of three pods updated so far.
    cluster.apps.patch_namespaced_stateful_set_status(
        "reminders-beanstalkd",
        cluster.namespace,
        {"status": {"updatedReplicas": 1, "currentRevision": "r1", "updateRevision": "r2"}},
    )
    eventually(
        lambda: cluster.condition(PLURAL, "reminders", "Progressing").get("reason") == "RollingOut",
        what="Progressing",
    )
    assert cluster.condition(PLURAL, "reminders", "Progressing")["status"] == "True"
    assert cluster.ready(PLURAL, "reminders")["status"] == "False"
    cluster.apps.patch_namespaced_stateful_set_status(
        "reminders-beanstalkd",
        cluster.namespace,
        {"status": {"updatedReplicas": 3, "currentRevision": "r2", "updateRevision": "r2"}},
    )
    eventually(
        lambda: cluster.ready(PLURAL, "reminders").get("status") == "True", what="Ready after the rollout"
    )
    assert cluster.condition(PLURAL, "reminders", "Progressing")["status"] == "False"
