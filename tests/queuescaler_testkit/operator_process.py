"""The real operator as a process: `python -m queuescaler run` against the local cluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from queuescaler_testkit.env import REPO, TestEnv, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OperatorProcess:
    """Starts, stops and kills the operator; its JSON log goes to a file tests can scan."""

    def __init__(self, testenv: TestEnv, log_path: Path, *extra_args: str) -> None:
        self.testenv = testenv
        self.log_path = log_path
        self.extra_args = extra_args
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "queuescaler", "run", "--metrics-host", "127.0.0.1",
                "--metrics-port", str(self.port), "--log-format", "json", *self.extra_args]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.testenv.kubeconfig), "PYTHONUNBUFFERED": "1"}

    def start(self) -> OperatorProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment(),
            cwd=REPO,
        )
        log.close()
        wait_until(self._ready, timeout=60, what=f"the operator to be ready (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"the operator exited with {self.process.returncode}: "
                + self.log_path.read_text()[-3000:]
            )
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
            return bool(r.status == 200)

    def stop(self, *, kill: bool = False) -> int | None:
        """SIGTERM (or SIGKILL) and wait; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)

    def metrics(self, timeout: float = 5) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=timeout) as r:
            return str(r.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


LONG_REFRESH_SECONDS = 300
"""How often `rarely_refreshing` operators reread Secrets (as the chart does): a fixed
Secret read within a minute was read again because the old one failed."""


def rarely_refreshing(testenv: TestEnv, log_dir: Path, prefix: str) -> Iterator[OperatorProcess]:
    """A test module's own operator, rereading Secrets every LONG_REFRESH_SECONDS and
    watching the namespaces `prefix`* only (the session's operator watches t-*); stopped
    when the generator is closed (a fixture's `yield from`)."""
    process = OperatorProcess(
        testenv, log_dir / "operator.log", "--secret-refresh-seconds", str(LONG_REFRESH_SECONDS),
        "--namespace", f"{prefix}*",
    ).start()
    try:
        yield process
    finally:
        process.stop()
