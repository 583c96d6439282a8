"""The webhook's queue cache against the API: listed, then kept by a watch; kept while the API is away."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from injection.objects import delay_queue, kafka_queue

from harness.kube import KubeApi
from harness.kube_operator import REPO, Cluster, eventually
from queue_operator.kube import Kube
from queue_operator.queue_cache import QueueCache


@pytest.fixture
def cluster(kube: KubeApi, unique: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))
    kube.apply_crds(sorted((REPO / "crds").glob("*.yaml")))
    kube.create_namespace(unique)
    kube.create_namespace(f"{unique}-other")
    with kube.client() as api:
        yield Cluster(kube, unique, api)


def create(cluster: Cluster, body: dict[str, object], namespace: str | None = None) -> None:
    body["metadata"]["namespace"] = namespace or cluster.namespace  # type: ignore[index]
    plural = str(body["kind"]).lower() + "s"
    cluster.objects.create_namespaced_custom_object(
        "queue-operator.dev", "v1alpha1", namespace or cluster.namespace, plural, body
    )


@pytest.fixture
def started() -> Iterator[list[QueueCache]]:
    caches: list[QueueCache] = []
    yield caches
    for cache in caches:
        cache.stop()


@pytest.mark.parametrize("transport", ["urllib3", "kubernetes library"])
def test_listed_then_watched_with_only_what_injection_reads(
    kube: KubeApi, cluster: Cluster, started: list[QueueCache], transport: str
) -> None:
    ns = cluster.namespace
    create(cluster, delay_queue("reminders"))
    create(cluster, delay_queue("elsewhere"), namespace=f"{ns}-other")
    # The kubernetes library's client is what kubeconfigs with an exec plugin get.
    client = (
        Kube.from_environment(timeout=5.0) if transport == "urllib3" else Kube(kube.client(), timeout=5.0)
    )
    cache = QueueCache(client, [ns], watch_timeout=1)
    started.append(cache)
    cache.start()
    assert cache.wait_synced(10)
    listed = cache.get("DelayQueue", ns, "reminders")
    assert listed is not None and listed["spec"]["redis"] == {"url": "redis://redis:6379/0"}
    assert set(listed) == {"metadata", "spec"}  # no status: the controller rewrites it all the time
    assert cache.get("DelayQueue", f"{ns}-other", "elsewhere") is None  # not a watched namespace

    create(cluster, kafka_queue("orders"))
    eventually(lambda: cache.get("KafkaQueue", ns, "orders"), 10, "a new queue seen")
    cluster.patch("delayqueues", "reminders", {"spec": {"tube": "later"}})
    eventually(lambda: (cache.get("DelayQueue", ns, "reminders") or {})["spec"].get("tube") == "later", 10)
    cluster.delete("kafkaqueues", "orders")
    eventually(lambda: cache.get("KafkaQueue", ns, "orders") is None, 10, "a deleted queue dropped")
    # A watch the server ended (timeoutSeconds) is resumed: changes after it are seen too.
    time.sleep(1.5)
    cluster.patch("delayqueues", "reminders", {"spec": {"tube": "resumed"}})
    eventually(lambda: (cache.get("DelayQueue", ns, "reminders") or {})["spec"].get("tube") == "resumed", 10)


def test_globs_watch_the_cluster_and_keep_the_matching_namespaces(
    cluster: Cluster, started: list[QueueCache]
) -> None:
    ns = cluster.namespace
    create(cluster, delay_queue("reminders"))
    create(cluster, delay_queue("elsewhere"), namespace=f"{ns}-other")
    cache = QueueCache(Kube.from_environment(timeout=5.0), [f"{ns}-o*"])
    started.append(cache)
    cache.start()
    assert cache.wait_synced(10)
    assert cache.get("DelayQueue", f"{ns}-other", "elsewhere") is not None
    assert cache.get("DelayQueue", ns, "reminders") is None


def test_the_queues_known_stay_while_the_api_is_away(
    kube: KubeApi, cluster: Cluster, started: list[QueueCache]
) -> None:
    if not kube.is_emulator:
        pytest.skip("stops the Kubernetes API: only with the emulator")
    create(cluster, delay_queue("reminders"))
    cache = QueueCache(Kube.from_environment(timeout=2.0), [cluster.namespace])
    started.append(cache)
    cache.start()
    assert cache.wait_synced(10)
    kube.stop()
    time.sleep(2)  # the watch broke and is retrying
    assert cache.get("DelayQueue", cluster.namespace, "reminders") is not None
