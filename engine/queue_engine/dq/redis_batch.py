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

At most ``IN_FLIGHT`` batches are on their way at once: calls made meanwhile wait for one to
come back and then leave together. Under load a batch thus carries what piled up during a
round trip (fewer, larger commands: the client's per-command cost dominates); at light load
nothing is in flight and a call leaves in the next loop iteration as before.

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
# ARGV[1]: (function, keys, args) per call, as decimal numbers; ARGV[2]: every call's args in
# order, each followed by \31. The answers come back as one string: per call ``t`` and a
# table's items joined by \31, or ``s`` and a scalar; calls joined by \30. Two strings each way
# instead of a RESP array per call: redis-py's per-item packing and parsing cost more than
# the scripts themselves.
_RUN = r"""
local heads, all = {}, {}
for x in string.gmatch(ARGV[1], '%d+') do heads[#heads + 1] = tonumber(x) end
for x in string.gmatch(ARGV[2], '([^\31]*)\31') do all[#all + 1] = x end
local ki, ai = 0, 0
local out = {}
for i = 1, #heads / 3 do
  local f, nk, na = heads[3 * i - 2], heads[3 * i - 1], heads[3 * i]
  local keys, args = {}, {}
  for j = 1, nk do keys[j] = KEYS[ki + j] end
  for j = 1, na do args[j] = all[ai + j] end
  ki, ai = ki + nk, ai + na
  local r = fns[f](keys, args)
  if type(r) == 'table' then out[i] = 't' .. table.concat(r, '\31') else out[i] = 's' .. tostring(r) end
end
return table.concat(out, '\30')
"""


class BatchScript:
    """A Lua script (using only its KEYS and ARGV, returning a non-nil value) that may run on
    its own or in a batch. In a batch its answer is bytes, or a list of bytes for a table (so
    numbers come back as text); arguments and answers may not contain ``\\x1e`` or ``\\x1f``."""

    def __init__(self, redis: Redis, lua: str) -> None:
        self.lua = lua
        self.single = redis.register_script(lua)


IN_FLIGHT = 2  # batches on their way to Redis at once; later calls wait for one to come back

_Call = tuple[int, list[Any], list[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    def __init__(self, redis: Redis, scripts: Sequence[BatchScript]) -> None:
        self._redis = redis
        self._index = {id(script): i + 1 for i, script in enumerate(scripts)}
        body = "".join(_FUNCTION % (i + 1, script.lua) for i, script in enumerate(scripts))
        self._batch = redis.register_script("local fns = {}\n" + body + _RUN)
        self._queue: list[_Call] = []
        self._running: set[asyncio.Task[None]] = set()
        self._scheduled = False  # a _send is due in the next loop iteration

    def call(self, script: BatchScript, keys: list[Any], args: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        for arg in args:
            if isinstance(arg, str) and ("\x1e" in arg or "\x1f" in arg):
                raise ValueError(f"a batched script argument may not contain \\x1e or \\x1f: {arg!r}")
        self._queue.append((self._index[id(script)], keys, args, fut))
        if not self._scheduled and len(self._running) < IN_FLIGHT:
            self._scheduled = True
            loop.call_soon(self._send)
        return fut

    def _send(self) -> None:
        self._scheduled = False
        if not self._queue:
            return
        batch, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._queue and not self._scheduled:  # calls that waited for a batch to come back
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    async def _run(self, batch: list[_Call]) -> None:
        keys = [key for call in batch for key in call[1]]
        heads = " ".join(f"{f} {len(k)} {len(a)}" for f, k, a, _ in batch)
        args = "".join(f"{arg}\x1f" for call in batch for arg in call[2])
        argv = [heads, args]
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
        for (*_, fut), answer in zip(batch, answers.split(b"\x1e"), strict=True):
            if not fut.done():
                fut.set_result(answer[1:].split(b"\x1f") if answer[:1] == b"t" else answer[1:])

    async def aclose(self) -> None:
        """Wait for batches on their way (their callers may be gone)."""
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
