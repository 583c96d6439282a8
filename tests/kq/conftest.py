"""Fixtures of the kq tests (helpers live in kq_helpers)."""

from __future__ import annotations

import pytest

from harness.servers import Tansu


@pytest.fixture
def bootstrap(kafka_broker: Tansu) -> str:
    """The shared in-memory broker; tests use ``unique`` topic and group names."""
    return kafka_broker.bootstrap
