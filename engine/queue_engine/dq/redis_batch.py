"""Lua script calls made in the same event-loop iteration go to Redis as one command.

The scripts a :class:`ScriptBatcher` knows are compiled into one "batch" script, each as a
function of its own KEYS and ARGV; a batch of calls (any mix of those scripts) is one EVALSHA
that runs them in the order they were made and returns every answer. Redis and redis-py then
handle one command for the lot instead of one per job.

Guarantees: each call still sees and changes its keys atomically (the whole batch is even one
atomic step); every caller gets its own call's answer; a connection failure (or a script
error, which would be a bug) fails every call of the batch with the ``RedisError``, and
callers handle it as for a single call. NOSCRIPT (Redis restarted empty, or first use) comes
before anything ran: the script is loaded and the batch sent again.

Callers that give up (cancelled) do not cancel the batch: a Redis command cut midway costs
its pooled connection, and the other callers still want their answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

_FUNCTION = "fns[%d] = function(KEYS, ARGV)\n%s\nend\n"
# ARGV: the number of calls, then (function, keys, args) per call, then all args in order.
_RUN = """
local n = tonumber(ARGV[1])
local ki, ai = 0, 1 + 3 * n
local out = {}
for i = 1, n do
  local f, nk, na = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local keys, args = {}, {}
  for j = 1, nk do keys[j] = KEYS[ki + j] end
  for j = 1, na do args[j] = ARGV[ai + j] end
  ki, ai = ki + nk, ai + na
  out[i] = fns[f](keys, args)
end
return out
"""


class BatchScript:
    """A Lua script (using only its KEYS and ARGV, returning a non-nil value) that may run on
    its own or in a batch."""

    def __init__(self, redis: Redis, lua: str) -> None:
        self.lua = lua
        self.single = redis.register_script(lua)


_Call = tuple[int, list[Any], list[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    def __init__(self, redis: Redis, scripts: Sequence[BatchScript]) -> None:
        self._redis = redis
        self._index = {id(script): i + 1 for i, script in enumerate(scripts)}
        body = "".join(_FUNCTION % (i + 1, script.lua) for i, script in enumerate(scripts))
        self._batch = redis.register_script("local fns = {}\n" + body + _RUN)
        self._queue: list[_Call] = []
        self._running: set[asyncio.Task[None]] = set()

    def call(self, script: BatchScript, keys: list[Any], args: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._send)
        self._queue.append((self._index[id(script)], keys, args, fut))
        return fut

    def _send(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Call]) -> None:
        keys = [key for call in batch for key in call[1]]
        heads = [n for f, k, a, _ in batch for n in (f, len(k), len(a))]
        argv = [len(batch), *heads, *(arg for call in batch for arg in call[2])]
        try:
            try:
                answers = await self._redis.evalsha(self._batch.sha, len(keys), *keys, *argv)
            except NoScriptError:
                await self._redis.script_load(self._batch.script)
                answers = await self._redis.evalsha(self._batch.sha, len(keys), *keys, *argv)
        except asyncio.CancelledError:  # the loop is shutting down
            for *_, fut in batch:
                fut.cancel()
            raise
        except Exception as exc:  # handed to every caller, who decides
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (*_, fut), answer in zip(batch, answers, strict=True):
            if not fut.done():
                fut.set_result(answer)

    async def aclose(self) -> None:
        """Wait for batches on their way (their callers may be gone)."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
