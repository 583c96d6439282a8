"""queuectl's output: formats, stable snake_case typed JSON, safe bodies, --version, completion."""

from __future__ import annotations

import base64
import re
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from queuectl.conftest import QUEUECTL, Setup, queuectl

BINARY = b"\x00\xffbin\x1b[31m"  # NUL, invalid UTF-8 and a terminal escape


def _keys(data: Any) -> set[str]:
    if isinstance(data, dict):
        return set(data) | {k for v in data.values() for k in _keys(v)}
    if isinstance(data, list):
        return {k for v in data for k in _keys(v)}
    return set()


def test_version_names_the_distribution_version() -> None:
    result = queuectl("--version")
    assert result.code == 0
    assert re.fullmatch(r"queuectl \d+\.\d+\.\d+\S*\n", result.out), result.out


def test_bash_completion_completes_commands_actions_and_formats() -> None:
    script = queuectl("completion", "bash")
    assert script.code == 0, script.err
    probe = """
source /dev/stdin
complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _shtab_queuectl; echo "${COMPREPLY[*]}"; }
complete_words queuectl d
complete_words queuectl dlq orders ''
complete_words queuectl buried reminders ''
complete_words queuectl stats x -o ''
"""
    done = subprocess.run(
        ["bash", "-c", probe], input=script.out, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "delay dlq",
        "get replay skip",
        "get kick delete",
        "table wide json yaml",
    ]
    zsh = queuectl("completion", "zsh")
    assert zsh.code == 0 and "#compdef queuectl" in zsh.out


def test_get_in_every_format_with_a_binary_body(setup: Setup) -> None:
    published = setup.run("delay", "reminders", "-", "--in", "10m", "-o", "json", stdin=BINARY)
    assert published.code == 0, published.err
    job_id = published.json()["id"]

    as_json = setup.run("get", "reminders", job_id, "-o", "json")
    assert as_json.code == 0, as_json.err
    job = as_json.json()
    assert (job["id"], job["state"], job["attempts"]) == (job_id, "delayed", 0)
    assert isinstance(job["attempts"], int)
    assert (job["body"], job["body_encoding"]) == (base64.b64encode(BINARY).decode(), "base64")
    due = datetime.fromisoformat(job["due_at"])
    assert timedelta(minutes=9) < due - datetime.now(UTC) <= timedelta(minutes=10)
    assert len(job["copies"]) == 3 and {c["state"] for c in job["copies"]} == {"delayed"}
    assert all(isinstance(c["job"], int) for c in job["copies"])
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", key) for key in _keys(job)), _keys(job)

    as_yaml = setup.run("get", "reminders", job_id, "-o", "yaml")
    assert as_yaml.code == 0, as_yaml.err
    assert yaml.safe_load(as_yaml.out) == job

    for fmt in ("table", "wide"):
        shown = subprocess.run(
            [QUEUECTL, "--config", str(setup.path), "get", "reminders", job_id, "-o", fmt],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout.decode("utf-8")  # strict: nothing binary reached the terminal
        assert "\x1b" not in text and "\x00" not in text
        assert re.search(r"^State:\s+delayed$", text, re.M), text
        assert f"base64:{base64.b64encode(BINARY).decode()}" in text


def test_text_bodies_are_text_unless_base64_is_asked_for(setup: Setup) -> None:
    job_id = setup.run("delay", "reminders", "héllo", "--in", "10m", "-o", "json").json()["id"]
    job = setup.run("get", "reminders", job_id, "-o", "json").json()
    assert (job["body"], job["body_encoding"]) == ("héllo", "utf-8")
    forced = setup.run("get", "reminders", job_id, "-o", "json", "--body-encoding", "base64").json()
    assert (forced["body"], forced["body_encoding"]) == (
        base64.b64encode("héllo".encode()).decode(),
        "base64",
    )


def test_stats_json_and_yaml_are_typed_and_snake_case(setup: Setup) -> None:
    assert setup.run("delay", "reminders", "x", "--in", "1m").code == 0
    dq = setup.run("stats", "reminders", "-o", "yaml")
    assert dq.code == 0, dq.err
    data = yaml.safe_load(dq.out)
    assert sum(node["delayed"] for node in data["nodes"]) == 3
    assert all(isinstance(node["ready"], int) for node in data["nodes"])
    assert setup.run("push", "orders", "x").code == 0  # creates the topic
    kq = setup.run("stats", "orders", "-o", "json")
    assert kq.code == 0, kq.err
    assert kq.json()["dead_letter_topic"] == f"{setup.topic}.dlq"
    assert kq.json()["total_lag"] == 1
    delayed = setup.run("delay", "reminders", "x", "--in", "1m", "-o", "json").json()
    assert set(delayed) == {"queue", "id", "due_at"}
