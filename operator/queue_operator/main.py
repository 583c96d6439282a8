"""``queue-operator``: run the kopf operator for DelayQueues and KafkaQueues.

Only wiring lives here: parse the command line, build kopf's settings and registry from it,
register the handlers (``queue_operator.handlers``) and run kopf until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import kopf

from queue_operator import handlers, webhook
from queue_operator.handlers.options import Options, Runtime, operator_settings
from queue_operator.kube import Kube

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
    webhook.add_arguments(parser)
    return parser.parse_args(argv)


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
    )
    kopf.configure(verbose=args.verbose, debug=args.debug)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, options)
    runtime = Runtime(options, Kube.from_environment())
    settings = operator_settings(options)
    webhook.enable(args, registry, settings, runtime.kube)
    namespaces = args.namespace
    log.info("watching %s", ", ".join(namespaces) if namespaces else "all namespaces")
    kopf.run(
        registry=registry,
        settings=settings,
        lifecycle=kopf.lifecycles.all_at_once,
        standalone=True,  # one replica (the chart uses the Recreate strategy): no peering
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(runtime=runtime),
    )


if __name__ == "__main__":
    cli()
