"""The sidecar reads a SASL username from a file or an environment variable, as injected pods may."""

from __future__ import annotations

from pathlib import Path

import pytest

from queue_sidecar.config import ConfigError, KafkaQueueConfig, parse_config


def _config(sasl: dict[str, str]) -> dict[str, object]:
    return {
        "app": {"port": 8080},
        "queues": [
            {
                "kind": "KafkaQueue",
                "name": "orders",
                "brokers": ["kafka:9092"],
                "auth": {"sasl": {"mechanism": "PLAIN", **sasl}},
            }
        ],
    }


def test_username_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SASL_USER", "alice")
    monkeypatch.setenv("TEST_SASL_PASSWORD", "s3cret")
    config = parse_config(_config({"usernameEnv": "TEST_SASL_USER", "passwordEnv": "TEST_SASL_PASSWORD"}))
    queue = config.queue("orders")
    assert isinstance(queue, KafkaQueueConfig)
    security = queue.security()
    assert security is not None
    assert (security.username, security.password) == ("alice", "s3cret")


def test_username_and_username_env_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="set exactly one of username, usernameFile, usernameEnv"):
        parse_config(_config({"username": "a", "usernameEnv": "X", "password": "p"}))


def test_unset_username_env_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_SASL_USER", raising=False)
    with pytest.raises(ConfigError, match="usernameEnv: environment variable TEST_SASL_USER is not set"):
        parse_config(_config({"usernameEnv": "TEST_SASL_USER", "password": "p"}))


def test_username_comes_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "username").write_text("bob\n")
    (tmp_path / "password").write_text("pw\n")
    config = parse_config(
        _config({"usernameFile": str(tmp_path / "username"), "passwordFile": str(tmp_path / "password")})
    )
    queue = config.queue("orders")
    assert isinstance(queue, KafkaQueueConfig)
    security = queue.security()
    assert security is not None
    assert (security.username, security.password) == ("bob", "pw")


def test_missing_username_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"usernameFile .*/nope: cannot read it"):
        parse_config(_config({"usernameFile": str(tmp_path / "nope"), "password": "p"}))
