"""Bad settings are refused at construction with a message that names the field."""

from __future__ import annotations

import time

import pytest

from harness.servers import free_port
from queue_engine.errors import ConfigError, Unavailable
from queue_engine.kq import KafkaConsumer, KafkaPusher, KafkaSecurity, SyncKafkaPusher
from queue_engine.policy import Outcome


async def ok(_message: object) -> Outcome:
    return Outcome.success()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"brokers": []}, "brokers"),
        ({"brokers": ["kafka-without-port"]}, "brokers"),
        ({"topic": ""}, "topic"),
        ({"group": " "}, "group"),
        ({"offset": "earliest"}, "offset"),
        ({"concurrency": 0}, "concurrency"),
        ({"dead_letter_topic": "orders"}, "dead_letter_topic"),
        ({"extra": {"enable.auto.commit": True}}, "enable.auto.commit"),
        ({"extra": {"group.id": "other"}}, "group.id"),
        ({"extra": {"no.such.property": 1}}, "no.such.property"),
        ({"extra": {"session.timeout.ms": "soon"}}, "session.timeout.ms"),
    ],
)
def test_consumer_config_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"brokers": ["127.0.0.1:9092"], "topic": "orders", "group": "g", "handler": ok}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=field):
        KafkaConsumer(**args)  # type: ignore[arg-type]


def test_pusher_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="brokers"):
        KafkaPusher([], "orders")
    with pytest.raises(ConfigError, match="topic"):
        SyncKafkaPusher(["127.0.0.1:9092"], "")
    with pytest.raises(ConfigError, match="acks"):
        KafkaPusher(["127.0.0.1:9092"], "orders", extra={"acks": "1"})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sasl_mechanism": "GSSAPI", "username": "u", "password": "p"}, "sasl_mechanism"),
        ({"sasl_mechanism": "PLAIN", "password": "p"}, "username"),
        ({"sasl_mechanism": "SCRAM-SHA-256", "username": "u"}, "password"),
        ({"username": "u", "password": "p"}, "sasl_mechanism"),
        ({"ca_location": "/etc/ca.pem"}, "ca_location"),
    ],
)
def test_security_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        KafkaSecurity(**kwargs)  # type: ignore[arg-type]


def test_security_maps_to_librdkafka_settings() -> None:
    assert KafkaSecurity().librdkafka_config() == {"security.protocol": "PLAINTEXT"}
    assert KafkaSecurity(tls=True, ca_location="/ca.pem").librdkafka_config() == {
        "security.protocol": "SSL",
        "ssl.ca.location": "/ca.pem",
    }
    assert KafkaSecurity("SCRAM-SHA-512", "app", "s3cret").librdkafka_config() == {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "app",
        "sasl.password": "s3cret",
    }
    assert (
        KafkaSecurity("PLAIN", "app", "s3cret", tls=True).librdkafka_config()["security.protocol"]
        == "SASL_SSL"
    )


def test_security_never_shows_the_password() -> None:
    security = KafkaSecurity("PLAIN", "app", "hunter2-secret")
    assert "hunter2-secret" not in repr(security)
    assert "hunter2-secret" not in str(security)


def test_security_settings_reach_librdkafka() -> None:
    # librdkafka itself accepts the settings (a typo in a property name would be refused here).
    pusher = SyncKafkaPusher(
        ["127.0.0.1:9092"], "orders", security=KafkaSecurity("SCRAM-SHA-256", "app", "pw", tls=False)
    )
    pusher.close(timeout=0)


async def test_consumer_on_unreachable_brokers_fails_with_unavailable() -> None:
    consumer = KafkaConsumer([f"127.0.0.1:{free_port()}"], "orders", "g", ok, connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="not reachable within 2"):
        await consumer.run()
    assert time.monotonic() - started < 30
    healthy, why = consumer.health()
    assert not healthy and "not reachable" in why


async def test_pusher_check_on_unreachable_brokers_fails_with_unavailable() -> None:
    pusher = KafkaPusher([f"127.0.0.1:{free_port()}"], "orders")
    with pytest.raises(Unavailable, match="not reachable"):
        await pusher.check(timeout=1)
    await pusher.close(timeout=0)
