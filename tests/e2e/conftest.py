"""The bed shared by the ordered tests of tests/e2e (one install, one user namespace)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.e2e_bed import Bed


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    workdir = tmp_path_factory.mktemp("e2e")
    bed = Bed(workdir)
    bed.start()
    yield bed
    bed.stop()
    if os.environ.get("QUEUE_OPERATOR_TEST_SHOW_LOG"):
        sys.stderr.write(bed.kubelet_log.read_text(errors="replace")[-20000:])


@pytest.fixture(scope="module")
def records(bed: Bed) -> Path:
    """Where the app's pods record deliveries (a hostPath volume)."""
    path = bed.root / "records"
    path.mkdir()
    return path
