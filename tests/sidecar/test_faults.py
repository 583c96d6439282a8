"""The sidecar under faults: app down, sidecar killed, sidecar stopped, too much at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from harness.servers import BeanstalkdCluster, RedisServer, Tansu

from .clients import committed_offsets, create_topics, dq_delay, kafka_push, tube_counts
from .conftest import App, Sidecar, app_config, delay_queue, kafka_queue, wait_until


def test_app_down_at_start_then_up_nothing_lost_no_attempt_burned(  # noqa: PLR0917
    make_sidecar: Callable[..., Sidecar],
    tmp_path: Path,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    kafka_broker: Tansu,
    unique: str,
) -> None:
    dq, kq = f"{unique}-d", f"{unique}-k"
    create_topics(kafka_broker.bootstrap, kq, f"{kq}.dlq")
    app = App(tmp_path / "late-app", "http")
    app.script({})
    sidecar = make_sidecar(
        {
            "app": app_config(app),
            "queues": [
                delay_queue(dq, beanstalk_cluster.addresses, shared_redis.url),
                kafka_queue(kq, kafka_broker.bootstrap),
            ],
        }
    )
    try:
        dq_delay(beanstalk_cluster.addresses, dq, shared_redis.url, b"early-job", 0)
        kafka_push(kafka_broker.bootstrap, kq, b"early-order", key=b"k")
        # The sidecar serves (so the pod is not held back) but says it waits for the app.
        wait_until(lambda: sidecar.get("/readyz")[0] == 200, 10, "readyz: the sidecar serves")
        assert sidecar.status()["app"]["up"] is False
        for state in sidecar.status()["queues"].values():
            assert state["state"] == "waiting" and "app not accepting connections" in state["reason"]
        assert sidecar.get("/healthz")[0] == 200
        time.sleep(2)  # longer than maxAttempts x backoff: nothing may be burned meanwhile
        assert tube_counts(beanstalk_cluster.addresses, dq)["buried"] == 0

        app.start()
        [job] = app.wait_for("early-job")
        [order] = app.wait_for("early-order")
        assert job["headers"]["X-Attempt"] == "1" and order["headers"]["X-Attempt"] == "1"
        sidecar.wait_ready()

        # Down again mid-run: messages wait (attempts not counted) and come when it is back.
        app.kill()
        wait_until(lambda: not sidecar.status()["app"]["up"], 10, "status: the app is down", sidecar.status)
        assert sidecar.get("/readyz")[0] == 200  # the app's own probe takes it out, not ours
        dq_delay(beanstalk_cluster.addresses, dq, shared_redis.url, b"while-down", 0)
        time.sleep(2)
        app.start()
        [again] = app.wait_for("while-down")
        assert again["headers"]["X-Attempt"] == "1"
        assert tube_counts(beanstalk_cluster.addresses, dq)["buried"] == 0
    finally:
        app.kill()


def test_sidecar_killed_mid_delivery_delivers_again_after_restart(  # noqa: PLR0917
    make_sidecar: Callable[..., Sidecar],
    http_app: App,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    kafka_broker: Tansu,
    unique: str,
) -> None:
    dq, kq = f"{unique}-d", f"{unique}-k"
    create_topics(kafka_broker.bootstrap, kq, f"{kq}.dlq")
    http_app.script(
        {"slow-job": [{"sleep": 60}, {"status": 200}], "slow-msg": [{"sleep": 60}, {"status": 200}]}
    )
    sidecar = make_sidecar(
        {
            "app": app_config(http_app, timeout="30s"),
            "queues": [
                delay_queue(dq, beanstalk_cluster.addresses, shared_redis.url),
                kafka_queue(kq, kafka_broker.bootstrap),
            ],
        }
    )
    sidecar.wait_ready()
    job_id = dq_delay(beanstalk_cluster.addresses, dq, shared_redis.url, b"slow-job", 0)
    kafka_push(kafka_broker.bootstrap, kq, b"slow-msg", key=b"k")
    http_app.wait_for("slow-job")
    http_app.wait_for("slow-msg")
    sidecar.kill()  # SIGKILL while the app holds both messages

    sidecar.start()
    first, second = http_app.wait_for("slow-job", 2, timeout=40)
    assert first["headers"]["X-Message-Id"] == second["headers"]["X-Message-Id"] == job_id
    first, second = http_app.wait_for("slow-msg", 2, timeout=40)
    assert first["headers"]["X-Message-Id"] == second["headers"]["X-Message-Id"]
    wait_until(lambda: sum(tube_counts(beanstalk_cluster.addresses, dq).values()) == 0, 10, "job deleted")


def test_sigterm_finishes_in_flight_then_exits_0(  # noqa: PLR0917
    make_sidecar: Callable[..., Sidecar],
    http_app: App,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    kafka_broker: Tansu,
    unique: str,
) -> None:
    dq, kq = f"{unique}-d", f"{unique}-k"
    create_topics(kafka_broker.bootstrap, kq, f"{kq}.dlq")
    http_app.script({"drain-job": [{"sleep": 1.5}], "drain-msg": [{"sleep": 1.5}]})
    sidecar = make_sidecar(
        {
            "app": app_config(http_app),
            "queues": [
                delay_queue(dq, beanstalk_cluster.addresses, shared_redis.url),
                kafka_queue(kq, kafka_broker.bootstrap),
            ],
            "shutdownGracePeriod": "10s",
        }
    )
    sidecar.wait_ready()
    dq_delay(beanstalk_cluster.addresses, dq, shared_redis.url, b"drain-job", 0)
    dq_delay(beanstalk_cluster.addresses, dq, shared_redis.url, b"after-stop", 60)
    _, offset = kafka_push(kafka_broker.bootstrap, kq, b"drain-msg", key=b"k")
    http_app.wait_for("drain-job")
    http_app.wait_for("drain-msg")

    assert sidecar.terminate_and_wait() == 0
    # Both in-flight messages were answered and acknowledged: the job deleted, the offset
    # committed. The job not yet due (three copies) is still queued for the next sidecar.
    assert len(http_app.received("drain-job")) == 1 and len(http_app.received("drain-msg")) == 1

    def counts() -> dict[str, int]:
        return tube_counts(beanstalk_cluster.addresses, dq)

    left = {"ready": 0, "delayed": 3, "reserved": 0, "buried": 0}
    wait_until(lambda: counts() == left, 5, "only the later job left", counts)
    assert committed_offsets(kafka_broker.bootstrap, kq, f"{kq}-app") == {0: offset + 1}
    log = (sidecar.workdir / "sidecar.log").read_text()
    assert '"msg": "sidecar stopped"' in log


def test_max_concurrency_caps_messages_in_flight_across_queues(  # noqa: PLR0917
    make_sidecar: Callable[..., Sidecar],
    http_app: App,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    kafka_broker: Tansu,
    unique: str,
) -> None:
    dq, kq = f"{unique}-d", f"{unique}-k"
    create_topics(kafka_broker.bootstrap, kq, f"{kq}.dlq")
    http_app.script({}, default={"sleep": 0.3})
    sidecar = make_sidecar(
        {
            "app": app_config(http_app, maxConcurrency=2),
            "queues": [
                delay_queue(dq, beanstalk_cluster.addresses, shared_redis.url),
                kafka_queue(kq, kafka_broker.bootstrap),
            ],
        }
    )
    sidecar.wait_ready()
    for i in range(4):
        dq_delay(beanstalk_cluster.addresses, dq, shared_redis.url, f"job-{i}".encode(), 0)
        kafka_push(kafka_broker.bootstrap, kq, f"msg-{i}".encode())  # no key: no order, all concurrent
    wait_until(lambda: len(http_app.received()) >= 8, 30, "8 deliveries")
    assert max(entry["in_flight"] for entry in http_app.received()) <= 2


def test_redis_down_keeps_readyz_and_status_names_the_queue_without_secrets(
    make_sidecar: Callable[..., Sidecar],
    http_app: App,
    beanstalk_cluster: BeanstalkdCluster,
    redis_server: RedisServer,
) -> None:
    # Redis 6+ accepts any password for its default user, so this URL works, and carries a secret.
    url = f"redis://:hunter2@127.0.0.1:{redis_server.port}/0"
    queue = delay_queue("reminders", beanstalk_cluster.addresses, url)
    sidecar = make_sidecar({"app": app_config(http_app), "queues": [queue]})
    sidecar.wait_ready()

    redis_server.stop()

    def unavailable() -> dict[str, str] | None:
        queue = sidecar.status()["queues"]["reminders"]
        return queue if queue["state"] == "unavailable" and "redis unreachable" in queue["reason"] else None

    queue_state = wait_until(unavailable, 20, "status naming the queue's trouble", sidecar.status)
    assert "hunter2" not in str(queue_state) and "hunter2" not in sidecar.get("/v1/status")[1]
    # A Redis blip must not take the pod out of its Services: /readyz stays 200.
    assert sidecar.get("/readyz")[0] == 200
    assert sidecar.get("/healthz")[0] == 200
    assert sidecar.status()["healthy"] is False
    assert sidecar.metric("queue_backend_up", queue="reminders", kind="DelayQueue") == 0

    redis_server.start()
    sidecar.wait_ready()
    assert sidecar.metric("queue_backend_up", queue="reminders", kind="DelayQueue") == 1
    log = (sidecar.workdir / "sidecar.log").read_text()
    assert "redis" in log.lower()
    assert "hunter2" not in log


def test_kafka_unreachable_at_start_keeps_serving_and_consumes_once_it_is_up(
    make_sidecar: Callable[..., Sidecar], http_app: App, own_kafka_broker: Tansu, unique: str
) -> None:
    own_kafka_broker.stop()
    sidecar = make_sidecar(
        {"app": app_config(http_app), "queues": [kafka_queue(unique, own_kafka_broker.bootstrap)]}
    )
    wait_until(lambda: sidecar.get("/readyz")[0] == 200, 10, "readyz: the sidecar serves")
    wait_until(
        lambda: sidecar.status()["queues"][unique]["state"] == "unavailable",
        30,
        "status: the queue's brokers unavailable",
        sidecar.status,
    )
    assert sidecar.metric("queue_backend_up", queue=unique, kind="KafkaQueue") == 0
    # The consumer gives up on the brokers after its connect timeout; the sidecar runs a new one.
    wait_until(
        lambda: "consumer failed; starting a new one" in sidecar.log_tail(200),
        30,
        "a consumer restart",
        sidecar.log_tail,
    )
    assert sidecar.running and sidecar.get("/healthz")[0] == 200

    own_kafka_broker.start()
    # The sidecar's next consumer may get there first (tansu creates a topic a client asks about).
    create_topics(own_kafka_broker.bootstrap, unique, f"{unique}.dlq", exist_ok=True)
    sidecar.wait_ready(60)
    kafka_push(own_kafka_broker.bootstrap, unique, b"after-outage")
    http_app.wait_for("after-outage", timeout=30)


def test_sigterm_while_waiting_for_the_app_exits_0(
    make_sidecar: Callable[..., Sidecar],
    tmp_path: Path,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    unique: str,
) -> None:
    never_started = App(tmp_path / "absent-app", "http")
    sidecar = make_sidecar(
        {
            "app": app_config(never_started),
            "queues": [delay_queue(unique, beanstalk_cluster.addresses, shared_redis.url)],
        }
    )
    dq_delay(beanstalk_cluster.addresses, unique, shared_redis.url, b"untouched", 0)
    wait_until(lambda: sidecar.get("/readyz")[0] == 200, 10, "readyz: the sidecar serves")
    assert sidecar.status()["queues"][unique]["state"] == "waiting"
    assert sidecar.terminate_and_wait(timeout=15) == 0
    # Nothing was taken from the queue: the job is still there in all three copies (the
    # working copy ready, the two standbys ready or still delayed), none reserved.
    counts = tube_counts(beanstalk_cluster.addresses, unique)
    assert (counts["ready"] + counts["delayed"], counts["reserved"], counts["buried"]) == (3, 0, 0), counts
    assert counts["ready"] >= 1, counts


def test_a_wrong_app_path_holds_messages_and_says_so(  # noqa: PLR0917
    make_sidecar: Callable[..., Sidecar],
    http_app: App,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    kafka_broker: Tansu,
    unique: str,
) -> None:
    """A 404/405 from the configured route is the sidecar's misconfiguration, not the message's
    fault: nothing is buried or dead-lettered, no attempt is counted, /v1/status says what to fix."""
    dq, kq = f"{unique}-dq", f"{unique}-kq"
    create_topics(kafka_broker.bootstrap, kq, f"{kq}.dlq")
    queues = [
        delay_queue(dq, beanstalk_cluster.addresses, shared_redis.url),
        kafka_queue(kq, kafka_broker.bootstrap),
    ]
    wrong = make_sidecar({"app": app_config(http_app, path="/wrong-path"), "queues": queues})
    # Assigned, not only subscribed: a member stopped in the middle of its first join stays in
    # tansu's group (no LeaveGroup without a member id) and holds up the next member's join.
    wait_until(
        lambda: "partition(s) assigned" in (r := wrong.status()["queues"][kq]["reason"]) and "(0 " not in r,
        30,
        "partitions assigned",
        wrong.status,
    )
    dq_delay(beanstalk_cluster.addresses, dq, shared_redis.url, b"held-job", 0)
    kafka_push(kafka_broker.bootstrap, kq, b"held-order", key=b"k")

    problem = wait_until(
        lambda: wrong.status()["app"].get("problem"), 20, "status naming the wrong route", wrong.status
    )
    assert "404" in problem and "/wrong-path" in problem
    assert wrong.metric("queue_sidecar_app_misconfigured") == 1
    assert wrong.get("/readyz")[0] == 200 and wrong.status()["healthy"] is False
    time.sleep(2)  # longer than maxAttempts x backoff (3 x 100-500 ms): nothing may be given up
    assert tube_counts(beanstalk_cluster.addresses, dq)["buried"] == 0
    assert (
        wrong.metric("queue_messages_dead_lettered_total", kind="kafka", queue=kq, reason="drop") or 0
    ) == 0
    assert (
        wrong.metric("queue_messages_dead_lettered_total", kind="delay", queue=dq, reason="drop") or 0
    ) == 0
    log_lines = [line for line in wrong.log_tail(500).splitlines() if "app route misconfigured" in line]
    assert 1 <= len(log_lines) <= 2, log_lines  # throttled, not one per message per retry
    assert wrong.terminate_and_wait() == 0

    # Fixed: both arrive, each at its first attempt.
    make_sidecar({"app": app_config(http_app), "queues": queues}, name="fixed")
    [job] = http_app.wait_for("held-job", timeout=30)
    [order] = http_app.wait_for("held-order", timeout=30)
    assert job["headers"]["X-Attempt"] == "1" and order["headers"]["X-Attempt"] == "1"


def test_status_warns_about_a_redis_that_can_lose_records(
    make_sidecar: Callable[..., Sidecar],
    http_app: App,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    unique: str,
) -> None:
    # The test Redis runs without AOF: revocations and done markers would not survive its restart.
    sidecar = make_sidecar(
        {
            "app": app_config(http_app),
            "queues": [delay_queue(unique, beanstalk_cluster.addresses, shared_redis.url)],
        }
    )
    sidecar.wait_ready()
    warnings = wait_until(
        lambda: sidecar.status()["queues"][unique].get("warnings"), 10, "a Redis warning", sidecar.status
    )
    assert any("appendonly is off" in warning for warning in warnings), warnings
    assert sidecar.status()["queues"][unique]["state"] == "consuming"  # reported, not refused


def test_jobs_waiting_for_a_down_app_do_not_flood_the_log(
    make_sidecar: Callable[..., Sidecar],
    tmp_path: Path,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    unique: str,
) -> None:
    app = App(tmp_path / "flaky-app", "http")
    app.script({})
    try:
        app.start()
        sidecar = make_sidecar(
            {
                "app": app_config(app),
                "queues": [delay_queue(unique, beanstalk_cluster.addresses, shared_redis.url)],
            }
        )
        sidecar.wait_ready()
        app.kill()
        wait_until(lambda: not sidecar.status()["app"]["up"], 10, "status: the app is down", sidecar.status)
        for i in range(5):
            dq_delay(beanstalk_cluster.addresses, unique, shared_redis.url, f"waiting-{i}".encode(), 0)
        time.sleep(4)  # five jobs handed back about once a second each
        lines = [line for line in sidecar.log_tail(2000).splitlines() if f"{unique}: job" in line]
        assert len(lines) <= 5, lines  # not one per job per second (20 or more)
        app.start()
        for i in range(5):
            [job] = app.wait_for(f"waiting-{i}", timeout=30)
            assert job["headers"]["X-Attempt"] == "1"
    finally:
        app.kill()  # started again above: without this each run left an http_app.py behind
