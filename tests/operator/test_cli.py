"""The ``queue-operator`` command line: help, and the liveness probe of a running operator."""

from __future__ import annotations

import subprocess
import urllib.request

from harness.kube_operator import OPERATOR, Cluster, OperatorProcess, eventually, example
from harness.servers import free_port


def test_help_lists_the_options() -> None:
    result = subprocess.run([str(OPERATOR), "--help"], capture_output=True, text=True, timeout=60, check=True)
    for option in ("--namespace", "--all-namespaces", "--liveness", "--verbose", "--reconcile-interval"):
        assert option in result.stdout


def test_namespace_and_all_namespaces_exclude_each_other() -> None:
    result = subprocess.run(
        [str(OPERATOR), "--namespace", "a", "--all-namespaces"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_liveness_endpoint_answers_while_running(cluster: Cluster, operator: OperatorProcess) -> None:
    port = free_port()
    operator.stop()
    operator.extra_args = ["--liveness", f"http://127.0.0.1:{port}/healthz"]
    operator.start()

    def alive() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    eventually(alive, what="the liveness probe answers 200")


def test_all_namespaces_mode_reconciles_any_namespace(cluster: Cluster, operator: OperatorProcess) -> None:
    operator.stop()
    operator.all_namespaces = True
    operator.start()
    cluster.apply(example("delayqueue.yaml"))
    eventually(
        lambda: cluster.apps.read_namespaced_stateful_set("reminders-beanstalkd", cluster.namespace),
        what="the StatefulSet",
    )
