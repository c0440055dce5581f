"""What the test kit's private servers (redis_server.py, kafka_server.py) share: a process of
ours started, waited for and stopped by its PID, a leftover of a killed run stopped by its
pidfile, and one server shared by every test of a session. Nothing here looks a process up
by name."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Generic, Protocol, TypeVar


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds for `pid` to exit; whether it has."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


def stop_leftover(pidfile: Path, *marks: bytes, timeout: float, kill: bool = False) -> None:
    """A server a killed test run left behind: ours when the PID its pidfile names runs a
    command line carrying every one of `marks`. SIGTERM, and with `kill` SIGKILL when it
    outlives `timeout`."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        if all(mark in command for mark in marks):
            os.kill(pid, signal.SIGTERM)
            if not wait_gone(pid, timeout) and kill:
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid, 10.0)


def started(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float, every: float
) -> bool:
    """Poll `ready` every `every` seconds until it holds; False once the process has exited
    or `timeout` has passed (the caller stops it and says why, with its log)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM to our process, SIGKILL if it is still there after `timeout` seconds."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@dataclass
class PrivateServer:
    """What every private server knows of its process and its certificates, and its stop.
    Not thread-safe; start and stop from one thread."""

    directory: Path | None = None
    """Where its files go; a directory of the cache named after its port by default (emptied
    at start)."""
    pid: int | None = None
    ca_cert: str = ""
    """The PEM text of the CA that signed the TLS listener's certificate ('' without one)."""
    wrong_ca_cert: str = ""
    """Another CA's PEM text, for the test that a client refuses the listener with it."""
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    stop_timeout: ClassVar[float] = 10.0
    """Seconds between SIGTERM and SIGKILL."""

    def stop(self) -> None:
        """SIGTERM to our PID, SIGKILL if it is still there after stop_timeout. Idempotent."""
        if self._process is None:
            return
        terminate(self._process, self.stop_timeout)
        self._process = None
        self.pid = None

    def __exit__(self, *_: object) -> None:
        self.stop()


class Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=Stoppable)


class SessionShare(Generic[S]):
    """One server that every test of a session shares: started by its first user, stopped by
    its last. The integration and the end-to-end tests each hold it with a session fixture of
    their own, so one run of both starts it once."""

    def __init__(self, start: Callable[[], S]) -> None:
        self._start = start
        self._shared: S | None = None
        self._users = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[S]:
        if self._shared is None:
            self._shared = self._start()
        self._users += 1
        try:
            yield self._shared
        finally:
            self._users -= 1
            if self._users == 0:
                self._shared.stop()
                self._shared = None
