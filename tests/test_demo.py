"""The README's first command works: the demo runs end to end on the embedded defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_delivers_every_published_message_and_not_the_revoked_one() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "demo" / "run.py"), "--once"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "missing: none" in output
    assert "revoked job delivered: False" in output
    # The sample app logs each delivery with the headers the sidecar sent.
    assert '"X-Queue-Kind": "delay"' in output and '"X-Queue-Kind": "kafka"' in output
    assert '"X-Attempt": "2"' in output  # the fail-once job came back for a second attempt


def test_k8s_demo_shows_the_messages_arrive_through_the_injected_sidecar() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "demo" / "run.py"), "--k8s", "--once"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "['queue-sidecar', 'app']" in output  # the app's pod got its sidecar from the webhook
    for line in (
        "received delay 'remind me in 3s'",
        "received kafka 'order 42 placed'",
        "received delay 'due at",
    ):
        assert line in output
