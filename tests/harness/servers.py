"""Real servers as child processes that a test can stop, kill and restart.

Every server listens on a free loopback port chosen at construction and keeps it across
restarts, so clients configured once reconnect to the same address. Logs go to the server's
work directory; a server that fails to come up raises with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from harness import tools


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None, host: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class ManagedProcess:
    """A server process with start / stop (SIGTERM) / kill (SIGKILL) / restart / pause."""

    name = "server"
    host = "127.0.0.1"  # another loopback address for servers that pods must reach (harness.kubelet)

    def __init__(self, workdir: Path, port: int | None = None, *, host: str | None = None) -> None:
        self.host = host or self.host
        self.port = port or free_port()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def argv(self) -> Sequence[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def after_start(self) -> None:
        """Hook for work that needs the server up (create a bucket, ...)."""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            list(self.argv()),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            start_new_session=True,
        )
        log.close()
        try:
            wait_for_port(self.port, timeout, self.proc, self.host)
        except (RuntimeError, TimeoutError) as exc:
            self.kill()
            raise RuntimeError(
                f"{self.name} on {self.address} did not start: {exc}\n{self.log_tail()}"
            ) from exc
        self.after_start()

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _signal(self, sig: int, wait: float) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        self._wait_port_free()

    def _wait_port_free(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.1):
                    pass
            except OSError:
                return
            time.sleep(0.02)

    def stop(self) -> None:
        """Graceful stop (SIGTERM)."""
        self._signal(signal.SIGTERM, 10.0)

    def kill(self) -> None:
        """Crash (SIGKILL): no chance to flush or say goodbye."""
        self._signal(signal.SIGKILL, 5.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers, like a hung node."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)


class Beanstalkd(ManagedProcess):
    """One beanstalkd node; with ``binlog`` its jobs survive a kill and restart."""

    name = "beanstalkd"

    def __init__(
        self, workdir: Path, port: int | None = None, *, binlog: bool = True, max_job_bytes: int = 65535
    ) -> None:
        super().__init__(workdir, port)
        self.binlog = binlog
        self.max_job_bytes = max_job_bytes

    def argv(self) -> Sequence[str]:
        argv = [tools.beanstalkd(), "-l", "127.0.0.1", "-p", str(self.port), "-z", str(self.max_job_bytes)]
        if self.binlog:
            binlog_dir = self.workdir / "binlog"
            binlog_dir.mkdir(exist_ok=True)
            argv += ["-b", str(binlog_dir)]
        return argv


class RedisServer(ManagedProcess):
    name = "redis"

    def argv(self) -> Sequence[str]:
        return [
            tools.redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class MotoS3(ManagedProcess):
    """A local S3 (moto) that keeps a tansu broker's log across broker restarts."""

    name = "moto"
    bucket = "tansu"

    def argv(self) -> Sequence[str]:
        return [tools.moto_server(), "-H", "127.0.0.1", "-p", str(self.port)]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def after_start(self) -> None:
        import boto3  # noqa: PLC0415 - only tests with S3 storage pay for importing boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=self.bucket)


class Tansu(ManagedProcess):
    """The tansu Kafka-protocol broker; in memory, or on ``s3`` so that it survives restarts."""

    name = "tansu"

    def __init__(
        self, workdir: Path, port: int | None = None, *, s3: MotoS3 | None = None, host: str | None = None
    ) -> None:
        super().__init__(workdir, port, host=host)
        self.s3 = s3

    @property
    def bootstrap(self) -> str:
        return self.address

    def argv(self) -> Sequence[str]:
        url = f"tcp://{self.host}:{self.port}"
        storage = f"s3://{MotoS3.bucket}/" if self.s3 else "memory://tansu/"
        return [
            tools.tansu(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            storage,
        ]

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.s3 is not None:
            env.update(
                AWS_ACCESS_KEY_ID="test",
                AWS_SECRET_ACCESS_KEY="test",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_ENDPOINT=self.s3.endpoint,
                AWS_ALLOW_HTTP="true",
            )
        return env


class BeanstalkdCluster:
    """Several independent beanstalkd nodes, as a DelayQueue's replicas are."""

    def __init__(self, workdir: Path, size: int = 3, *, binlog: bool = True) -> None:
        self.nodes = [Beanstalkd(workdir / f"node{i}", binlog=binlog) for i in range(size)]

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.nodes]

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __iter__(self) -> Iterator[Beanstalkd]:
        return iter(self.nodes)

    def __getitem__(self, index: int) -> Beanstalkd:
        return self.nodes[index]
