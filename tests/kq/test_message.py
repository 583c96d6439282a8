"""from_record fills the frozen KafkaMessage directly: it must equal one built the usual way."""

from __future__ import annotations

import dataclasses
from typing import Any

from queue_engine.kq.message import KafkaMessage, from_record


class FakeRecord:
    def __init__(self, headers: Any) -> None:
        self._headers = headers

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 3

    def offset(self) -> int:
        return 17

    def key(self) -> bytes:
        return b"k"

    def value(self) -> None:
        return None

    def headers(self) -> Any:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, 1234)


def test_from_record_equals_the_dataclass_and_stays_frozen() -> None:
    message = from_record(FakeRecord([("a", "x"), ("b", None), ("c", b"y")]), "q", attempt=2)
    assert message == KafkaMessage(
        "q", "t", 3, 17, b"k", b"", [("a", b"x"), ("b", b""), ("c", b"y")], 1234, 2
    )
    assert from_record(FakeRecord(None), "q").headers == []
    assert dataclasses.replace(message, attempt=3).attempt == 3
    try:
        message.attempt = 5  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("KafkaMessage must stay frozen")
    assert set(vars(message)) == {f.name for f in dataclasses.fields(KafkaMessage)}
