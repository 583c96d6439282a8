"""Fixtures for dq tests (helpers live in dqkit.py)."""

from __future__ import annotations

import pytest
from dq.dqkit import DqEnv

from harness.servers import BeanstalkdCluster, RedisServer


@pytest.fixture
def dq(beanstalk_cluster: BeanstalkdCluster, redis_server: RedisServer, unique: str) -> DqEnv:
    return DqEnv(beanstalk_cluster, redis_server, unique)
