"""``queuectl``: publish, revoke and inspect DelayQueues and KafkaQueues from a shell.

The queue's servers come from a sidecar config file (``--config``) or from the cluster
(``--context``/``--namespace``, the current kubeconfig context by default). Exit codes: 0 done,
1 the operation failed (unknown queue, servers unreachable, bad config), 2 the command line is
wrong (usage, bad duration, time in the past, wrong kind of queue).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import sys
from collections.abc import Sequence
from datetime import datetime

from queue_engine.durations import parse_duration, parse_rfc3339
from queue_engine.errors import ConfigError, InvalidRequest, QueueError
from queue_sidecar.ctl import output
from queue_sidecar.ctl.base import Report
from queue_sidecar.ctl.commands import COMMANDS
from queue_sidecar.ctl.source import ConfigFileSource, QueueSource, split_kind

log = logging.getLogger("queuectl")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EPILOG = """\
examples:
  queuectl --config sidecar.yaml delay reminders 'call Bob' --in 30s
  queuectl --config sidecar.yaml delay reminders 'standup' --at 2026-01-05T09:00:00+01:00
  queuectl --config sidecar.yaml revoke reminders 3f2a...      # the id delay printed
  queuectl --context prod -n shop push orders '{"id": 7}' --key customer-42 --header source=cli
  queuectl get reminders 3f2a...                               # state, due time, attempts
  queuectl stats reminders          # current kube context and namespace
  queuectl buried reminders         # list buried jobs; buried reminders kick|delete ID
  queuectl dlq orders --limit 20    # list pending dead letters; dlq orders replay [P:OFFSET]
  queuectl completion bash > /etc/bash_completion.d/queuectl
