"""The pure part of injection: annotations read, queues resolved, the pod mutated once."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from injection.objects import NAMESPACE, delay_queue, kafka_queue, pod

from queue_operator.injection import (
    CONTAINER,
    PUBLISH_URL_ENV,
    SIDECAR_CONFIG,
    InjectionError,
    SidecarSettings,
    inject,
    read_request,
    sidecar_queue,
    wants_injection,
)
from queue_sidecar.config import DelayQueueConfig, KafkaQueueConfig, SidecarConfig, parse_config

KUBE_VERSION = "1.33.0"
SETTINGS = SidecarSettings(image="registry.example/queue-operator:1.2.3")
BASIC = {
    "queue-operator.dev/inject": "true",
    "queue-operator.dev/queues": "delayqueue/reminders,kafkaqueue/orders",
    "queue-operator.dev/app-port": "8080",
}


def injected(
    annotations: dict[str, str], bodies: dict[str, dict[str, Any]], containers: int = 1
) -> dict[str, Any]:
    original = pod(annotations, containers)
    request = read_request(original)
    queues = [sidecar_queue(ref, bodies[ref.name], i) for i, ref in enumerate(request.queues)]
    return inject(original, request, queues, SETTINGS)


def sidecar_of(mutated: dict[str, Any]) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        c for c in mutated["spec"].get("initContainers", []) if c["name"] == CONTAINER
    ]
    assert len(found) == 1, mutated["spec"]
    return found[0]


def config_of(mutated: dict[str, Any]) -> SidecarConfig:
    return parse_config(yaml.safe_load(mutated["metadata"]["annotations"][SIDECAR_CONFIG]))


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


BODIES = {"reminders": delay_queue("reminders"), "orders": kafka_queue("orders")}


def test_the_sidecar_is_added_as_a_native_sidecar_with_probes_and_a_config_the_sidecar_accepts() -> None:
    mutated = injected(BASIC, BODIES)
    sidecar = sidecar_of(mutated)
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == SETTINGS.image
    assert sidecar["command"] == ["queue-sidecar", "--config", "/etc/queue-sidecar/config.yaml"]
    assert {p["containerPort"] for p in sidecar["ports"]} == {3500, 9464}
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["securityContext"]["runAsNonRoot"] is True
    assert sidecar["resources"]["requests"]
    volume = next(v for v in mutated["spec"]["volumes"] if v["name"] == "queue-sidecar-config")
    field = volume["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"]
    assert field == f"metadata.annotations['{SIDECAR_CONFIG}']"

    config = config_of(mutated)
    assert (config.app.port, config.app.protocol, config.app.path, config.app.max_concurrency) == (
        8080,
        "http",
        "/messages",
        8,
    )
    assert config.publish.port == 3500
    reminders, orders = config.queue("reminders"), config.queue("orders")
    assert isinstance(reminders, DelayQueueConfig) and isinstance(orders, KafkaQueueConfig)
    # The node list comes from the operator's ConfigMap, mounted and watched (no restart when
    # nodes are added or drained).
    assert reminders.nodes is None
    # The pod may reach the queue's nodes through its NetworkPolicy.
    assert mutated["metadata"]["labels"]["delayqueue.queue-operator.dev/reminders"] == "client"
    assert str(reminders.nodes_file) == "/etc/queue-sidecar/nodes/0/nodes.json"
    volume = next(v for v in mutated["spec"]["volumes"] if v["name"] == "queue-sidecar-nodes-0")
    assert volume["configMap"] == {"name": "reminders-nodes"}
    assert {"name": "queue-sidecar-nodes-0", "mountPath": "/etc/queue-sidecar/nodes/0", "readOnly": True} in (
        sidecar["volumeMounts"]
    )
    assert (reminders.tube, reminders.redis_url) == ("reminders", "redis://redis:6379/0")
    assert (orders.brokers, orders.topic, orders.group, orders.offset, orders.dead_letter_topic) == (
        ["kafka-0.kafka:9092"],
        "orders",
        f"{NAMESPACE}.orders",
        "last",
        "orders.dlq",
    )
    assert orders.security() is None


def test_the_mutated_pod_validates_strictly_against_the_kubernetes_schema() -> None:
    mutated = injected(BASIC, BODIES)
    mutated["metadata"]["name"] = "worker-abcde"
    kubernetes_validate.validate(mutated, KUBE_VERSION, strict=True)


def test_spec_details_reach_the_config() -> None:
    reminders = delay_queue(
        "reminders",
        tube="jobs",
        replicas=2,
        maxJobBytes=1024,
        delivery={"maxAttempts": 7, "timeout": "5s", "backoff": {"initial": "100ms"}},
    )
    orders = kafka_queue(
        "orders",
        topic={"name": "orders.events"},
        group="billing",
        offset="first",
        deadLetterTopic="orders.dead",
    )
    config = config_of(injected(BASIC, {"reminders": reminders, "orders": orders}))
    dq, kq = config.queue("reminders"), config.queue("orders")
    assert isinstance(dq, DelayQueueConfig) and isinstance(kq, KafkaQueueConfig)
    assert (str(dq.nodes_file), dq.tube, dq.max_job_bytes) == (
        "/etc/queue-sidecar/nodes/0/nodes.json",
        "jobs",
        1024,
    )
    policy = dq.policy()
    assert (policy.max_attempts, policy.timeout, policy.backoff.initial) == (7, 5.0, 0.1)
    assert (kq.topic, kq.group, kq.offset, kq.dead_letter_topic) == (
        "orders.events",
        "billing",
        "first",
        "orders.dead",
    )


def test_secrets_are_mounted_never_copied(tmp_path: Path) -> None:
    reminders = delay_queue("reminders", redis={"secretRef": {"name": "redis-auth", "key": "url"}})
    orders = kafka_queue(
        "orders",
        auth={
            "sasl": {
                "mechanism": "SCRAM-SHA-512",
                "secretRef": {"name": "kafka-user", "usernameKey": "user"},
            },
            "tls": {"caSecretRef": {"name": "kafka-ca"}},
        },
    )
    mutated = injected(BASIC, {"reminders": reminders, "orders": orders})
    sidecar = sidecar_of(mutated)
    assert "env" not in sidecar
    volumes = {v["name"]: v for v in mutated["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    # Only the keys the sidecar needs, under fixed file names.
    expected = {
        "queue-sidecar-secret-0": ("redis-auth", [("url", "redis-url")], "/etc/queue-sidecar/secrets/0"),
        "queue-sidecar-secret-1": (
            "kafka-user",
            [("user", "username"), ("password", "password")],
            "/etc/queue-sidecar/secrets/1",
        ),
        "queue-sidecar-ca-1": ("kafka-ca", [("ca.crt", "ca.crt")], "/etc/queue-sidecar/tls/1"),
    }
    for name, (secret, items, directory) in expected.items():
        assert volumes[name]["secret"] == {
            "secretName": secret,
            "items": [{"key": key, "path": path} for key, path in items],
        }
        assert mounts[name] == directory
    text = mutated["metadata"]["annotations"][SIDECAR_CONFIG]
    kubernetes_validate.validate(
        {**mutated, "metadata": {**mutated["metadata"], "name": "w"}}, KUBE_VERSION, strict=True
    )

    # What the kubelet would do: the files hold the Secrets' values (moved under tmp_path).
    files = {
        "secrets/0/redis-url": "redis://:pw@redis:6379/1\n",
        "secrets/1/username": "billing",
        "secrets/1/password": "s3cret",
        "tls/1/ca.crt": "-----BEGIN CERTIFICATE-----",
    }
    for relative, content in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(content)
    config = parse_config(yaml.safe_load(text.replace("/etc/queue-sidecar/", f"{tmp_path}/")))
    dq, kq = config.queue("reminders"), config.queue("orders")
    assert isinstance(dq, DelayQueueConfig) and isinstance(kq, KafkaQueueConfig)
    assert dq.redis_url == "redis://:pw@redis:6379/1"
    security = kq.security()
    assert security is not None
    assert (security.sasl_mechanism, security.username, security.password, security.tls) == (
        "SCRAM-SHA-512",
        "billing",
        "s3cret",
        True,
    )
    assert security.ca_location == f"{tmp_path}/tls/1/ca.crt"
    assert "s3cret" not in str(mutated) and "pw@" not in str(mutated)


def test_publish_url_is_set_in_every_app_container_once() -> None:
    annotations = {**BASIC, "queue-operator.dev/publish-port": "3600"}
    mutated = injected(annotations, BODIES, containers=2)
    for container in mutated["spec"]["containers"]:
        names = [e["name"] for e in container["env"]]
        assert names.count(PUBLISH_URL_ENV) == 1
        assert env_of(container)[PUBLISH_URL_ENV] == "http://127.0.0.1:3600"
    assert PUBLISH_URL_ENV not in env_of(sidecar_of(mutated))
    assert config_of(mutated).publish.port == 3600


def test_a_publish_url_the_app_sets_itself_is_kept() -> None:
    original = pod(BASIC)
    original["spec"]["containers"][0]["env"] = [{"name": PUBLISH_URL_ENV, "value": "http://elsewhere:1"}]
    request = read_request(original)
    mutated = inject(
        original,
        request,
        [sidecar_queue(r, BODIES[r.name], i) for i, r in enumerate(request.queues)],
        SETTINGS,
    )
    assert mutated["spec"]["containers"][0]["env"] == [
        {"name": PUBLISH_URL_ENV, "value": "http://elsewhere:1"}
    ]


def test_injecting_twice_changes_nothing_and_a_later_app_container_gets_the_url() -> None:
    once = injected(BASIC, BODIES)
    request = read_request(once)
    twice = inject(once, request, [], SETTINGS)
    assert twice == once
    # Re-invoked after another webhook added a container: only that container changes.
    later = copy.deepcopy(once)
    later["spec"]["containers"].append({"name": "late", "image": "example/late:1"})
    again = inject(later, request, [], SETTINGS)
    assert env_of(again["spec"]["containers"][-1]) == {PUBLISH_URL_ENV: "http://127.0.0.1:3500"}
    assert again["spec"]["initContainers"] == once["spec"]["initContainers"]
    assert again["metadata"] == once["metadata"]


def test_existing_init_containers_and_volumes_are_kept() -> None:
    original = pod(BASIC)
    original["spec"]["initContainers"] = [{"name": "migrate", "image": "example/migrate:1"}]
    original["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    request = read_request(original)
    mutated = inject(
        original,
        request,
        [sidecar_queue(r, BODIES[r.name], i) for i, r in enumerate(request.queues)],
        SETTINGS,
    )
    assert [c["name"] for c in mutated["spec"]["initContainers"]] == [CONTAINER, "migrate"]
    assert [v["name"] for v in mutated["spec"]["volumes"]] == [
        "data",
        "queue-sidecar-config",
        "queue-sidecar-nodes-0",
    ]
    assert original["spec"]["initContainers"] == [
        {"name": "migrate", "image": "example/migrate:1"}
    ]  # not mutated


def test_grpc_app_and_short_queue_forms() -> None:
    annotations = {
        "queue-operator.dev/inject": "True",
        "queue-operator.dev/queues": " dq/reminders , kq/orders, dq/reminders",
        "queue-operator.dev/app-port": "50051",
        "queue-operator.dev/app-protocol": "grpc",
        "queue-operator.dev/max-concurrency": "32",
    }
    assert wants_injection(pod(annotations))
    config = config_of(injected(annotations, BODIES))
    assert (config.app.protocol, config.app.port, config.app.max_concurrency) == ("grpc", 50051, 32)
    assert [q.name for q in config.queues] == ["reminders", "orders"]


@pytest.mark.parametrize("value", [None, "false", "yes", ""])
def test_only_inject_true_asks_for_a_sidecar(value: str | None) -> None:
    annotations = {k: v for k, v in BASIC.items() if k != "queue-operator.dev/inject"}
    if value is not None:
        annotations["queue-operator.dev/inject"] = value
    assert not wants_injection(pod(annotations))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"queue-operator.dev/queues": None}, "annotation queue-operator.dev/queues is missing"),
        ({"queue-operator.dev/queues": " , "}, "annotation queue-operator.dev/queues lists no queue"),
        ({"queue-operator.dev/queues": "redis/x"}, "'redis/x' must be delayqueue/NAME or kafkaqueue/NAME"),
        (
            {"queue-operator.dev/queues": "reminders"},
            "'reminders' must be delayqueue/NAME or kafkaqueue/NAME",
        ),
        ({"queue-operator.dev/queues": "dq/Bad_Name"}, "'dq/Bad_Name' has no valid resource name"),
        ({"queue-operator.dev/queues": "dq/x,kq/x"}, "a DelayQueue and a KafkaQueue are both named 'x'"),
        ({"queue-operator.dev/app-port": None}, "annotation queue-operator.dev/app-port is missing"),
        (
            {"queue-operator.dev/app-port": "http"},
            "queue-operator.dev/app-port: 'http' is not a whole number",
        ),
        (
            {"queue-operator.dev/app-port": "70000"},
            "queue-operator.dev/app-port: '70000' is not a whole number from 1 to 65535",
        ),
        (
            {"queue-operator.dev/app-protocol": "tcp"},
            'queue-operator.dev/app-protocol: \'tcp\' is not known; write "http" or "grpc"',
        ),
        (
            {"queue-operator.dev/app-path": "messages"},
            "queue-operator.dev/app-path: 'messages' is not an HTTP path",
        ),
        (
            {"queue-operator.dev/max-concurrency": "0"},
            "queue-operator.dev/max-concurrency: '0' is not a whole number from 1 to 10000",
        ),
        ({"queue-operator.dev/max-concurrency": "-3"}, "queue-operator.dev/max-concurrency: '-3'"),
        (
            {"queue-operator.dev/publish-port": "x"},
            "queue-operator.dev/publish-port: 'x' is not a whole number",
        ),
        (
            {"queue-operator.dev/publish-port": "8080"},
            "app-port and queue-operator.dev/publish-port are both 8080",
        ),
        (
            {"queue-operator.dev/app-port": "9464"},
            "queue-operator.dev/app-port: 9464 is the sidecar's health port",
        ),
    ],
)
def test_bad_annotations_are_refused_naming_the_annotation(
    changes: dict[str, str | None], message: str
) -> None:
    annotations = {**BASIC}
    for key, value in changes.items():
        if value is None:
            annotations.pop(key)
        else:
            annotations[key] = value
    with pytest.raises(InjectionError) as caught:
        read_request(pod(annotations))
    assert message in str(caught.value)


def test_a_queue_with_an_invalid_spec_is_refused_naming_it() -> None:
    broken = kafka_queue("orders", offset="middle")
    with pytest.raises(
        InjectionError, match=r"kafkaqueue/orders cannot be used until its spec is fixed: spec.offset"
    ):
        injected(BASIC, {"reminders": BODIES["reminders"], "orders": broken})


def test_sasl_over_plaintext_is_refused_unless_the_queue_allows_it() -> None:
    sasl = {"mechanism": "PLAIN", "secretRef": {"name": "orders-user"}}
    plaintext = kafka_queue("orders", auth={"sasl": sasl})
    with pytest.raises(InjectionError, match=r"kafkaqueue/orders: SASL PLAIN without TLS .*allowPlaintext"):
        injected(BASIC, {"reminders": BODIES["reminders"], "orders": plaintext})
    allowed = kafka_queue("orders", auth={"sasl": sasl, "allowPlaintext": True})
    assert injected(BASIC, {"reminders": BODIES["reminders"], "orders": allowed})


def test_chart_values_for_the_sidecar_reach_injected_pods() -> None:
    """webhook.sidecar.resources and imagePullSecrets, rendered by Helm, parsed by the operator."""
    from chart.test_chart import render  # noqa: PLC0415

    from queue_operator.main import parse_args  # noqa: PLC0415
    from queue_operator.webhook import sidecar_settings  # noqa: PLC0415

    objects = render(
        "webhook.sidecar.resources.requests.cpu=20m",
        "webhook.sidecar.resources.limits.memory=128Mi",
        "webhook.sidecar.imagePullSecrets[0].name=sidecar-registry",
        "imagePullSecrets[0].name=corp-registry",
    )
    (deployment,) = [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-webhook")
    ]
    settings = sidecar_settings(parse_args(deployment["spec"]["template"]["spec"]["containers"][0]["args"]))
    original = pod(
        {
            "queue-operator.dev/inject": "true",
            "queue-operator.dev/queues": "delayqueue/reminders",
            "queue-operator.dev/app-port": "8080",
        }
    )
    original["spec"]["imagePullSecrets"] = [{"name": "app-registry"}]
    request = read_request(original)
    queues = [sidecar_queue(ref, delay_queue("reminders"), i) for i, ref in enumerate(request.queues)]
    mutated = inject(original, request, queues, settings)
    assert sidecar_of(mutated)["resources"]["requests"]["cpu"] == "20m"
    assert sidecar_of(mutated)["resources"]["limits"]["memory"] == "128Mi"
    assert mutated["spec"]["imagePullSecrets"] == [
        {"name": "app-registry"},  # the pod's own stay first
        {"name": "corp-registry"},
        {"name": "sidecar-registry"},
    ]
    # Once only: injecting again adds nothing.
    assert inject(mutated, request, queues, settings) == mutated
    kubernetes_validate.validate(mutated, "1.33.0", strict=True)


def test_a_provisioned_redis_reaches_the_sidecar_through_its_generated_secret() -> None:
    reminders = delay_queue("reminders")
    del reminders["spec"]["redis"]  # the operator provisions one: Secret reminders-redis, key url
    annotations = {**BASIC, "queue-operator.dev/queues": "delayqueue/reminders"}
    mutated = injected(annotations, {"reminders": reminders})
    volumes = {v["name"]: v for v in mutated["spec"]["volumes"]}
    assert volumes["queue-sidecar-secret-0"]["secret"] == {
        "secretName": "reminders-redis",
        "items": [{"key": "url", "path": "redis-url"}],
    }
    config = yaml.safe_load(mutated["metadata"]["annotations"][SIDECAR_CONFIG])
    assert config["queues"][0]["redis"] == {"urlFile": "/etc/queue-sidecar/secrets/0/redis-url"}
