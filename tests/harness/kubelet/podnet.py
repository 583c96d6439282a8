"""Pod addresses on the shared loopback: the allocator and the ``podnet.c`` preload library."""

from __future__ import annotations

import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("podnet.c")


def build(directory: Path) -> Path:
    """Compile the preload library into ``directory`` (about 0.2 s)."""
    target = directory / "podnet.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(target), str(SOURCE), "-ldl"], check=True)
    return target


class Addresses:
    """127.<block>.x.y for pods; the block is chosen per run so that concurrent beds never meet."""

    def __init__(self, block: int) -> None:
        self.block = block
        self.next = 256  # 127.<block>.0.* is for the servers outside the "cluster" (API, broker)

    def allocate(self) -> str:
        self.next += 1
        if self.next % 256 in (0, 255):
            self.next += 2
        return f"127.{self.block}.{self.next // 256}.{self.next % 256}"
