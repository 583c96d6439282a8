"""The harness's beanstalkd and Redis are real and controllable."""

from __future__ import annotations

import greenstalk
import pytest
import redis

from harness.servers import BeanstalkdCluster, RedisServer


def _client(address: str, tube: str) -> greenstalk.Client:
    host, port = address.split(":")
    return greenstalk.Client((host, int(port)), use=tube, watch=tube)


def test_job_put_on_one_node_is_reserved_there_and_not_on_another(
    beanstalk_cluster: BeanstalkdCluster, unique: str
) -> None:
    first = _client(beanstalk_cluster[0].address, unique)
    second = _client(beanstalk_cluster[1].address, unique)
    job_id = first.put(b"hello")
    with pytest.raises(greenstalk.TimedOutError):
        second.reserve(timeout=0)
    job = first.reserve(timeout=1)
    assert (job.id, job.body) == (job_id, "hello")
    first.delete(job)


def test_killed_node_restarted_from_binlog_still_has_its_job(
    beanstalk_cluster: BeanstalkdCluster, unique: str
) -> None:
    node = beanstalk_cluster[0]
    _client(node.address, unique).put(b"survives", delay=0)
    node.kill()
    with pytest.raises(ConnectionError):
        _client(node.address, unique)
    node.start()
    job = _client(node.address, unique).reserve(timeout=1)
    assert job.body == "survives"


def test_redis_set_get_and_stop(redis_server: RedisServer, unique: str) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set(unique, b"v")
    assert client.get(unique) == b"v"
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        client.get(unique)
    redis_server.start()
    assert client.get(unique) is None  # started without persistence: a real, fresh server
