"""The pusher returns where the broker stored each message, and never loses one silently."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib

import pytest
from kq.kq_helpers import create_topics, read_raw

from harness.servers import Tansu
from queue_engine import metrics
from queue_engine.errors import InvalidRequest, TooLarge, Unavailable
from queue_engine.kq import Delivered, KafkaPusher, SyncKafkaPusher

FAIL_FAST = {"message.timeout.ms": 3000}  # a dead broker shows up in 3 s instead of 30 s


async def test_push_returns_the_real_partition_and_offset(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 3))
    async with KafkaPusher([bootstrap], unique) as pusher:
        results = [
            await pusher.push(f"v{i}".encode(), key="same-key", headers={"trace": f"t{i}"}) for i in range(5)
        ]
    partition = results[0].partition
    assert all(r.topic == unique and r.partition == partition for r in results)
    assert [r.offset for r in results] == list(range(results[0].offset, results[0].offset + 5))

    stored = {(r.partition(), r.offset()): r for r in read_raw(bootstrap, unique, 3, 5)}
    for i, result in enumerate(results):
        record = stored[(result.partition, result.offset)]
        assert record.value() == f"v{i}".encode()
        assert record.key() == b"same-key"
        assert record.headers() == [("trace", f"t{i}".encode())]


async def test_push_nowait_resolves_every_future_with_a_distinct_place(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 4))
    published = metrics.PUBLISHED.labels("kafka", unique, "success")
    before = published._value.get()
    pusher = KafkaPusher([bootstrap], unique)
    futures = [pusher.push_nowait(f"m{i}".encode(), key=str(i % 9)) for i in range(500)]
    await pusher.flush()
    assert all(f.done() for f in futures)
    places = {(f.result().partition, f.result().offset) for f in futures}
    assert len(places) == 500
    await pusher.close()
    assert published._value.get() - before == 500
    assert len(read_raw(bootstrap, unique, 4, 500)) == 500


async def test_close_right_after_pushing_loses_nothing(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 2))
    pusher = KafkaPusher([bootstrap], unique)
    futures = [pusher.push_nowait(f"m{i}".encode()) for i in range(300)]
    await pusher.close()
    assert all(isinstance(f.result(), Delivered) for f in futures)
    assert len(read_raw(bootstrap, unique, 2, 300)) == 300


def test_sync_pusher_push_and_push_async(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 1))
    with SyncKafkaPusher([bootstrap], unique) as pusher:
        first = pusher.push(b"one", key=b"k")
        futures = [pusher.push_async(f"m{i}".encode()) for i in range(50)]
        pusher.flush()
        offsets = [f.result(0).offset for f in futures]
    assert first == Delivered(unique, 0, first.offset)
    assert offsets == list(range(first.offset + 1, first.offset + 51))
    assert [r.value() for r in read_raw(bootstrap, unique, 1, 51)][:1] == [b"one"]


def test_a_cancelled_sync_push_still_counts_and_wakes_its_waiters(bootstrap: str, unique: str) -> None:
    """The sync pusher settles futures without set_running_or_notify_cancel first: one the caller
    cancelled must still be counted once acknowledged, and wake concurrent.futures.wait()."""
    create_topics(bootstrap, (unique, 1))
    published = metrics.PUBLISHED.labels("kafka", unique, "success")
    before = published._value.get()
    with SyncKafkaPusher([bootstrap], unique) as pusher:
        kept = [pusher.push_async(f"k{i}".encode()) for i in range(20)]
        dropped = [pusher.push_async(f"d{i}".encode()) for i in range(20)]
        cancelled = [f for f in dropped if f.cancel()]
        assert cancelled, "no future was still pending to cancel"
        _, not_done = concurrent.futures.wait(dropped + kept, timeout=15)
        assert not not_done, f"{len(not_done)} future(s) never reported done"
        pusher.flush()
    assert all(isinstance(f.result(0), Delivered) for f in kept)
    assert all(f.cancelled() for f in cancelled)
    assert published._value.get() - before == 40  # a cancelled wait does not undo the push
    assert len(read_raw(bootstrap, unique, 1, 40)) == 40


async def test_a_broker_killed_during_pushes_gives_errors_not_silence(
    own_kafka_broker: Tansu, unique: str
) -> None:
    create_topics(own_kafka_broker.bootstrap, (unique, 1))
    pusher = KafkaPusher([own_kafka_broker.bootstrap], unique, extra=FAIL_FAST)
    assert (await pusher.push(b"before")).offset == 0
    errors = metrics.PUBLISHED.labels("kafka", unique, "error")
    before = errors._value.get()

    own_kafka_broker.kill()
    futures = [pusher.push_nowait(f"during{i}".encode()) for i in range(20)]
    with pytest.raises(Unavailable, match=unique):
        await pusher.push(b"after")
    results = await asyncio.gather(*futures, return_exceptions=True)
    # Every push has an answer: acknowledged before the broker went, or an error. None vanished.
    assert all(isinstance(r, Delivered | Unavailable) for r in results)
    assert any(isinstance(r, Unavailable) for r in results)
    assert errors._value.get() - before >= 1 + sum(isinstance(r, Unavailable) for r in results)
    await pusher.close(timeout=1)


def test_sync_push_to_a_killed_broker_raises(own_kafka_broker: Tansu, unique: str) -> None:
    create_topics(own_kafka_broker.bootstrap, (unique, 1))
    pusher = SyncKafkaPusher([own_kafka_broker.bootstrap], unique, extra=FAIL_FAST)
    pusher.push(b"before")
    own_kafka_broker.kill()
    with pytest.raises(Unavailable):
        pusher.push(b"after")
    pusher.close(timeout=1)


async def test_a_message_over_the_size_limit_is_refused_with_too_large(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 1))
    pusher = KafkaPusher([bootstrap], unique, extra={"message.max.bytes": 2000})
    with pytest.raises(TooLarge, match=unique):
        await pusher.push(b"x" * 5000)
    assert (await pusher.push(b"small")).offset == 0  # the pusher still works
    await pusher.close()


async def test_header_values_are_sent_as_given_and_none_stays_null(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 1))
    async with KafkaPusher([bootstrap], unique) as pusher:
        await pusher.push(b"v", headers=[("text", "é"), ("raw", b"\x00\x01"), ("null", None)])
    (record,) = read_raw(bootstrap, unique, 1, 1)
    assert record.headers() == [("text", "é".encode()), ("raw", b"\x00\x01"), ("null", None)]


@pytest.mark.parametrize(
    ("value", "key", "headers", "message"),
    [
        (b"v", None, {"count": 3}, "header 'count': value must be bytes, str or None, not int"),
        ("text", None, None, r"message value must be bytes \(or None\), not str"),
        (b"v", 42, None, "message key must be bytes, str or None, not int"),
    ],
    ids=["int-header", "str-value", "int-key"],
)
async def test_bad_types_are_a_client_error_naming_what_to_fix(  # noqa: PLR0917
    bootstrap: str, unique: str, value: object, key: object, headers: object, message: str
) -> None:
    async with KafkaPusher([bootstrap], unique) as pusher:
        with pytest.raises(InvalidRequest, match=message) as caught:
            await pusher.push(value, key=key, headers=headers)  # type: ignore[arg-type]
    assert not isinstance(caught.value, Unavailable)  # a 400 for the sidecar, not a retryable 503


def test_a_push_made_while_close_runs_gets_a_result() -> None:
    from harness.servers import free_port  # noqa: PLC0415

    # Nothing listens there: the first push is still queued when close gives up on it.
    pusher = SyncKafkaPusher([f"127.0.0.1:{free_port()}"], "orders")
    late: list[concurrent.futures.Future[Delivered]] = []
    first = pusher.push_async(b"queued")
    # Its failure is reported inside close(); a push made then (by another thread, or here by
    # the callback) lands after close flushed but before it stopped.
    first.add_done_callback(lambda _: late.append(pusher.push_async(b"late")))
    with contextlib.suppress(Unavailable):
        pusher.close(timeout=0.5)
    assert isinstance(first.exception(timeout=5), Unavailable)
    (after,) = late
    assert isinstance(after.exception(timeout=5), Unavailable)  # refused, never left hanging
