"""What a test app answers, and where it writes down what it received.

The script is a JSON file the test may rewrite at any time (it is re-read when it changes)::

    {"default": {"status": 200},
     "bodies": {"flaky": [{"status": 500}, {"status": 200}], "slow": [{"sleep": 30}]}}

Each message whose body matches a key in ``bodies`` takes that list's next answer; the last one
repeats. Answer fields: HTTP ``status``, ``headers``, ``json``; gRPC ``ack`` (SUCCESS, RETRY,
DROP), ``error``, ``retryAfter`` (seconds), ``code`` (a gRPC status name to fail with); both
``sleep`` (seconds before answering). Every message is appended to the record file as one JSON
line the moment it arrives, before any sleep.

Bulk delivery: each call takes the next answer of the optional ``batches`` list (the last one
repeats; HTTP ``status``, gRPC ``code``); unless that fails the whole call, each message of the
batch is answered by its body's answer as ``ack``/``error``/``retryAfter`` (both protocols), and
recorded with ``batch`` (the call's number, from 1) and ``batch_size``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class Script:
    def __init__(self, script_path: Path, record_path: Path) -> None:
        self.script_path = script_path
        self.record_path = record_path
        self._mtime = -1.0
        self._script: dict[str, Any] = {}
        self._seen: dict[str, int] = {}
        self._batches = 0

    def _load(self) -> dict[str, Any]:
        try:
            mtime = os.stat(self.script_path).st_mtime
        except FileNotFoundError:
            return {}
        if mtime != self._mtime:
            self._script = json.loads(self.script_path.read_text() or "{}")
            self._mtime = mtime
            self._seen.clear()
        return self._script

    def answer_for(self, body: bytes) -> dict[str, Any]:
        script = self._load()
        text = body.decode("utf-8", "replace")
        answers = script.get("bodies", {}).get(text)
        if not answers:
            return dict(script.get("default", {}))
        index = self._seen.get(text, 0)
        self._seen[text] = index + 1
        return dict(answers[min(index, len(answers) - 1)])

    def batch_answer(self) -> tuple[int, dict[str, Any]]:
        """The number of this bulk call (from 1) and its whole-call answer."""
        answers = self._load().get("batches") or [{}]
        self._batches += 1
        return self._batches, dict(answers[min(self._batches - 1, len(answers) - 1)])

    def record(self, entry: dict[str, Any]) -> None:
        entry = {"t": time.time(), "pid": os.getpid(), **entry}
        with self.record_path.open("a") as out:
            out.write(json.dumps(entry) + "\n")
            out.flush()
