"""What a dq job looks like inside beanstalkd: a fixed-size header, then the caller's bytes.

The header carries what every copy must know on its own: the job's id (shared by all of its
copies, the key of its Redis record) and its exact due time (beanstalkd only knows whole
seconds). Layout, ASCII: ``dq1:<24 hex id>:<16 digit due time in microseconds since the
epoch>\\n``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from queue_engine.errors import InvalidRequest

_MAGIC = b"dq1:"
_ID_HEX = 24
_DUE_DIGITS = 16
HEADER_BYTES = len(_MAGIC) + _ID_HEX + 1 + _DUE_DIGITS + 1
_ID_RE = re.compile(rf"[0-9a-f]{{{_ID_HEX}}}")


_DUE_HEX = 9  # the id's first hex digits: its due time in whole seconds (until the year 4147)


def new_job_id(due: float) -> str:
    """The due second, then 60 random bits: unique without coordination between producers.

    The due time in the id lets a revoke know, from the id alone, how long its tombstone must
    last, even when the job's record was never written (Redis down at publish).
    """
    return f"{int(due):0{_DUE_HEX}x}" + secrets.token_hex((_ID_HEX - _DUE_HEX + 1) // 2)[: _ID_HEX - _DUE_HEX]


def due_of_job_id(job_id: str) -> float:
    """The due second a job id carries (ids made before it did give a far-off time: safe for tombstones)."""
    return float(int(check_job_id(job_id)[:_DUE_HEX], 16))


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _ID_RE.fullmatch(job_id):
        raise InvalidRequest(
            f"job id {job_id!r} is not a dq job id: expected {_ID_HEX} lowercase hex digits "
            "as returned by delay() or at()"
        )
    return job_id


@dataclass(frozen=True)
class Envelope:
    job_id: str
    due_us: int  # microseconds since the epoch, UTC
    body: bytes

    @property
    def due(self) -> float:
        """Due time as epoch seconds."""
        return self.due_us / 1_000_000

    @property
    def due_at(self) -> datetime:
        return datetime.fromtimestamp(self.due_us / 1_000_000, UTC)

    def encode(self) -> bytes:
        header = b"%b%b:%0*d\n" % (_MAGIC, self.job_id.encode("ascii"), _DUE_DIGITS, self.due_us)
        return header + self.body

    @classmethod
    def decode(cls, data: bytes) -> Envelope | None:
        """The envelope in ``data``, or None when the job was not written by a dq producer."""
        if len(data) < HEADER_BYTES or not data.startswith(_MAGIC) or data[HEADER_BYTES - 1] != 0x0A:
            return None
        header = data[len(_MAGIC) : HEADER_BYTES - 1].decode("ascii", errors="replace")
        job_id, _, due = header.partition(":")
        if not _ID_RE.fullmatch(job_id) or not due.isdigit():
            return None
        return cls(job_id, int(due), data[HEADER_BYTES:])
