"""Consuming dq jobs: each job reaches the handler once in normal operation, at least once under failures.

:class:`DelayConsumer` wires the parts together and owns their lifecycle (run, stop, the
nodes consumed, health). Each part has its guarantees in its own docstring:

- per-node I/O: :mod:`~queue_engine.dq.beanstalk` (the protocol, pipelined),
  :mod:`~queue_engine.dq.node_io` (reconnects, hung-node isolation, node identity),
  :mod:`~queue_engine.dq.held` (reservations and the connections holding them);
- :mod:`~queue_engine.dq.reserving`: the workers reserving copies from each node, within the
  prefetch;
- :mod:`~queue_engine.dq.delivery`: one held copy, from its due time through the claim to the
  handler;
- :mod:`~queue_engine.dq.leases`: lease renewal and touches while a copy is held;
- :mod:`~queue_engine.dq.settling`: done, retry, bury, or put back when it may not run now;
- :mod:`~queue_engine.dq.siblings`: the other copies of a settled job deleted;
- the Redis decisions: :mod:`~queue_engine.dq.records` (one atomic script per decision),
  :mod:`~queue_engine.dq.redis_batch` (those made together share a round trip),
  :mod:`~queue_engine.dq.redis_watch` (reachability, clock, settings),
  :mod:`~queue_engine.dq.clock` (due decisions follow Redis's clock);
- :mod:`~queue_engine.dq.consumer_context`: what the parts share (stop, clock, pauses).

Normally only a job's working copy is ready: its standbys are due later (see
:mod:`~queue_engine.dq.producer`) and are deleted after the success. At most ``concurrency``
handler calls run at once across all nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from redis.exceptions import RedisError

from queue_engine.dq.consumer_context import ConsumerContext
from queue_engine.dq.delivery import Delivery, Handler
from queue_engine.dq.held import RESERVE_TIMEOUT, NodeLine
from queue_engine.dq.leases import LeaseKeeper
from queue_engine.dq.membership import Membership
from queue_engine.dq.node_io import AsyncNodeConnection
from queue_engine.dq.nodes import check_nodes, check_tube, shared_health
from queue_engine.dq.records import JobRecords
from queue_engine.dq.redis_client import DEFAULT_POOL, connect_redis
from queue_engine.dq.redis_watch import RedisWatch
from queue_engine.dq.reserving import RESERVERS_PER_NODE, Reserving
from queue_engine.dq.settling import Settler
from queue_engine.dq.siblings import Siblings
from queue_engine.errors import ConfigError
from queue_engine.policy import DeliveryPolicy

__all__ = ["DelayConsumer", "Handler"]

log = logging.getLogger(__name__)

STOP_MARGIN = 10.0  # seconds past the grace that stop() waits before cancelling what is left
# A node call running this long at stop is stuck on a hung node (a reserve returns within
# RESERVE_TIMEOUT, other calls within milliseconds): its socket is cut.
STUCK_AFTER = RESERVE_TIMEOUT + 0.5


class DelayConsumer:
    """Runs ``handler`` for each due job of ``tube``; see the module docs for how."""

    def __init__(
        self,
        nodes: Sequence[str],
        tube: str,
        redis_url: str,
        handler: Handler,
        *,
        policy: DeliveryPolicy | None = None,
        concurrency: int = 8,
        name: str | None = None,
        lease_ttl: float = 10.0,
        connect_timeout: float = 3.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        checked = check_nodes(nodes)
        self._tube = check_tube(tube)
        if not callable(handler):
            raise ConfigError("handler must be an async function taking a DelayJob and returning an Outcome")
        if concurrency < 1:
            raise ConfigError(f"concurrency is {concurrency}; use 1 or more")
        if lease_ttl < 1:
            raise ConfigError(f"lease_ttl is {lease_ttl}s; use 1s or more")
        self._redis_url = redis_url
        connect_redis(redis_url, connect_timeout)  # refuse a bad URL now, not when run() starts
        self._handler = handler
        self._policy = policy or DeliveryPolicy()
        self._concurrency = concurrency
        self.queue = name or tube
        self._lease_ttl = lease_ttl
        self._connect_timeout = connect_timeout
        self._ctx = ConsumerContext(
            self.queue, self._tube, checked, connect_timeout=connect_timeout, clock=clock
        )
        self._running = False
        self._finished = asyncio.Event()
        # Shared by every connection to a node (and with this process's producers): one timeout
        # makes the node suspect, and calls on it then fail at once instead of each waiting out
        # a timeout (see nodes.py).
        self._health = {node: shared_health(node) for node in checked}
        self._reservers = min(concurrency, RESERVERS_PER_NODE)
        self._control: dict[str, AsyncNodeConnection] = {}
        self._lines: dict[str, NodeLine] = {}
        self._workers: dict[str, list[asyncio.Task[None]]] = {}
        # Per node: copies reserved and waiting for a handler slot, at most (the reserving
        # workers' own permits on top: each holds one while it waits in reserve).
        self._prefetch = concurrency + self._reservers
        self._max_waiting = max(1024, 8 * concurrency)  # per node: copies waiting for their due time
        self._delivery: Delivery | None = None
        self._watch: RedisWatch | None = None

    @property
    def _nodes(self) -> list[str]:
        return self._ctx.nodes

    @property
    def redis_warnings(self) -> list[str] | None:
        """Risky Redis settings seen once Redis answered (None: not checked yet). Not part of
        :meth:`health`, which is about reachability: the sidecar shows them in /v1/status."""
        return self._watch.warnings if self._watch is not None else None

    # -- public --------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until :meth:`stop`; node and Redis outages are waited out, not raised."""
        if self._running:
            raise RuntimeError("this consumer is already running")
        self._running = True
        ctx = self._ctx
        # Held copies wait their turn for a connection in a burst; the watch has its own, so
        # that its verdict on Redis never waits in that queue.
        pool = max(DEFAULT_POOL, 4 * self._concurrency + 16)
        redis = connect_redis(self._redis_url, self._connect_timeout, max_connections=pool)
        watch_client = connect_redis(self._redis_url, self._connect_timeout, max_connections=2)
        records = JobRecords(redis, self._tube, batched=True)
        # Deletes of other copies; quick calls only, so a short I/O timeout.
        self._control = {}
        self._lines = {}
        self._workers = {}
        siblings = Siblings(self.queue, self._control, records, ctx.pause)
        keeper = LeaseKeeper(ctx, records, self._lease_ttl)
        settler = Settler(ctx, records, siblings, self._policy)
        delivery = self._delivery = Delivery(
            ctx,
            handler=self._handler,
            policy=self._policy,
            concurrency=self._concurrency,
            records=records,
            keeper=keeper,
            settler=settler,
        )
        watch = self._watch = RedisWatch(
            ctx, client=watch_client, redis=redis, keeper=keeper, claimed=delivery.claimed, siblings=siblings
        )
        self._reserving = Reserving(ctx, self._lines, self._health, delivery.start)
        with contextlib.suppress(RedisError):
            await watch.measure_clock()  # before the first copy is held; the watch keeps it up
        watching = asyncio.create_task(watch.run(), name=f"dq-{self.queue}-redis")
        for node in self._nodes:
            self._start_node(node)
        log.info(
            "dq consumer %s started on %d node(s), concurrency %d",
            self.queue,
            len(self._nodes),
            self._concurrency,
        )
        workers: set[asyncio.Task[None]] = set()
        holders = delivery.holders
        try:
            while True:  # until every worker ended (stop), including those of nodes added meanwhile
                workers = {t for tasks in self._workers.values() for t in tasks if not t.done()}
                if not workers:
                    break
                await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
            while holders:  # copies still held: they hand themselves back (and leave the set)
                await asyncio.wait(set(holders))
                holders.difference_update([t for t in holders if t.done()])  # cancelled unstarted
        finally:
            workers = {t for tasks in self._workers.values() for t in tasks}
            for task in [*workers, *holders]:
                task.cancel()  # only left after run() itself was cancelled
            # The watch is asked to end, not cancelled: redis-py can swallow a cancellation
            # that lands inside a command, and the task would then never end.
            watch.closing.set()
            await asyncio.gather(watching, *workers, *holders, return_exceptions=True)
            delivery.close()
            await siblings.aclose()
            self._close_connections()
            await records.aclose()
            await redis.aclose()
            await watch_client.aclose()
            self._running = False
            self._finished.set()
            log.info("dq consumer %s stopped", self.queue)

    @property
    def nodes(self) -> list[str]:
        """The nodes consumed now (active and draining)."""
        return list(self._nodes)

    def set_nodes(self, active: Sequence[str], draining: Sequence[str] = ()) -> None:
        """Consume from ``active`` and ``draining`` nodes from now on; no restart needed.

        Call it on the consumer's event loop. A new node gets its reserving workers at once; a
        node in neither list stops being reserved from (copies already held there are still
        settled on their own connections). Draining nodes are consumed like active ones: their
        jobs stay deliverable until they have been moved away.
        """
        nodes = list(Membership.of(active, draining).all)
        added = [node for node in nodes if node not in self._nodes]
        removed = [node for node in self._nodes if node not in nodes]
        self._ctx.nodes = nodes
        for node in nodes:
            self._health.setdefault(node, shared_health(node))
        for node in removed:
            self._ctx.node_errors.pop(node, None)
        if self._running and not self._ctx.stopping.is_set():
            for node in added:
                self._start_node(node)
        if added or removed:
            log.info("dq %s: consuming from %s (added %s, removed %s)", self.queue, nodes, added, removed)

    def _start_node(self, node: str) -> None:
        """Start reserving from ``node`` (its control connection and line are kept once made:
        settled jobs may still name copies there)."""
        if node not in self._control:
            self._control[node] = AsyncNodeConnection(
                node,
                self._tube,
                connect_timeout=self._connect_timeout,
                io_timeout=self._connect_timeout,
                health=self._health[node],
            )
        self._lines.setdefault(node, NodeLine(self._prefetch, self._max_waiting))
        running = [t for t in self._workers.get(node, []) if not t.done()]
        # Workers of a node removed and added back may still be ending: they end on their own.
        self._workers[node] = running + [
            asyncio.create_task(self._reserving.work(node), name=f"dq-{self.queue}-{node}-{i}")
            for i in range(self._reservers - len(running))
        ]

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking jobs; let handlers finish within ``grace`` seconds, hand back the rest."""
        self._ctx.stop()
        if self._delivery is not None:
            self._delivery.stopping()  # copies waiting for one of ours hand themselves back now
        if not self._running or self._delivery is None:
            return
        self._ctx.deadline = time.monotonic() + grace
        await self._delivery.let_handlers_finish(grace)
        give_up = time.monotonic() + STOP_MARGIN
        while not self._finished.is_set() and time.monotonic() < give_up:
            # Calls stuck on a hung node would each wait out their timeout: cut them.
            for health in self._health.values():
                health.abort_stuck(STUCK_AFTER)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._finished.wait()), 0.25)
        if not self._finished.is_set():
            # Should not happen; if it does, closing the connections hands every held copy back.
            for holder in set(self._delivery.holders):
                frames = "; ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in holder.get_stack())
                log.error(
                    "dq %s: copy still held %.0fs after stop; cancelling (%s)",
                    self.queue,
                    STOP_MARGIN,
                    frames,
                )
                holder.cancel()
            await self._finished.wait()

    def health(self) -> tuple[bool, str]:
        if not self._running:
            return False, "consumer not running"
        if self._ctx.redis_error is not None:
            return False, f"redis unreachable: {self._ctx.redis_error}"
        down = {node: error for node, error in self._ctx.node_errors.items() if node in self._nodes}
        if len(down) == len(self._nodes):
            return False, "no beanstalkd node reachable: " + "; ".join(f"{n} ({e})" for n, e in down.items())
        if down:
            return True, "ok; unreachable: " + "; ".join(f"{n} ({e})" for n, e in down.items())
        return True, "ok"

    def _close_connections(self) -> None:
        for conn in self._control.values():
            conn.close()
        for line in self._lines.values():
            line.close()
