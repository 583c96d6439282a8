"""A DelayQueue scaled 3 -> 5 -> 2 under load: nothing lost, early, doubled or revoked-yet-delivered.

Real pieces: the operator (on the API emulator), beanstalkd nodes started and stopped by a
small kubelet stand-in (``Kubelet`` below) as the StatefulSet's replicas change, Redis, the real
sidecar reading its node list from the file the kubelet copies from the operator's ConfigMap,
and the test HTTP app. Jobs go in through the sidecar's publish API at a steady rate.

The kubelet stand-in: each beanstalkd pod is a real beanstalkd on a loopback address of its own
(127.A.B.<ordinal+1>) on the real port 11300, with a data directory per ordinal that outlives
the process (its PVC). The operator and the sidecar run through ``unshare -m`` with a private
/etc/hosts, so the nodes' DNS names (``<name>-beanstalkd-<i>.<name>-beanstalkd.<ns>.svc``)
resolve for them and nothing outside is touched. The ConfigMap ``<name>-nodes`` is copied into
a file by an atomic rename, as the kubelet updates a mounted ConfigMap.

Size: ``ELASTIC_JOBS`` jobs (default 600 over about 30 s, delays 0-20 s); the issue's full
2,000 in the same shape: ``benchmarks/elastic_delayqueue.sh`` (``ELASTIC_JOBS=2000``).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import greenstalk
import pytest
import redis as redis_client

from harness import tools
from harness.kube_operator import REPO, Cluster, OperatorProcess, eventually
from harness.servers import ManagedProcess, RedisServer, free_port

SIDECAR_BIN = Path(sys.executable).parent / "queue-sidecar"
PORT = 11300


def private_hosts(hosts_file: Path) -> list[str]:
    """A command prefix running a process with ``hosts_file`` as its /etc/hosts."""
    return ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts_file)]


class Kubelet:
    """Starts and stops beanstalkd 'pods' as the StatefulSet's replicas change; fills its status."""

    def __init__(self, cluster: Cluster, name: str, workdir: Path, *, nodes_file: Path) -> None:
        self.cluster = cluster
        self.name = name
        self.sts = f"{name}-beanstalkd"
        self.workdir = workdir
        self.nodes_file = nodes_file
        self.net = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}."
        self.hosts_file = workdir / "hosts"
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.replicas_seen: list[tuple[float, int]] = []  # (time, StatefulSet spec.replicas)
        self.conditions_seen: list[dict[str, Any]] = []  # Progressing/Degraded as they changed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubelet", daemon=True)
        self.errors: list[str] = []

    def host(self, ordinal: int) -> str:
        return f"{self.sts}-{ordinal}.{self.sts}.{self.cluster.namespace}.svc"

    def address(self, ordinal: int) -> str:
        return f"{self.net}{ordinal + 1}"

    def write_hosts(self, ordinals: int = 9) -> None:
        lines = ["127.0.0.1 localhost"] + [f"{self.address(i)} {self.host(i)}" for i in range(ordinals)]
        self.hosts_file.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.write_hosts()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            proc.wait(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # reported by the test, not raised in a thread
                self.errors.append(repr(exc))
            self._stop.wait(0.3)

    def sync(self) -> None:
        try:
            sts = self.cluster.apps.read_namespaced_stateful_set(self.sts, self.cluster.namespace)
        except Exception:
            return  # not created yet
        replicas = int(sts.spec.replicas or 0)
        if not self.replicas_seen or self.replicas_seen[-1][1] != replicas:
            self.replicas_seen.append((time.time(), replicas))
        for ordinal in range(replicas):
            if ordinal not in self.procs:
                self.procs[ordinal] = self._start_node(ordinal)
        for ordinal in [o for o in self.procs if o >= replicas]:
            proc = self.procs.pop(ordinal)
            proc.terminate()
            proc.wait(10)
        status = {
            "replicas": replicas,
            "readyReplicas": replicas,
            "updatedReplicas": replicas,
            "currentReplicas": replicas,
            "currentRevision": "r1",
            "updateRevision": "r1",
            "observedGeneration": sts.metadata.generation,
        }
        if (sts.status and sts.status.ready_replicas) != replicas or (
            sts.status and sts.status.observed_generation
        ) != sts.metadata.generation:
            self.cluster.apps.patch_namespaced_stateful_set_status(
                self.sts, self.cluster.namespace, {"status": status}
            )
        self._copy_configmap()
        self._note_conditions()

    def kill_node(self, ordinal: int) -> None:
        """The node's process dies and stays dead (its pod still counts as there)."""
        self.procs[ordinal].kill()
        self.procs[ordinal].wait(10)

    def revive_node(self, ordinal: int) -> None:
        self.procs[ordinal] = self._start_node(ordinal)

    def _start_node(self, ordinal: int) -> subprocess.Popen[bytes]:
        data = self.workdir / f"data-{ordinal}"  # the node's PVC: kept when the pod goes
        data.mkdir(exist_ok=True)
        log = (self.workdir / f"beanstalkd-{ordinal}.log").open("ab")
        argv = [tools.beanstalkd(), "-l", self.address(ordinal), "-p", str(PORT), "-b", str(data)]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex((self.address(ordinal), PORT)) == 0:
                    return proc
            time.sleep(0.05)
        raise RuntimeError(f"beanstalkd {ordinal} did not listen on {self.address(ordinal)}:{PORT}")

    def _copy_configmap(self) -> None:
        try:
            cm = self.cluster.core.read_namespaced_config_map(f"{self.name}-nodes", self.cluster.namespace)
        except Exception:
            return
        text = (cm.data or {}).get("nodes.json")
        if text is None:
            return
        if self.nodes_file.exists() and self.nodes_file.read_text() == text:
            return
        tmp = self.nodes_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.nodes_file)  # atomic, as the kubelet's symlink swap

    def _note_conditions(self) -> None:
        body = self.cluster.get("delayqueues", self.name)
        for cond in (body.get("status") or {}).get("conditions") or []:
            if cond["type"] in ("Progressing", "Degraded") and cond["status"] == "True":
                entry = {"type": cond["type"], "reason": cond["reason"], "message": cond["message"]}
                if entry not in self.conditions_seen:
                    self.conditions_seen.append(entry)

    def tube_jobs(self, ordinals: Sequence[int], tube: str) -> int:
        """Jobs of ``tube`` on the running nodes ``ordinals``, any state."""
        total = 0
        for ordinal in ordinals:
            client = greenstalk.Client((self.address(ordinal), PORT))
            try:
                stats = client.stats_tube(tube)
            except greenstalk.NotFoundError:
                stats = {}
            finally:
                client.close()
            total += sum(
                int(stats.get(f"current-jobs-{s}", 0)) for s in ("ready", "delayed", "buried", "reserved")
            )
        return total


