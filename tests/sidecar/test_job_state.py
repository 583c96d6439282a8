"""GET /v1/delayqueues/{name}/jobs/{id} on the real sidecar while it delivers: in flight, done, buried."""

from __future__ import annotations

from collections.abc import Callable

from harness.servers import BeanstalkdCluster, RedisServer

from .clients import http
from .conftest import App, Sidecar, app_config, delay_queue, wait_until


def test_a_jobs_state_follows_its_deliveries(
    make_sidecar: Callable[..., Sidecar],
    http_app: App,
    beanstalk_cluster: BeanstalkdCluster,
    shared_redis: RedisServer,
    unique: str,
) -> None:
    http_app.script(
        {
            "slow": [{"sleep": 30}],
            "unwanted": [{"status": 500}, {"status": 400}],  # a retry, then a give-up
        }
    )
    sidecar = make_sidecar(
        {
            "app": app_config(http_app),
            "queues": [delay_queue(unique, beanstalk_cluster.addresses, shared_redis.url, timeout="60s")],
        }
    )
    sidecar.wait_ready()
    jobs = f"{sidecar.publish_url}/v1/delayqueues/{unique}/jobs"

    def publish(body: bytes) -> str:
        status, created = http("POST", f"{jobs}?delay=0s", body)
        assert status == 201, created
        job_id: str = created["id"]
        return job_id

    def state(job_id: str) -> dict[str, object]:
        status, job = http("GET", f"{jobs}/{job_id}")
        assert status == 200, job
        return dict(job)

    done, slow, unwanted = publish(b"fine"), publish(b"slow"), publish(b"unwanted")

    http_app.wait_for("fine")
    wait_until(lambda: state(done)["state"] == "done", 10, "the delivered job done", lambda: state(done))
    assert state(done)["attempts"] == 1

    http_app.wait_for("slow")
    job = state(slow)
    assert (job["state"], job["attempts"]) == ("in_flight", 1), job

    http_app.wait_for("unwanted", count=2)
    wait_until(lambda: state(unwanted)["state"] == "buried", 10, "buried", lambda: state(unwanted))
    job = state(unwanted)
    assert job["attempts"] == 2
    assert "HTTP 400" in str(job["last_error"])