"""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time(text: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _header(text: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"header {text!r}: write NAME=VALUE")
    return name, value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    # The global options are accepted before or after the command: each subparser repeats them
    # with SUPPRESS defaults so a value given up front is not overwritten.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    where = common.add_argument_group("where the queues are (one of)")
    where.add_argument("--config", "-c", metavar="FILE", help="a queue-sidecar config file")
    where.add_argument("--context", metavar="CTX", help="kubeconfig context (default: the current one)")
    where.add_argument(
        "--kubeconfig", metavar="FILE", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    where.add_argument("--namespace", "-n", metavar="NS", help="namespace (default: the context's)")
    common.add_argument("--output", "-o", choices=output.FORMATS, help="output format (default: table)")
    common.add_argument(
        "--body-encoding",
        choices=output.BODY_ENCODINGS,
        help="bodies, keys and header values: text when printable UTF-8, else base64 (auto, the "
        "default), or always base64",
    )
    common.add_argument(
        "--timeout", type=_duration, metavar="DUR", help="how long to wait for the servers (default: 30s)"
    )
    common.add_argument("--verbose", "-v", action="store_true", help="log what the engines do")

    parser = argparse.ArgumentParser(
        prog="queuectl",
        description="Publish, revoke and inspect DelayQueues and KafkaQueues.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    queue_help = "queue name (or delayqueue/NAME, kafkaqueue/NAME)"

    p = commands.add_parser("delay", parents=[common], help="publish a delayed or timed job to a DelayQueue")
    p.add_argument("queue", metavar="QUEUE", help=queue_help)
    p.add_argument("body", metavar="BODY", help="the job's body; - reads it from stdin")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--in", dest="in_", type=_duration, metavar="DUR", help="run after this long (30s, 1h)")
    when.add_argument("--at", type=_time, metavar="TIME", help="run at this RFC 3339 time")

    p = commands.add_parser("revoke", parents=[common], help="make sure a delayed job never runs")
    p.add_argument("queue", metavar="QUEUE", help=queue_help)
    p.add_argument("id", metavar="ID", help="the job id that delay printed")

    p = commands.add_parser("get", parents=[common], help="a DelayQueue job's state, due time and attempts")
    p.add_argument("queue", metavar="QUEUE", help=queue_help)
    p.add_argument("id", metavar="ID", help="the job id that delay printed")

    p = commands.add_parser("push", parents=[common], help="push a message to a KafkaQueue")
    p.add_argument("queue", metavar="QUEUE", help=queue_help)
    p.add_argument("body", metavar="BODY", help="the message's value; - reads it from stdin")
    p.add_argument("--key", "-k", help="the message key (same key, same partition, in order)")
    p.add_argument(
        "--header",
        "-H",
        type=_header,
        action="append",
        metavar="NAME=VALUE",
        help="a Kafka header; repeatable",
    )

    p = commands.add_parser(
        "stats", parents=[common], help="jobs per node and state (dq), lag per partition (kq)"
    )
    p.add_argument("queue", metavar="QUEUE", help=queue_help)

    p = commands.add_parser("kick", parents=[common], help="re-queue buried jobs of a DelayQueue")
    p.add_argument("queue", metavar="QUEUE", help=queue_help)
    p.add_argument("count", metavar="N", nargs="?", type=_positive, help="at most N jobs (default: all)")

    p = commands.add_parser(
        "buried",
        parents=[common],
        help="list buried jobs of a DelayQueue, or get, kick or delete one",
        description="Without an action: a page of buried jobs, oldest first. With one: that job.",
    )
    p.add_argument("queue", metavar="QUEUE", help=queue_help)
    p.add_argument("action", nargs="?", choices=["get", "kick", "delete"], help="what to do with job ID")
    p.add_argument("ref", metavar="ID", nargs="?", help="the job id, as the listing shows it")
    _paging(p)

    p = commands.add_parser(
        "dlq",
        parents=[common],
        help="list dead letters of a KafkaQueue, or get, replay or skip one (buried jobs for a DelayQueue)",
        description="Without an action: a page of pending dead letters, oldest first. With one: "
        "that dead letter (REF is PARTITION:OFFSET in the dead-letter topic); replay without REF "
        "replays every pending one.",
    )
    p.add_argument("queue", metavar="QUEUE", help=queue_help)
    p.add_argument("action", nargs="?", choices=["get", "replay", "skip"], help="what to do with REF")
    p.add_argument("ref", metavar="REF", nargs="?", help="PARTITION:OFFSET, as the listing shows it")
    p.add_argument("--all", action="store_true", help="list replayed and skipped dead letters too")
    p.add_argument("--replay", action="store_true", help="the same as the replay action (kept for scripts)")
    _paging(p, limit_help="at most N (default: 100 listed, all replayed)")

    p = commands.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=["bash", "zsh"], help="the shell")
    return parser


def _paging(p: argparse.ArgumentParser, limit_help: str = "at most N (default: 100)") -> None:
    p.add_argument("--limit", type=_positive, metavar="N", help=limit_help)
    p.add_argument("--after", metavar="CURSOR", help="continue a listing: the value its last page printed")


def _version() -> str:
    try:
        return importlib.metadata.version("queue-operator")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _defaults(args: argparse.Namespace) -> argparse.Namespace:
    for name, value in {
        "config": None,
        "context": None,
        "kubeconfig": None,
        "namespace": None,
        "output": "table",
        "body_encoding": "auto",
        "timeout": 30.0,
        "verbose": False,
    }.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    return args


def _body(text: str) -> bytes:
    return sys.stdin.buffer.read() if text == "-" else text.encode()


def _source(args: argparse.Namespace) -> QueueSource:
    if args.config is not None:
        return ConfigFileSource(args.config)
    from queue_sidecar.ctl.kube import KubeSource  # noqa: PLC0415 - the kubernetes client is slow to import

    return KubeSource(args.context, args.namespace, kubeconfig=args.kubeconfig, timeout=args.timeout)


async def _run(args: argparse.Namespace) -> Report:
    name, kind = split_kind(args.queue)
    source = _source(args)
    try:
        queue = await asyncio.to_thread(source.find, name, kind)
        return await COMMANDS[args.command](queue, args)
    finally:
        source.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _defaults(parser.parse_args(argv))
    if args.command == "completion":
        return _completion(parser, args.shell)
    if args.config is not None and any(
        v is not None for v in (args.context, args.namespace, args.kubeconfig)
    ):
        parser.error("give either --config or --kubeconfig/--context/--namespace, not both")
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="queuectl: %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # librdkafka retries a broker that is down loudly; the error we print says it once.
        logging.getLogger("queue_engine.kq.librdkafka").setLevel(logging.CRITICAL)
        logging.getLogger("urllib3").setLevel(logging.ERROR)  # the kube client's retries
    if hasattr(args, "body"):
        args.body = _body(args.body)
    try:
        report = asyncio.run(_run(args))
    except ConfigError as exc:  # before ValueError: a bad config is not a bad command line
        print(f"queuectl {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (InvalidRequest, ValueError) as exc:
        print(f"queuectl {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except QueueError as exc:
        print(f"queuectl {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug or an error nobody classified: say so without a wall of text
        log.debug("unexpected failure", exc_info=exc)
        print(
            f"queuectl {args.command}: unexpected {type(exc).__name__}: {exc} (-v shows where)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    _show(report, args.output)
    if report.failure:
        print(f"queuectl {args.command}: {report.failure}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _show(report: Report, fmt: str) -> None:
    out = sys.stdout
    if fmt == "json":
        output.as_json(report.data, out)
        return
    if fmt == "yaml":
        output.as_yaml(report.data, out)
        return
    wide = fmt == "wide"
    if report.message:
        print(report.message, file=out)
    if report.fields:
        output.fields(report.fields, out, wide=wide)
    if report.columns:
        columns = report.columns + (report.wide_columns if wide else [])
        output.table(report.rows, columns, out, wide=wide)
    if report.after:
        print(f"more: add --after {report.after}", file=out)


def _completion(parser: argparse.ArgumentParser, shell: str) -> int:
    import shtab  # noqa: PLC0415 - only this command needs it

    print(shtab.complete(parser, shell=shell))
    return EXIT_OK


def cli() -> None:
    sys.exit(main())
