"""queuectl against a sidecar config file: publish, revoke, stats, kick, dead letters, errors."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import greenstalk
from confluent_kafka.admin import AdminClient, NewTopic
from publish.records import read_at
from queuectl.conftest import Setup, queuectl, write_config

from harness.servers import BeanstalkdCluster, RedisServer, Tansu
from queue_engine.dq import DelayAdmin, DelayConsumer, DelayJob, DeliveryPolicy, Outcome
from queue_engine.dq.envelope import Envelope
from queue_engine.errors import NotFound
from queue_engine.kq import KafkaConsumer, KafkaMessage, read_dead_letters
from queue_engine.kq.config import FAST_GROUP
from queue_engine.policy import Backoff


def _tube_totals(setup: Setup) -> dict[str, int]:
    totals: dict[str, int] = {}
    for node in setup.run("stats", "reminders", "-o", "json").json()["nodes"]:
        for state in ("ready", "delayed", "reserved", "buried"):
            totals[state] = totals.get(state, 0) + node[state]
    return totals


def _create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(15)


# ------------------------------------------------------------------ DelayQueue


def test_delay_stats_and_revoke(setup: Setup) -> None:
    published = setup.run("delay", "reminders", "call Bob", "--in", "1m", "-o", "json")
    assert published.code == 0, published.err
    job = published.json()
    assert job["queue"] == "reminders" and len(job["id"]) == 24
    due = datetime.fromisoformat(job["due_at"])
    assert timedelta(seconds=55) < due - datetime.now(UTC) <= timedelta(seconds=60)

    table = setup.run("stats", "reminders")
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert lines[1].split() == ["NODE", "READY", "DELAYED", "RESERVED", "BURIED", "ERROR"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) == set(setup.cluster.addresses)
    assert all(row == ["0", "1", "0", "0", "-"] for row in rows.values()), table.out

    revoked = setup.run("revoke", "reminders", job["id"])
    assert revoked.code == 0, revoked.err
    assert f"job {job['id']} revoked" in revoked.out
    assert _tube_totals(setup).get("delayed") == 0


def test_delay_at_a_time_with_the_body_from_stdin(setup: Setup) -> None:
    when = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    body = b"\x00 bytes from stdin \xff"
    published = setup.run("delay", "reminders", "-", "--at", when, "-o", "json", stdin=body)
    assert published.code == 0, published.err
    host, port = setup.cluster.addresses[0].rsplit(":", 1)
    with greenstalk.Client((host, int(port)), use=setup.tube, encoding=None) as client:
        envelope = Envelope.decode(client.peek_delayed().body)
    assert envelope is not None
    assert (envelope.job_id, envelope.body) == (published.json()["id"], body)

    past = setup.run("delay", "reminders", "x", "--at", "2020-01-01T00:00:00Z")
    assert past.code == 2
    assert "in the past" in past.err


async def test_dlq_lists_buried_jobs_and_kick_requeues_them(setup: Setup) -> None:
    async def refuse(job: DelayJob) -> Outcome:
        return Outcome.drop("bad payload: no customer id")

    consumer = DelayConsumer(
        setup.cluster.addresses,
        setup.tube,
        setup.redis.url,
        refuse,
        policy=DeliveryPolicy(max_attempts=1, backoff=Backoff(0.1, 0.1, 1)),
    )
    runner = asyncio.create_task(consumer.run())
    try:
        published = await asyncio.to_thread(
            setup.run, "delay", "reminders", "broken", "--in", "0s", "-o", "json"
        )
        job_id = published.json()["id"]
        admin = DelayAdmin(setup.cluster.addresses, setup.tube, setup.redis.url)
        deadline = time.monotonic() + 20
        while not await admin.buried(10) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a server
            await asyncio.sleep(0.1)
        await admin.close()
    finally:
        await consumer.stop(grace=1)
        await runner

    listed = await asyncio.to_thread(setup.run, "dlq", "reminders")
    assert listed.code == 0, listed.err
    assert job_id in listed.out and "bad payload: no customer id" in listed.out and "broken" in listed.out
    assert listed.out.splitlines()[1].split()[:3] == ["ID", "NODE", "ATTEMPTS"]

    kicked = await asyncio.to_thread(setup.run, "kick", "reminders", "-o", "json")
    assert kicked.code == 0, kicked.err
    assert kicked.json() == {"queue": "reminders", "kicked": 1}
    totals = await asyncio.to_thread(_tube_totals, setup)
    assert totals.get("buried") == 0 and totals.get("ready", 0) >= 1, totals


# ------------------------------------------------------------------ KafkaQueue


def test_push_with_key_and_headers_then_lag_per_partition(setup: Setup) -> None:
    _create_topic(setup.broker.bootstrap, setup.topic)
    pushed = setup.run(
        "push",
        "orders",
        '{"id": 7}',
        "--key",
        "customer-42",
        "-H",
        "source=cli",
        "-H",
        "trace=a=b",
        "-o",
        "json",
    )
    assert pushed.code == 0, pushed.err
    where = pushed.json()
    record = read_at(setup.broker.bootstrap, setup.topic, where["partition"], where["offset"])
    assert (record.value, record.key) == (b'{"id": 7}', b"customer-42")
    assert record.headers == [("source", b"cli"), ("trace", b"a=b")]
    for body in ("a", "b"):
        assert setup.run("push", "orders", body).code == 0

    stats = setup.run("stats", "orders", "-o", "json").json()
    assert stats["group"] == setup.group
    assert [p["partition"] for p in stats["partitions"]] == [0, 1, 2]
    assert sum(p["lag"] for p in stats["partitions"]) == 3  # the group has committed nothing yet
    table = setup.run("stats", "orders")
    assert "total lag 3" in table.out
    assert table.out.splitlines()[1].split() == ["PARTITION", "LAG"]


async def test_dlq_lists_dead_letters_and_replays_them_once(setup: Setup) -> None:
    await asyncio.to_thread(_create_topic, setup.broker.bootstrap, setup.topic, 1)
    pushed = await asyncio.to_thread(setup.run, "push", "orders", "poison", "--key", "k1", "-o", "json")
    original = pushed.json()

    async def refuse(message: KafkaMessage) -> Outcome:
        return Outcome.drop("cannot parse order")

    consumer = KafkaConsumer(
        [setup.broker.bootstrap],
        setup.topic,
        setup.group,
        refuse,
        offset="first",
        dead_letter_topic=setup.dead_letter_topic,
        extra=FAST_GROUP,
    )
    runner = asyncio.create_task(consumer.run())
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if await read_dead_letters([setup.broker.bootstrap], setup.dead_letter_topic):
                    break
            except NotFound:  # the topic appears with the first dead letter
                pass
            await asyncio.sleep(0.3)
    finally:
        await consumer.stop(grace=2)
        await runner

    listed = await asyncio.to_thread(setup.run, "dlq", "orders", "-o", "json")
    assert listed.code == 0, listed.err
    [letter] = listed.json()["dead_letters"]
    assert (letter["original_topic"], letter["original_partition"], letter["original_offset"]) == (
        setup.topic,
        original["partition"],
        original["offset"],
    )
    assert (letter["body"], letter["key"], letter["reason"]) == ("poison", "k1", "drop")
    assert letter["last_error"] == "cannot parse order"
    table = await asyncio.to_thread(setup.run, "dlq", "orders")
    assert "cannot parse order" in table.out and "1-1 of 1 pending dead letter(s)" in table.out

    replayed = await asyncio.to_thread(setup.run, "dlq", "orders", "--replay", "-o", "json")
    assert replayed.code == 0, replayed.err
    assert replayed.json()["replayed"] == 1
    copy = await asyncio.to_thread(read_at, setup.broker.bootstrap, setup.topic, 0, original["offset"] + 1)
    assert (copy.value, copy.key) == (b"poison", b"k1")
    first_id = f"{setup.topic}/{original['partition']}/{original['offset']}"
    assert ("x-queue-message-id", first_id.encode()) in copy.headers  # X-Message-Id kept
    again = await asyncio.to_thread(setup.run, "dlq", "orders", "--replay", "-o", "json")
    assert again.json()["replayed"] == 0
    after = (await asyncio.to_thread(setup.run, "dlq", "orders", "-o", "json")).json()
    assert (after["dead_letters"], after["pending"]) == ([], 0)  # replayed letters are not listed
    everything = (await asyncio.to_thread(setup.run, "dlq", "orders", "--all", "-o", "json")).json()
    assert [letter["state"] for letter in everything["dead_letters"]] == ["replayed"]


# ------------------------------------------------------------------ errors and exit codes


def test_unknown_queue_names_the_queues_and_exits_1(setup: Setup) -> None:
    result = setup.run("stats", "remindrs")
    assert result.code == 1
    assert "remindrs" in result.err and "delayqueue/reminders, kafkaqueue/orders" in result.err
    wrong_kind = setup.run("stats", "kq/reminders")
    assert wrong_kind.code == 1 and "no KafkaQueue named 'reminders'" in wrong_kind.err


def test_usage_errors_exit_2(setup: Setup) -> None:
    cases = [
        (("delay", "reminders", "x", "--in", "soon"), "500ms, 5s"),
        (("delay", "reminders", "x"), "one of the arguments --in --at is required"),
        (("push", "reminders", "x"), "push works on KafkaQueues"),
        (("kick", "orders"), "use dlq orders replay"),
        (("buried", "orders"), "use dlq orders"),
        (("get", "orders", "0" * 24), "use dlq orders get PARTITION:OFFSET"),
        (("dlq", "orders", "get", "17"), "write PARTITION:OFFSET"),
        (("dlq", "orders", "skip"), "needs the PARTITION:OFFSET"),
        (("buried", "reminders", "kick"), "buried kick needs the job ID"),
        (("dlq", "reminders", "skip"), "dlq skip needs the job ID"),
        (("dlq", "orders", "--after", "garbage"), "not a cursor from a listing of dead letters on orders"),
        (("buried", "reminders", "--after", "garbage"), "not a cursor from a listing of buried"),
        (("dlq", "orders", "frob"), "invalid choice: 'frob'"),
        (("stats", "reminders", "-o", "xml"), "invalid choice: 'xml'"),
        (("revoke", "reminders", "not-an-id"), "hex"),
        (("kick", "reminders", "0"), "1 or more"),
        (("push", "orders", "x", "-H", "novalue"), "NAME=VALUE"),
        (("stats", "queue/x"), "delayqueue/NAME"),
    ]
    for args, expected in cases:
        result = setup.run(*args)
        assert result.code == 2, (args, result)
        assert expected in result.err, (args, result.err)
    both = queuectl("--config", str(setup.path), "--context", "x", "stats", "reminders")
    assert both.code == 2 and "not both" in both.err


def test_bad_config_file_exits_1_naming_the_problem(tmp_path: Path) -> None:
    missing = queuectl("--config", str(tmp_path / "nope.yaml"), "stats", "reminders")
    assert missing.code == 1 and "cannot read it" in missing.err
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "app: {port: 8080}\nqueues: [{kind: DelayQueue, name: r, nodes: [], redis: {url: x}, tubee: t}]\n"
    )
    result = queuectl("--config", str(bad), "stats", "r")
    assert result.code == 1 and "tubee" in result.err


def test_servers_down_are_reported_not_hidden(
    tmp_path: Path,
    beanstalk_cluster: BeanstalkdCluster,
    redis_server: RedisServer,
    own_kafka_broker: Tansu,
    unique: str,
) -> None:
    path = write_config(
        tmp_path / "c.yaml",
        nodes=beanstalk_cluster.addresses,
        redis_url=redis_server.url,
        bootstrap=own_kafka_broker.bootstrap,
        name=unique,
    )
    beanstalk_cluster[1].kill()
    stats = queuectl("--config", str(path), "stats", "reminders", "-o", "json")
    assert stats.code == 0, stats.err
    errors = {n["node"]: n["error"] for n in stats.json()["nodes"]}
    assert errors[beanstalk_cluster[1].address] and not errors[beanstalk_cluster[0].address]
    assert (
        queuectl("--config", str(path), "delay", "reminders", "x", "--in", "1s").code == 0
    )  # 2 of 3 is a quorum

    beanstalk_cluster[2].kill()
    lost = queuectl("--config", str(path), "delay", "reminders", "x", "--in", "1s", "--timeout", "2s")
    assert lost.code == 1 and "2 needed" in lost.err

    beanstalk_cluster[0].kill()
    nothing = queuectl("--config", str(path), "stats", "reminders", "--timeout", "2s")
    assert nothing.code == 1 and "no node answered" in nothing.err
    assert "Connection refused" in nothing.out  # the table still says why, per node

    own_kafka_broker.kill()
    push = queuectl("--config", str(path), "push", "orders", "x", "--timeout", "2s")
    assert push.code == 1
    assert "timed out" in push.err.lower()
