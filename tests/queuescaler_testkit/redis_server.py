"""A private redis-server (Debian's binary) for the redis source's tests: loopback, password, TLS.

    server = RedisServer(port=24379, tls_port=24380).start()   # waits for PING
    server.url                # redis://127.0.0.1:24379 (the password travels apart)
    server.ca_cert            # PEM of the CA that signed the TLS listener's certificate
    server.stop()             # by its PID, never by name

    with session_server() as server: ...   # the one the session's tests share (see there)

Ports sit below the kernel's ephemeral range (32768 and up), so no outgoing connection
can hold them, and apart from hack/testenv.sh's (24090, 24443-24454, 24672-24675 and the
same plus 100). The data, the configuration, the certificates and the log live in a
directory of the cache named after the port; nothing is saved to disk (no RDB, no AOF).
Certificates are made with the `openssl` command (Debian's), into that directory.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from queuescaler_testkit.env import CACHE
from queuescaler_testkit.private_server import (
    PrivateServer,
    SessionShare,
    listening,
    started,
    stop_leftover,
)

REDIS_SERVER = "/usr/bin/redis-server"
PORT = 24379
"""The session server's plain port (the redis default 6379, moved to the project's range)."""
TLS_PORT = 24380
"""The session server's TLS listener."""
SPARE_PORT = 24381
"""A second, short-lived server for tests that stop one."""
START_TIMEOUT = 20.0
DATABASES = 32
"""Databases 1 to 19 and 24 and up are the integration tests' (each file names its own), 20
to 23 the end-to-end tests'."""


class RedisServerError(RuntimeError):
    """The server could not be started; the message carries its log's tail."""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (`name`.crt, `name`.key) in `directory`."""
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("genrsa", "-out", key.name, "2048", cwd=directory)
    subject = f"/CN=queuescaler test {name}"
    new = ["req", "-x509", "-new", "-sha256", "-days", "7", "-key", key.name, "-subj", subject]
    _openssl(*new, "-out", cert.name, cwd=directory)
    return cert, key


def make_server_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost signed by `ca`: what a client verifies."""
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("genrsa", "-out", key.name, "2048", cwd=directory)
    _openssl("req", "-new", "-key", key.name, "-subj", "/CN=localhost", "-out", csr.name,
             cwd=directory)
    signing = ["-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial"]
    sign = ["x509", "-req", "-days", "7", "-sha256", "-in", csr.name, *signing]
    _openssl(*sign, "-extfile", extensions.name, "-out", cert.name, cwd=directory)
    return cert, key


@dataclass
class RedisServer(PrivateServer):
    """One redis-server process of ours."""

    port: int = PORT
    tls_port: int | None = None
    """A TLS listener beside the plain one (clients need not present certificates)."""
    password: str = field(default_factory=lambda: "qs-" + secrets.token_urlsafe(18))
    """`requirepass`: the default user's password. Long enough to be redacted anywhere."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise RedisServerError("this server has no TLS listener")
        return f"rediss://127.0.0.1:{self.tls_port}"

    @property
    def log_path(self) -> Path:
        return self._dir / "redis.log"

    @property
    def _dir(self) -> Path:
        if self.directory is None:
            self.directory = CACHE / "redis" / str(self.port)
        return self.directory

    def _stop_leftover(self) -> None:
        """A server a killed test run left on our port: ours by its pidfile and its command."""
        # redis-server retitles itself "redis-server 127.0.0.1:<port>".
        stop_leftover(self._dir / "redis.pid", b"redis-server", f":{self.port}".encode(),
                      timeout=10.0)

    def _config(self) -> str:
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f'requirepass "{self.password}"',
            f'dir "{self._dir}"',
            f'logfile "{self.log_path}"',
            f'pidfile "{self._dir / "redis.pid"}"',
            "daemonize no",
            'save ""',
            "appendonly no",
            "protected-mode yes",
            f"databases {DATABASES}",
        ]
        if self.tls_port is not None:
            lines += [
                f"tls-port {self.tls_port}",
                f'tls-cert-file "{self._dir / "server.crt"}"',
                f'tls-key-file "{self._dir / "server.key"}"',
                f'tls-ca-cert-file "{self._dir / "ca.crt"}"',
                "tls-auth-clients no",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> RedisServer:
        """Start it and wait until it answers PING with the password; fail with its log."""
        if not Path(REDIS_SERVER).exists():
            raise RedisServerError(f"{REDIS_SERVER} is missing: run `bash hack/deps.sh apt`")
        self._dir.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        for port in (self.port, self.tls_port):
            if port is not None and listening(port):
                raise RedisServerError(f"127.0.0.1:{port} is taken by a process not ours")
        for old in self._dir.iterdir():
            if old.is_file():
                old.unlink()
        if self.tls_port is not None:
            ca = make_ca(self._dir, "ca")
            make_server_cert(self._dir, ca)
            self.ca_cert = ca[0].read_text()
            self.wrong_ca_cert = make_ca(self._dir, "wrong-ca")[0].read_text()
        config = self._dir / "redis.conf"
        config.write_text(self._config())
        config.chmod(0o600)
        self._process = subprocess.Popen(
            [REDIS_SERVER, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C of the test run is not delivered to it twice
        )
        self.pid = self._process.pid
        if not started(self._process, self.ping, START_TIMEOUT, every=0.05):
            self.stop()
            raise RedisServerError(f"redis-server did not start: {self.log_tail()}")
        return self

    def ping(self) -> bool:
        """Whether the plain port answers PING once authenticated (a raw RESP exchange)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as link:
                link.sendall(_command("AUTH", self.password) + _command("PING"))
                answer = b""
                while answer.count(b"\r\n") < 2:
                    chunk = link.recv(256)
                    if not chunk:
                        return False
                    answer += chunk
                return answer == b"+OK\r\n+PONG\r\n"
        except OSError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        return self.start()



def _command(*parts: str) -> bytes:
    """One command in RESP, the protocol's array of bulk strings."""
    encoded = [part.encode() for part in parts]
    return f"*{len(encoded)}\r\n".encode() + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in encoded
    )


_session = SessionShare(lambda: RedisServer(port=PORT, tls_port=TLS_PORT).start())


def session_server() -> contextlib.AbstractContextManager[RedisServer]:
    """The server on PORT (and TLS_PORT) that every test of a session shares: started by its
    first user, stopped by its last (see SessionShare)."""
    return _session.hold()
