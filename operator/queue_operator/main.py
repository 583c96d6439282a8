"""``queue-operator``: run the kopf operator for DelayQueues and KafkaQueues.

Only wiring lives here: parse the command line, build kopf's settings and registry from it,
register the handlers (``queue_operator.handlers``) and run kopf until SIGTERM. With
``--leader-elect`` the controller first waits for the Lease (``queue_operator.leader``); with
``--role webhook`` it serves only the injection webhook, which needs no leader.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import logging
import os
import secrets
import signal
import socket
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import kopf

from queue_operator import handlers, metrics, webhook
from queue_operator.handlers.options import Options, Runtime, operator_settings
from queue_operator.kube import Kube, own_namespace
from queue_operator.leader import LeaderElection, Timing

log = logging.getLogger("queue_operator")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="queue-operator",
        description=(
            "Reconcile DelayQueue (beanstalkd StatefulSet, headless Service, PodDisruptionBudget) and "
            "KafkaQueue (topic and dead-letter topic) resources of queue-operator.dev/v1alpha1. "
            "Uses the in-cluster service account, or KUBECONFIG outside a cluster."
        ),
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; globs like 'team-*' work); default: all namespaces",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)"
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics at http://<metrics-host>:PORT/metrics (default: not served)",
    )
    parser.add_argument(
        "--metrics-host", default="0.0.0.0", help="address the metrics port binds (default %(default)s)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (kopf's verbose mode)")
    parser.add_argument("--debug", action="store_true", help="log every API call (kopf's debug mode)")
    defaults = Options()
    timing = parser.add_argument_group("timing (seconds)")
    timing.add_argument(
        "--reconcile-interval",
        type=float,
        default=defaults.reconcile_interval,
        help="how often each resource's actual state is checked against its spec (default %(default)s)",
    )
    timing.add_argument(
        "--drain-grace",
        type=float,
        default=defaults.drain_grace,
        help="before moving a leaving node's jobs, wait this long for every sidecar to see it draining "
        "(the kubelet's ConfigMap sync, up to about a minute, plus the 2 s poll; default %(default)s)",
    )
    timing.add_argument(
        "--retry-delay",
        type=float,
        default=defaults.retry_delay,
        help="first wait before retrying after a transient failure (default %(default)s)",
    )
    timing.add_argument(
        "--retry-delay-max",
        type=float,
        default=defaults.retry_delay_max,
        help="the waits between retries double up to this (default %(default)s)",
    )
    timing.add_argument(
        "--watch-timeout",
        type=float,
        default=defaults.watch_timeout,
        help="server-side timeout of each watch request (default %(default)s)",
    )
    timing.add_argument(
        "--kafka-timeout",
        type=float,
        default=defaults.kafka_timeout,
        help="bound of each call to the Kafka brokers (default %(default)s)",
    )
    parser.add_argument(
        "--delete-retries",
        type=int,
        default=defaults.delete_retries,
        help=(
            "tries to delete a KafkaQueue's topics (deletionPolicy Delete) while the brokers fail, "
            "before the resource is released with its topics left in place (default %(default)s)"
        ),
    )
    parser.add_argument(
        "--delete-timeout",
        type=float,
        default=defaults.delete_timeout,
        help=(
            "seconds after a Delete KafkaQueue's deletion when, if its topics still cannot be "
            "deleted, it is released anyway with a Warning event (default %(default)s)"
        ),
    )
    parser.add_argument(
        "--workers", type=int, default=defaults.workers, help="handler threads (default %(default)s)"
    )
    parser.add_argument(
        "--role",
        choices=("all", "controller", "webhook"),
        default="all",
        help=(
            "controller: reconcile queues; webhook: serve only the injection webhook (any number of "
            "replicas, no leader election); all: both in one process (default %(default)s)"
        ),
    )
    election = parser.add_argument_group("leader election (controller)")
    election.add_argument(
        "--leader-elect",
        action="store_true",
        help="act only while holding a coordination.k8s.io Lease, so that several replicas are safe",
    )
    election.add_argument(
        "--leader-election-namespace",
        metavar="NS",
        help="namespace of the Lease (default: the pod's own, from its service account, else default)",
    )
    election.add_argument(
        "--leader-election-name",
        default="queue-operator",
        metavar="NAME",
        help="the Lease (default %(default)s)",
    )
    election.add_argument(
        "--lease-seconds",
        type=float,
        default=Timing.lease_seconds,
        help="a silent leader is replaced after this long (default %(default)s)",
    )
    webhook.add_arguments(parser)
    return parser.parse_args(argv)


def _election(args: argparse.Namespace, kube: Kube) -> LeaderElection:
    lease = float(args.lease_seconds)
    timing = Timing(
        lease_seconds=lease,
        renew_deadline=lease * 2 / 3,
        renew_every=lease / 4,
        retry_every=min(2.0, lease / 5),
    )
    identity = f"{socket.gethostname()}-{secrets.token_hex(3)}"
    namespace = args.leader_election_namespace or own_namespace()
    return LeaderElection(kube, namespace, args.leader_election_name, identity, timing)


@contextlib.contextmanager
def _liveness_while_waiting(url: str | None) -> Iterator[None]:
    if not url:
        yield
        return
    parsed = urllib.parse.urlsplit(url)

    class Alive(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == parsed.path else 404)
            self.end_headers()

        def log_message(self, *_: Any) -> None:  # probes every few seconds: not worth a line
            pass

    server = http.server.ThreadingHTTPServer((parsed.hostname or "0.0.0.0", parsed.port or 80), Alive)
    thread = threading.Thread(target=server.serve_forever, name="follower-liveness", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _exit_soon(code: int, after: float) -> None:
    """Leadership lost: give kopf ``after`` seconds to stop its handlers, then go regardless."""
    timer = threading.Timer(after, os._exit, args=(code,))
    timer.daemon = True
    timer.start()


def cli(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    options = Options(
        reconcile_interval=args.reconcile_interval,
        retry_delay=args.retry_delay,
        retry_delay_max=args.retry_delay_max,
        watch_timeout=args.watch_timeout,
        kafka_timeout=args.kafka_timeout,
        delete_retries=args.delete_retries,
        delete_timeout=args.delete_timeout,
        workers=args.workers,
        drain_grace=args.drain_grace,
    )
    kopf.configure(verbose=args.verbose, debug=args.debug)
    if args.role == "webhook" and args.webhook_port is None:
        raise SystemExit("--role webhook needs --webhook-port")
    registry = kopf.OperatorRegistry()
    handlers.register_login(registry)
    if args.role in ("all", "controller"):
        handlers.register(registry, options)
    runtime = Runtime(options, Kube.from_environment(timeout=30.0))
    settings = operator_settings(options)
    if args.role in ("all", "webhook"):
        webhook.enable(args, registry)  # its own threads, API client and event loop
    namespaces = args.namespace
    log.info("role %s, watching %s", args.role, ", ".join(namespaces) if namespaces else "all namespaces")
    if args.metrics_port is not None:
        metrics.serve(args.metrics_port, args.metrics_host)
    # SIGTERM before kopf has its own handlers (while waiting for the Lease, or just after taking
    # it) must still stop the process the graceful way, so that a leader releases its Lease.
    terminating = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: terminating.set())
    elector = None
    if args.leader_elect and args.role != "webhook":
        elector = _election(args, Kube.from_environment(timeout=5.0))
        # A follower is alive while it waits: answer the liveness probe until kopf takes the port.
        with _liveness_while_waiting(args.liveness):
            if not elector.acquire(terminating):
                return
    if args.role != "webhook":
        metrics.LEADER.set(1)
    try:
        lost = asyncio.run(_operate(args, registry, settings, runtime, elector, terminating=terminating))
    finally:
        runtime.redis_checks.shutdown()
    if lost:
        raise SystemExit(1)
    if elector is not None:
        elector.release()


async def _operate(
    args: argparse.Namespace,
    registry: kopf.OperatorRegistry,
    settings: kopf.OperatorSettings,
    runtime: Runtime,
    elector: LeaderElection | None,
    *,
    terminating: threading.Event,
) -> bool:
    """Run kopf until SIGTERM, or until the leadership is lost (then True)."""
    loop = asyncio.get_running_loop()
    stop, lost, renewing = asyncio.Event(), threading.Event(), threading.Event()
    # Until kopf installs its own: a SIGTERM stops kopf through its stop flag (one that came
    # before the loop ran is seen here too).
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if terminating.is_set():
        stop.set()
    if elector is not None:

        def on_lost() -> None:
            metrics.LEADER.set(0)
            lost.set()
            loop.call_soon_threadsafe(stop.set)
            _exit_soon(1, after=5.0)

        elector.keep(renewing, on_lost)
    try:
        await kopf.operator(
            registry=registry,
            settings=settings,
            lifecycle=kopf.lifecycles.all_at_once,
            # Several replicas are made safe by the Lease above, not by kopf's peering.
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness,
            memo=kopf.Memo(runtime=runtime),
            stop_flag=stop,
        )
    finally:
        renewing.set()
    return lost.is_set()


if __name__ == "__main__":
    cli()
