"""``queue-sidecar --config FILE``: run the sidecar until SIGTERM or SIGINT, then drain and exit 0."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from queue_sidecar import logs
from queue_sidecar.config import ConfigError, SidecarConfig, load_config

log = logging.getLogger("queue_sidecar")

EXIT_CONFIG = 2  # like argparse: the invocation, not the run, is wrong
EXIT_FAILED = 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="queue-sidecar",
        description="Consume DelayQueue and KafkaQueue queues, deliver to the app over HTTP or gRPC, "
        "and publish for it. See docs/sidecar.md.",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="the sidecar's YAML config")
    parser.add_argument("--check", action="store_true", help="validate the config, print nothing, exit")
    return parser.parse_args(argv)


async def serve(config: SidecarConfig) -> None:
    from queue_sidecar.runtime import Sidecar  # noqa: PLC0415 - `--check` needs no engines

    sidecar = Sidecar(config)
    # Everything imported and built so far lives as long as the process: keep it out of the
    # cyclic GC's full collections, which otherwise stall delivery for milliseconds at a time.
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sidecar.request_stop)
    await sidecar.run()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (it costs less CPU per message), else asyncio's."""
    try:
        import uvloop  # noqa: PLC0415 - optional at import time: the sidecar also runs without it
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def cli(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"queue-sidecar: invalid config\n{exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    if args.check:
        return
    logs.configure(config.log_level)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve(config))
    except Exception as exc:
        # One line that says what failed (a port taken, a setting the engine refused); the
        # traceback is for debugging (logLevel: debug), not for the person reading the error.
        log.error("sidecar failed", extra={"error": str(exc) or type(exc).__name__})
        log.debug("sidecar failed", exc_info=True)
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    cli()
