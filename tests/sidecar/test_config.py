"""The config file: the SPEC's example works; every mistake is refused with the key path named."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from harness.servers import free_port
from queue_sidecar.config import ConfigError, DelayQueueConfig, KafkaQueueConfig, load_config, parse_config

from .conftest import REPO, SIDECAR_BIN

SPEC_EXAMPLE = """
app:      {protocol: http, port: 8080, path: /messages, maxConcurrency: 8, timeout: 30s}
publish:  {port: 3500}
health:   {port: 9464}
queues:
  - kind: DelayQueue
    name: reminders
    nodes: ["127.0.0.1:11300", "127.0.0.1:11301", "127.0.0.1:11302"]
    tube: reminders
    redis: {url: "redis://:hunter2@127.0.0.1:6379/0"}
    delivery: {maxAttempts: 5, backoff: {initial: 1s, max: 60s, multiplier: 2}, timeout: 30s}
  - kind: KafkaQueue
    name: orders
    brokers: ["127.0.0.1:9092"]
    topic: orders
    group: orders-app
    offset: first
    deadLetterTopic: orders.dlq
    delivery: {maxAttempts: 3}
"""


def test_spec_example_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(SPEC_EXAMPLE)
    config = load_config(path)
    reminders, orders = config.queues
    assert isinstance(reminders, DelayQueueConfig) and isinstance(orders, KafkaQueueConfig)
    assert reminders.redis_url == "redis://:hunter2@127.0.0.1:6379/0"
    assert reminders.policy().max_attempts == 5 and reminders.max_job_bytes == 65535
    assert orders.policy().max_attempts == 3 and orders.policy().timeout == 30.0
    assert orders.dead_letter_topic == "orders.dlq" and orders.offset == "first"
    assert orders.security() is None
    assert config.publish.host == "127.0.0.1" and config.shutdown_grace_period == 20.0
    assert "hunter2" not in repr(config) and "hunter2" not in str(config)


def test_defaults_fill_tube_topic_group_and_dead_letter_topic() -> None:
    config = parse_config(
        {
            "app": {"port": 8080, "timeout": "2s"},
            "queues": [
                {"kind": "DelayQueue", "name": "r", "nodes": ["h:1"], "redis": {"url": "redis://h"}},
                {"kind": "KafkaQueue", "name": "o", "brokers": ["h:9092"]},
            ],
        }
    )
    r, o = config.queues
    assert isinstance(r, DelayQueueConfig) and isinstance(o, KafkaQueueConfig)
    assert r.tube == "r" and r.policy().timeout == 2.0  # app.timeout is the default per attempt
    assert (o.topic, o.group, o.dead_letter_topic, o.offset) == ("o", "o", "o.dlq", "last")
    assert (
        config.app.protocol == "http" and config.app.path == "/messages" and config.app.max_concurrency == 8
    )


def test_secrets_from_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_REDIS_URL", "redis://:env-secret@h:6379/0")
    monkeypatch.setenv("T_KAFKA_PW", "env-pw")
    config = parse_config(
        {
            "app": {"port": 8080},
            "queues": [
                {"kind": "DelayQueue", "name": "r", "nodes": ["h:1"], "redis": {"urlEnv": "T_REDIS_URL"}},
                {
                    "kind": "KafkaQueue",
                    "name": "o",
                    "brokers": ["h:9092"],
                    "auth": {"sasl": {"mechanism": "PLAIN", "username": "u", "passwordEnv": "T_KAFKA_PW"}},
                },
            ],
        }
    )
    r, o = config.queues
    assert isinstance(r, DelayQueueConfig) and isinstance(o, KafkaQueueConfig)
    assert r.redis_url == "redis://:env-secret@h:6379/0"
    security = o.security()
    assert security is not None and security.password == "env-pw"
    assert "env-secret" not in repr(config) and "env-pw" not in repr(config)
    with pytest.raises(ConfigError, match=r"queues\[0\]: urlEnv: environment variable T_NOPE is not set"):
        parse_config(
            {
                "app": {"port": 8080},
                "queues": [
                    {"kind": "DelayQueue", "name": "r", "nodes": ["h:1"], "redis": {"urlEnv": "T_NOPE"}}
                ],
            }
        )


def test_secrets_from_files_and_sasl(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("redis://:s3cret@h:6379/0\n")
    (tmp_path / "pw").write_text("kafka-pw\n")
    config = parse_config(
        {
            "app": {"port": 8080},
            "queues": [
                {
                    "kind": "DelayQueue",
                    "name": "r",
                    "nodes": ["h:1"],
                    "redis": {"urlFile": str(tmp_path / "url")},
                },
                {
                    "kind": "KafkaQueue",
                    "name": "o",
                    "brokers": ["h:9092"],
                    "auth": {
                        "sasl": {
                            "mechanism": "SCRAM-SHA-512",
                            "username": "u",
                            "passwordFile": str(tmp_path / "pw"),
                        },
                        "tls": {"caFile": "/etc/ca.pem"},
                    },
                },
            ],
        }
    )
    r, o = config.queues
    assert isinstance(r, DelayQueueConfig) and isinstance(o, KafkaQueueConfig)
    assert r.redis_url == "redis://:s3cret@h:6379/0"
    security = o.security()
    assert security is not None
    assert (security.sasl_mechanism, security.username, security.password) == (
        "SCRAM-SHA-512",
        "u",
        "kafka-pw",
    )
    assert security.tls and security.ca_location == "/etc/ca.pem"
    assert "s3cret" not in repr(config) and "kafka-pw" not in repr(config)


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ({"queues": [{}, {"delivery": {"maxAtempts": 3}}]}, "queues[1].delivery.maxAtempts: unknown key"),
        ({"app": {"prot": "http"}}, "app.prot: unknown key"),
        ({"app": {"protocol": "soap"}}, "app.protocol"),
        ({"app": {"timeout": "5 parsecs"}}, "app.timeout: duration '5 parsecs'"),
        ({"queues": [{"delivery": {"backoff": {"initial": "1x"}}}]}, "queues[0].delivery.backoff.initial"),
        ({"queues": [{"kind": "RabbitQueue"}]}, "queues[0]: kind must be DelayQueue or KafkaQueue"),
        (
            {"queues": [{"redis": {"urlFile": "/x"}}]},
            "queues[0].redis: set exactly one of url, urlFile, urlEnv (got url, urlFile)",
        ),
        ({"queues": [{}, {"offset": "middle"}]}, "queues[1].offset"),
        ({"queues": [{}, {"brokers": None}]}, "queues[1].brokers"),
        ({"queues": [{}, {"name": "r"}]}, "name(s) r used more than once"),
        ({"publish": {"port": 70000}}, "publish.port"),
        ({"queues": [{"nodes": ["no-port"]}]}, "node 'no-port' must be host:port"),
        ({"app": {"maxConcurency": 3}}, "app.maxConcurency: unknown key (did you mean maxConcurrency?)"),
        ({"queues": [{}, {"deadLeterTopic": "x"}]}, "unknown key (did you mean deadLetterTopic?)"),
        ({"queues": [{"redis": "redis://h"}]}, "queues[0].redis: expected a mapping (key: value lines)"),
        ({"queues": [{"redis": {"url": "http://x"}}]}, "queues[0]: redis: Redis URL must specify one of"),
        ({"publish": {"port": 8080}}, "app.port and publish.port are both 8080"),
        ({"health": {"port": 8080}}, "app.port and health.port are both 8080"),
    ],
)
def test_mistakes_name_the_key(mistake: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "app": {"port": 8080},
        "queues": [
            {"kind": "DelayQueue", "name": "r", "nodes": ["h:1"], "redis": {"url": "redis://h"}},
            {"kind": "KafkaQueue", "name": "o", "brokers": ["h:9092"]},
        ],
    }
    data = _merge(base, mistake)
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert message in str(caught.value)
    assert "instance of" not in str(caught.value) and "Config" not in str(caught.value)


@pytest.mark.parametrize(("word", "meaning"), [("earliest", "first"), ("latest", "last"), ("first", "first")])
def test_offset_accepts_kafkas_own_words(word: str, meaning: str) -> None:
    config = parse_config(
        {
            "app": {"port": 8080},
            "queues": [{"kind": "KafkaQueue", "name": "o", "brokers": ["h:1"], "offset": word}],
        }
    )
    (queue,) = config.queues
    assert isinstance(queue, KafkaQueueConfig) and queue.offset == meaning


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"queues": [{"redis": {"url": "http://x"}}]}, "Redis URL must specify one of"),
        ({"publish": {"port": 8080}}, "app.port and publish.port are both 8080"),
    ],
)
def test_check_refuses_what_the_start_would_refuse(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    data = _merge(yaml.safe_load(SPEC_EXAMPLE), change)
    data["app"]["port"] = 8080  # type: ignore[index]
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(data))
    for argv in (
        [str(SIDECAR_BIN), "--config", str(path), "--check"],
        [str(SIDECAR_BIN), "--config", str(path)],
    ):
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (argv, done.stderr)
        assert message in done.stderr
        assert "Traceback" not in done.stderr and "hunter2" not in done.stderr


def test_a_start_failure_is_one_clean_line_not_a_traceback(tmp_path: Path) -> None:
    import socket  # noqa: PLC0415

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = {
            "app": {"port": 1},
            "publish": {"port": port},
            "health": {"port": free_port()},
        }
        path = tmp_path / "sidecar.yaml"
        path.write_text(yaml.safe_dump(data))
        done = subprocess.run(
            [str(SIDECAR_BIN), "--config", str(path)], check=False, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    failed = [line for line in done.stderr.splitlines() if '"sidecar failed"' in line]
    assert len(failed) == 1 and str(port) in failed[0], done.stderr


def test_cli_refuses_a_bad_file_with_exit_2_and_names_the_key(tmp_path: Path) -> None:
    data = yaml.safe_load(SPEC_EXAMPLE)
    data["queues"][1]["delivery"]["maxAtempts"] = 3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    done = subprocess.run(
        [str(SIDECAR_BIN), "--config", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "queues[1].delivery.maxAtempts: unknown key" in done.stderr
    assert "hunter2" not in done.stderr

    missing = subprocess.run(
        [str(SIDECAR_BIN), "--config", str(tmp_path / "nope.yaml")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "cannot read it" in missing.stderr


def _merge(base: object, change: object) -> object:
    if isinstance(base, dict) and isinstance(change, dict):
        merged = dict(base)
        for key, value in change.items():
            merged[key] = _merge(base.get(key), value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(change, list):
        return [_merge(b, c) for b, c in zip(base, change, strict=False)] + base[len(change) :]
    return change


def test_the_shipped_example_config_is_valid() -> None:
    config = load_config(REPO / "examples" / "sidecar" / "sidecar.yaml")
    assert [q.name for q in config.queues] == ["reminders", "orders"]