class App(ManagedProcess):
    """The scriptable HTTP test app (tests/apps/http_app.py): records every delivery with its time."""

    name = "http-app"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.script_path = workdir / "script.json"
        self.record_path = workdir / "received.jsonl"
        self.script_path.write_text(json.dumps({"default": {}, "bodies": {}}))

    def argv(self) -> Sequence[str]:
        app = REPO / "tests" / "apps" / "http_app.py"
        return [
            sys.executable,
            str(app),
            "--port",
            str(self.port),
            "--script",
            str(self.script_path),
            "--record",
            str(self.record_path),
        ]

    def received(self) -> list[dict[str, Any]]:
        if not self.record_path.exists():
            return []
        return [json.loads(line) for line in self.record_path.read_text().splitlines() if line]


class Sidecar(ManagedProcess):
    """The real sidecar, with the nodes' DNS names from the kubelet's hosts file."""

    name = "sidecar"

    def __init__(self, workdir: Path, config: dict[str, Any], wrapper: list[str]) -> None:
        health = config.setdefault("health", {}).setdefault("port", free_port())
        super().__init__(workdir, health)
        config.setdefault("publish", {}).setdefault("port", free_port())
        self.config = config
        self.config_path = workdir / "sidecar.yaml"
        self.config_path.write_text(json.dumps(config))
        self.wrapper = wrapper

    @property
    def publish_url(self) -> str:
        return f"http://127.0.0.1:{self.config['publish']['port']}"

    def argv(self) -> Sequence[str]:
        return [*self.wrapper, str(SIDECAR_BIN), "--config", str(self.config_path)]

    def env(self) -> dict[str, str]:
        return {**super().env(), "PYTHONUNBUFFERED": "1"}


