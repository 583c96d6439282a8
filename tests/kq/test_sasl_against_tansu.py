"""SASL settings really reach a broker: tansu with ``--authentication`` speaks SCRAM.

Tansu 0.6 offers no way here to create SCRAM users (AlterUserScramCredentials needs an
authenticated connection first), so a successful login cannot be shown; what can be shown is
that the SCRAM exchange happens and a refused login reaches the caller as an error naming it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from harness.servers import Tansu
from queue_engine.errors import Unavailable
from queue_engine.kq import KafkaConsumer, KafkaPusher, KafkaSecurity
from queue_engine.kq.config import FAST_GROUP
from queue_engine.policy import Outcome


class AuthenticatingTansu(Tansu):
    def argv(self) -> Sequence[str]:
        return [*super().argv(), "--authentication"]


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Tansu]:
    broker = AuthenticatingTansu(tmp_path / "tansu-auth")
    broker.start()
    yield broker
    broker.kill()


SCRAM = KafkaSecurity("SCRAM-SHA-256", "nobody", "wrong-password")


async def test_push_with_refused_scram_login_fails_with_the_reason(auth_broker: Tansu) -> None:
    pusher = KafkaPusher(
        [auth_broker.bootstrap], "orders", security=SCRAM, extra={"message.timeout.ms": 3000}
    )
    with pytest.raises(Unavailable) as caught:
        await pusher.push(b"x")
    await pusher.close(timeout=1)
    assert "SCRAM authentication failed" in str(caught.value)
    assert "wrong-password" not in str(caught.value)


async def test_consumer_with_refused_scram_login_does_not_start(auth_broker: Tansu) -> None:
    async def handle(_message: object) -> Outcome:
        return Outcome.success()

    consumer = KafkaConsumer(
        [auth_broker.bootstrap], "orders", "g", handle, security=SCRAM, connect_timeout=3, extra=FAST_GROUP
    )
    with pytest.raises(Unavailable, match="not reachable") as caught:
        await consumer.run()
    assert "SCRAM authentication failed" in str(caught.value)
    healthy, why = consumer.health()
    assert not healthy
    assert "wrong-password" not in why
