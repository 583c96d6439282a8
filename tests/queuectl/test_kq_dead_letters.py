"""queuectl on a KafkaQueue's dead letters: paged oldest first with true counts, one looked up,
replayed or skipped by its dead-letter offset, replays keeping the message id, handled letters
no longer listed.

The dead letters are written the way the sidecar's consumer writes them (the engine's
``dead_letter_headers``), straight into chosen partitions with chosen timestamps, so that
"oldest first" across partitions is put to the test.
"""

from __future__ import annotations

import base64
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from publish.records import read_at
from queuectl.conftest import Setup

from queue_engine.kq import KafkaMessage
from queue_engine.kq.dead_letter_headers import dead_letter_headers
from queue_sidecar.delivery.envelope import Envelope

BINARY = b"\xff\x00order"


def _topics(setup: Setup) -> None:
    admin = AdminClient({"bootstrap.servers": setup.broker.bootstrap})
    new = [NewTopic(setup.topic, 1, 1), NewTopic(setup.dead_letter_topic, 3, 1)]
    for future in admin.create_topics(new).values():
        future.result(15)


def _dead_letters(setup: Setup) -> list[tuple[int, int, bytes]]:
    """Three messages pushed, then dead-lettered into DLQ partitions 2, 0, 1 (oldest first).

    Returns (original offset, dead-letter partition, body) per letter, oldest first.
    """
    _topics(setup)
    bodies = [b"first", b"second", BINARY]
    offsets = []
    for body in bodies:
        pushed = setup.run("push", "orders", "-", "--key", "k", "-o", "json", stdin=body)
        assert pushed.code == 0, pushed.err
        offsets.append(pushed.json()["offset"])
    producer = Producer({"bootstrap.servers": setup.broker.bootstrap})
    now_ms = int(time.time() * 1000) - 10_000
    placed = []
    for n, (offset, body, partition) in enumerate(zip(offsets, bodies, [2, 0, 1], strict=True)):
        original = KafkaMessage(
            "orders", setup.topic, 0, offset, b"k", body, [("trace", b"t1")], now_ms, attempt=3
        )
        headers = dead_letter_headers(original, "max_attempts", f"HTTP 500 on try {n}")
        producer.produce(
            setup.dead_letter_topic,
            value=body,
            key=b"k",
            headers=headers,
            partition=partition,
            timestamp=now_ms + 1000 * n,
        )
        placed.append((offset, partition, body))
    assert producer.flush(15) == 0
    return placed


def test_dead_letters_page_oldest_first_with_true_counts(setup: Setup) -> None:
    placed = _dead_letters(setup)
    first = setup.run("dlq", "orders", "--limit", "1", "-o", "json")
    assert first.code == 0, first.err
    page = first.json()
    assert (page["pending"], page["matching"]) == (3, 3)
    [oldest] = page["dead_letters"]
    assert (oldest["partition"], oldest["offset"], oldest["ref"]) == (2, 0, "2:0")
    assert (oldest["original_topic"], oldest["original_offset"]) == (setup.topic, placed[0][0])
    assert oldest["attempts"] == 3 and oldest["state"] == "pending"
    assert oldest["headers"][0] == {"name": "trace", "value": "t1", "value_encoding": "utf-8"}

    refs = [oldest["ref"]]
    cursor = page["next"]
    while cursor:
        more = setup.run("dlq", "orders", "--limit", "1", "--after", cursor, "-o", "json").json()
        refs += [letter["ref"] for letter in more["dead_letters"]]
        last = more["dead_letters"][-1]
        cursor = more["next"]
    assert refs == ["2:0", "0:0", "1:0"]
    assert (last["body"], last["body_encoding"]) == (base64.b64encode(BINARY).decode(), "base64")

    table = setup.run("dlq", "orders", "--limit", "2")
    lines = table.out.splitlines()
    assert lines[0] == f"1-2 of 3 pending dead letter(s) in {setup.dead_letter_topic}, oldest first"
    assert lines[1].split() == [
        "REF", "STATE", "ORIGINAL", "ATTEMPTS", "REASON", "LAST-ERROR", "KEY", "BODY"
    ]  # fmt: skip
    assert lines[-1].startswith("more: add --after ")
    wide = setup.run("dlq", "orders", "-o", "wide")
    assert wide.out.splitlines()[1].split()[-2:] == ["TIMESTAMP", "HEADERS"]
    assert f"base64:{base64.b64encode(BINARY).decode()}" in wide.out


def test_replay_and_skip_one_by_dead_letter_offset(setup: Setup) -> None:
    placed = _dead_letters(setup)

    shown = setup.run("dlq", "orders", "get", "0:0")
    assert shown.code == 0, shown.err
    assert "HTTP 500 on try 1" in shown.out and "second" in shown.out

    replayed = setup.run("dlq", "orders", "replay", "0:0", "-o", "json")
    assert replayed.code == 0, replayed.err
    assert replayed.json()["state"] == "replayed"
    copy = read_at(setup.broker.bootstrap, setup.topic, 0, 3)
    assert copy.value == b"second"
    # The copy is delivered with the message's first id, so idempotent apps see the same message.
    first_id = f"{setup.topic}/0/{placed[1][0]}"
    assert ("x-queue-message-id", first_id.encode()) in copy.headers
    message = KafkaMessage("orders", setup.topic, 0, 3, copy.key, copy.value, copy.headers, 0)
    assert Envelope.from_kafka_message(message).id == first_id

    again = setup.run("dlq", "orders", "replay", "0:0")
    assert again.code == 1 and "already replayed" in again.err

    skipped = setup.run("dlq", "orders", "skip", "1:0", "-o", "json")
    assert skipped.code == 0 and skipped.json()["state"] == "skipped"

    pending = setup.run("dlq", "orders", "-o", "json").json()
    assert [letter["ref"] for letter in pending["dead_letters"]] == ["2:0"]
    assert pending["pending"] == 1

    bulk = setup.run("dlq", "orders", "replay", "-o", "json")
    assert bulk.code == 0 and bulk.json()["replayed"] == 1
    assert read_at(setup.broker.bootstrap, setup.topic, 0, 4).value == b"first"
    empty = setup.run("dlq", "orders")
    assert empty.out.startswith("none of 0 pending dead letter(s)")

    everything = setup.run("dlq", "orders", "--all", "-o", "json").json()
    states = {letter["ref"]: letter["state"] for letter in everything["dead_letters"]}
    assert states == {"2:0": "replayed", "0:0": "replayed", "1:0": "skipped"}
    assert setup.run("dlq", "orders", "replay", "-o", "json").json()["replayed"] == 0

    missing = setup.run("dlq", "orders", "get", "0:99")
    assert missing.code == 1 and "no dead letter at 0:99" in missing.err
    marker = setup.run("dlq", "orders", "get", "0:1")
    assert marker.code == 1 and "marker" in marker.err