NAME = "reminders"
JOBS = int(os.environ.get("ELASTIC_JOBS", "600"))
PUBLISH_SECONDS = float(os.environ.get("ELASTIC_PUBLISH_SECONDS", "30"))
MAX_DELAY = 20.0
DRAIN_GRACE = 6.0  # the sidecar polls its nodes file every 2 s; the kubelet here copies at once


class Publisher(threading.Thread):
    """Publishes ``count`` jobs through the sidecar at a steady rate; revokes about 1 in 10."""

    def __init__(self, sidecar: Sidecar, count: int, seconds: float) -> None:
        super().__init__(name="publisher", daemon=True)
        self.url = f"{sidecar.publish_url}/v1/delayqueues/{NAME}/jobs"
        self.count, self.seconds = count, seconds
        self.published: dict[int, float] = {}  # index -> due time
        self.revoked: set[int] = set()
        self.ids: dict[int, str] = {}
        self.revoked_at: dict[int, float] = {}
        self.uncertain: set[int] = set()  # revokes that failed: may or may not hold
        self.failures: list[str] = []
        self.rng = random.Random(14)

    def run(self) -> None:
        start = time.time()
        for i in range(self.count):
            pause = start + i * self.seconds / self.count - time.time()
            if pause > 0:
                time.sleep(pause)
            delay = round(self.rng.uniform(0, MAX_DELAY), 3)
            due = time.time() + delay
            body = json.dumps({"i": i, "due": due}).encode()
            try:
                job_id = self._request("POST", f"{self.url}?delay={delay}s", body)["id"]
            except Exception as exc:
                self.failures.append(f"publish {i}: {exc}")
                continue
            self.published[i] = due
            self.ids[i] = job_id
            if delay > 5 and self.rng.random() < 0.1:
                try:
                    self._request("DELETE", f"{self.url}/{job_id}", b"")
                    self.revoked.add(i)
                    self.revoked_at[i] = time.time()
                except Exception as exc:
                    self.uncertain.add(i)
                    self.failures.append(f"revoke {i}: {exc}")

    @staticmethod
    def _request(method: str, url: str, body: bytes) -> dict[str, Any]:
        request = urllib.request.Request(url, data=body or None, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else {}


@pytest.fixture
def elastic(
    cluster: Cluster, operator: OperatorProcess, tmp_path: Path
) -> Iterator[tuple[Kubelet, Sidecar, App]]:
    kubelet = Kubelet(cluster, NAME, tmp_path / "kubelet", nodes_file=tmp_path / "nodes.json")
    kubelet.workdir.mkdir()
    kubelet.start()
    operator.stop()
    operator.wrapper = private_hosts(kubelet.hosts_file)
    operator.extra_args = ["--drain-grace", str(DRAIN_GRACE)]
    operator.start()
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    app = App(tmp_path / "app")
    app.start()
    sidecar: Sidecar | None = None
    try:
        cluster.apply(
            [
                {
                    "apiVersion": "queue-operator.dev/v1alpha1",
                    "kind": "DelayQueue",
                    "metadata": {"name": NAME},
                    "spec": {"replicas": 3, "redis": {"url": redis.url}},
                }
            ]
        )
        eventually(
            lambda: kubelet.nodes_file.exists() and len(kubelet.procs) == 3, what="3 nodes and the ConfigMap"
        )
        config = {
            "app": {"protocol": "http", "port": app.port, "timeout": "5s"},
            "queues": [
                {
                    "kind": "DelayQueue",
                    "name": NAME,
                    "nodesFile": str(kubelet.nodes_file),
                    "tube": NAME,
                    "redis": {"url": redis.url},
                }
            ],
        }
        sidecar = Sidecar(tmp_path / "sidecar", config, private_hosts(kubelet.hosts_file))
        sidecar.start()
        yield kubelet, sidecar, app
    finally:
        if sidecar is not None:
            sidecar.kill()
        app.kill()
        kubelet.stop()
        redis.kill()
        if os.environ.get("QUEUE_OPERATOR_TEST_SHOW_LOG"):
            sys.stderr.write(operator.log())


def test_scaling_3_5_2_under_load_loses_nothing(
    cluster: Cluster, operator: OperatorProcess, elastic: tuple[Kubelet, Sidecar, App]
) -> None:
    kubelet, sidecar, app = elastic
    assert sidecar.proc is not None
    pid = sidecar.proc.pid
    publisher = Publisher(sidecar, JOBS, PUBLISH_SECONDS)
    started = time.time()
    publisher.start()

    time.sleep(PUBLISH_SECONDS * 0.25)
    cluster.patch("delayqueues", NAME, {"spec": {"replicas": 5}})
    eventually(lambda: len(kubelet.procs) == 5, what="5 nodes")
    # New nodes take writes without a restart: copies show up on nodes 3 and 4.
    eventually(lambda: kubelet.tube_jobs([3, 4], NAME) > 0, timeout=20, what="copies on the new nodes")

    time.sleep(max(0.0, started + PUBLISH_SECONDS * 0.55 - time.time()))
    scaled_down_at = time.time()
    cluster.patch("delayqueues", NAME, {"spec": {"replicas": 2}})
    eventually(
        lambda: len(kubelet.procs) == 2, timeout=120, what="the StatefulSet shrunk to 2 after the drain"
    )
    drain_seconds = time.time() - scaled_down_at

    publisher.join(PUBLISH_SECONDS + 30)
    assert not publisher.failures, publisher.failures[:5]
    expected = set(publisher.published) - publisher.revoked
    last_due = max(publisher.published.values())

    def delivered() -> Counter[int]:
        return Counter(json.loads(entry["body"])["i"] for entry in app.received())

    eventually(
        lambda: expected <= set(delivered()), timeout=max(30.0, last_due - time.time() + 30), what="every job"
    )
    time.sleep(3)  # a duplicate would come now
    entries = app.received()
    counts = delivered()
    lateness = [entry["t"] - json.loads(entry["body"])["due"] for entry in entries]
    early = [late for late in lateness if late < 0]
    doubled = [i for i, n in counts.items() if n > 1]
    revoked_delivered = publisher.revoked & set(counts)
    lost = expected - set(counts)
    moved = [int(n) for n in re.findall(r"\((\d+) job copies moved\)", operator.log())]
    print(
        f"\nelastic: {len(publisher.published)} published, {len(publisher.revoked)} revoked, "
        f"{len(entries)} delivered; max lateness {max(lateness):.3f}s; drain (replicas 5 -> 2 "
        f"until the StatefulSet shrank) {drain_seconds:.1f}s, {sum(moved)} copies moved; "
        f"conditions seen: {kubelet.conditions_seen}"
    )
    assert sum(moved) > 0, "the leaving nodes held jobs that had to be moved"
    assert not lost, f"{len(lost)} lost"
    assert not early, f"{len(early)} early, up to {min(early):.3f}s"
    assert not doubled, f"{len(doubled)} delivered twice"
    assert not revoked_delivered, f"{len(revoked_delivered)} revoked jobs delivered"
    # The sidecar followed the nodes without a restart.
    assert sidecar.proc is not None and sidecar.proc.poll() is None and sidecar.proc.pid == pid
    assert [r for _, r in kubelet.replicas_seen] == [3, 5, 2]
    assert any(c["type"] == "Progressing" and c["reason"] == "Draining" for c in kubelet.conditions_seen)
    assert not kubelet.errors, kubelet.errors[:3]
    body = cluster.get("delayqueues", NAME)
    assert "drain" not in (body.get("status") or {})
    nodes = json.loads(kubelet.nodes_file.read_text())["nodes"]
    assert [n["state"] for n in nodes] == ["active", "active"]


def condition(cluster: Cluster, kind: str) -> dict[str, Any]:
    conditions = (cluster.get("delayqueues", NAME).get("status") or {}).get("conditions") or []
    return next(c for c in conditions if c["type"] == kind)


def test_a_drain_that_cannot_finish_is_reported_and_retried_never_forced(
    cluster: Cluster, elastic: tuple[Kubelet, Sidecar, App]
) -> None:
    kubelet, sidecar, app = elastic
    url = f"{sidecar.publish_url}/v1/delayqueues/{NAME}/jobs"
    due = time.time() + 15
    for i in range(20):
        body = json.dumps({"i": i, "due": due}).encode()
        Publisher._request("POST", f"{url}?delay={due - time.time():.3f}s", body)
    # The user-supplied Redis here has no AOF: reported in a condition and in /v1/status.
    durable = eventually(lambda: condition(cluster, "RedisDurable"), what="RedisDurable")
    assert (durable["status"], durable["reason"]) == ("False", "RedisMayLoseRecords"), durable
    assert "appendonly" in durable["message"] and "redis://" not in durable["message"]
    with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.port}/v1/status", timeout=5) as response:
        warnings = json.loads(response.read())["queues"][NAME]["warnings"]
    assert any("appendonly" in w for w in warnings), warnings
    kubelet.kill_node(2)  # the leaving node is unreachable: its jobs cannot be moved
    cluster.patch("delayqueues", NAME, {"spec": {"replicas": 2}})
    degraded = eventually(
        lambda: (c := condition(cluster, "Degraded"))["reason"] == "DrainStuck" and c,
        timeout=30,
        what="DrainStuck",
    )
    assert degraded["status"] == "True" and "unreachable" in degraded["message"], degraded
    assert condition(cluster, "Progressing")["reason"] == "Draining"
    time.sleep(3)  # retried, never forced: the node stays
    assert kubelet.replicas_seen[-1][1] == 3
    kubelet.revive_node(2)  # back with its binlog: the drain finishes, then the node goes
    eventually(lambda: len(kubelet.procs) == 2, timeout=60, what="the StatefulSet shrunk after the drain")
    eventually(lambda: condition(cluster, "Degraded")["status"] == "False", what="Degraded cleared")
    eventually(
        lambda: len(app.received()) >= 20,
        timeout=max(10.0, due - time.time() + 15),
        what="every job delivered",
    )
    time.sleep(2)
    counts = Counter(json.loads(entry["body"])["i"] for entry in app.received())
    assert counts == Counter(range(20)), "each job exactly once"
    assert all(entry["t"] >= due for entry in app.received()), "none early"


class PodRedis:
    """redis-server with the command line and password of the operator's pod spec, on the
    address its Service name resolves to (a stand-in for the provisioned Redis's pod)."""

    def __init__(self, workdir: Path, container: dict[str, Any], password: str, address: str) -> None:
        self.workdir, self.address = workdir, address
        workdir.mkdir(parents=True, exist_ok=True)
        args = [re.sub(r"\$\((\w+)\)", lambda _: password, a) for a in container["args"]]
        args[args.index("--dir") + 1] = str(workdir)  # the pod's data volume
        self.argv = [tools.redis_server(), *args, "--bind", address]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex((self.address, 6379)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("redis did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no shutdown save, only the AOF
        self.proc.wait(10)


def test_the_provisioned_redis_killed_mid_stream_loses_nothing(
    cluster: Cluster, operator: OperatorProcess, tmp_path: Path
) -> None:
    kubelet = Kubelet(cluster, NAME, tmp_path / "kubelet", nodes_file=tmp_path / "nodes.json")
    kubelet.workdir.mkdir()
    redis_address = f"{kubelet.net}100"
    kubelet.start()
    with kubelet.hosts_file.open("a") as hosts:
        hosts.write(f"{redis_address} {NAME}-redis.{cluster.namespace}.svc\n")
    operator.stop()
    operator.wrapper = private_hosts(kubelet.hosts_file)
    operator.start()
    app = App(tmp_path / "app")
    app.start()
    redis: PodRedis | None = None
    sidecar: Sidecar | None = None
    try:
        doc = {"apiVersion": "queue-operator.dev/v1alpha1", "kind": "DelayQueue", "metadata": {"name": NAME}}
        cluster.apply([{**doc, "spec": {"replicas": 3}}])  # no spec.redis: provisioned
        sts = eventually(
            lambda: cluster.apps.read_namespaced_stateful_set(f"{NAME}-redis", cluster.namespace),
            what="Redis",
        )
        (container,) = cluster.api.sanitize_for_serialization(sts.spec.template)["spec"]["containers"]
        secret = cluster.core.read_namespaced_secret(f"{NAME}-redis", cluster.namespace)
        password = base64.b64decode(secret.data["password"]).decode()
        url_file = tmp_path / "redis-url"  # as the webhook mounts the Secret's url key
        url_file.write_text(base64.b64decode(secret.data["url"]).decode())
        redis = PodRedis(tmp_path / "redis", container, password, redis_address)
        redis.start()
        eventually(lambda: kubelet.nodes_file.exists() and len(kubelet.procs) == 3, what="3 nodes")
        config = {
            "app": {"protocol": "http", "port": app.port, "timeout": "5s"},
            "queues": [
                {
                    "kind": "DelayQueue",
                    "name": NAME,
                    "nodesFile": str(kubelet.nodes_file),
                    "redis": {"urlFile": str(url_file)},
                }
            ],
        }
        sidecar = Sidecar(tmp_path / "sidecar", config, private_hosts(kubelet.hosts_file))
        sidecar.start()
        count, seconds = 300, 15.0
        publisher = Publisher(sidecar, count, seconds)
        publisher.start()
        time.sleep(seconds * 0.4)
        redis.kill()
        killed_at = time.time()
        time.sleep(1.0)
        redis.start()  # from its append-only file
        # Tombstones written before the kill (past the AOF's 1 s fsync) came back with it.
        store = redis_client.Redis.from_url(
            url_file.read_text().replace(f"{NAME}-redis.{cluster.namespace}.svc", redis_address)
        )
        before = [publisher.ids[i] for i, at in publisher.revoked_at.items() if at < killed_at - 1.5]
        assert before and all(store.hget(f"dq:{NAME}:j:{job}", "revoked") for job in before)
        publisher.join(seconds + 30)
        expected = set(publisher.published) - publisher.revoked - publisher.uncertain
        last_due = max(publisher.published.values())

        def delivered() -> Counter[int]:
            return Counter(json.loads(entry["body"])["i"] for entry in app.received())

        eventually(
            lambda: expected <= set(delivered()),
            timeout=max(30.0, last_due - time.time() + 30),
            what="every job",
        )
        time.sleep(3)
        counts = delivered()
        refused = count - len(publisher.published)
        print(
            f"\nredis SIGKILL: {len(publisher.published)} published ({refused} refused "
            f"during the outage), {len(publisher.revoked)} revoked, {sum(counts.values())} delivered, "
            f"{sum(n - 1 for n in counts.values())} duplicates"
        )
        assert not (expected - set(counts)), "nothing lost"
        assert not (publisher.revoked & set(counts)), "no revoked job delivered"
        assert sidecar.proc is not None and sidecar.proc.poll() is None
    finally:
        if sidecar is not None:
            sidecar.kill()
        if redis is not None and redis.proc is not None and redis.proc.poll() is None:
            redis.kill()
        app.kill()
        kubelet.stop()
