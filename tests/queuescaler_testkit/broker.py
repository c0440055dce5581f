"""The RabbitMQ management API as the broker's administrator: the one client of the test kit.

Tests, benchmarks and the demo set the broker up with it (vhosts, users, permissions), read
what it says about queues, connections and channels, and clean up. It speaks urllib, so its
errors are urllib's: `urllib.error.HTTPError` for an answer that is not 2xx, `URLError` or
`TimeoutError` when nothing answers in time.

    admin = testenv.admin()           # or BrokerAdmin(management_url)
    admin.add_vhost("qs-it-1234"); admin.grant("qs-it-1234", admin.user)
    admin.queue(testenv.vhost, "jobs", columns=["messages_ready"])
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection, Iterable
from typing import Any

from queuescaler.sources.rabbitmq.listing import (
    CHANNEL_COLUMNS,
    CONNECTION_COLUMNS,
    parse_client_connections,
)

EVERYTHING = {"configure": ".*", "write": ".*", "read": ".*"}
"""Full permissions on a vhost."""


def quote(segment: str) -> str:
    """One path segment (a vhost, a queue, a user name), percent-encoded, "/" included."""
    return urllib.parse.quote(segment, safe="")


def _columns(columns: Iterable[str]) -> str:
    names = ",".join(columns)
    return f"?columns={names}" if names else ""


class BrokerAdmin:
    """Calls to the management API at `management_url`, authenticated as its user.

    `port` sends the calls elsewhere on the same host (a fault proxy, a counting relay) with
    the same credentials.
    """

    def __init__(
        self, management_url: str, *, port: int | None = None, timeout: float = 30.0
    ) -> None:
        parts = urllib.parse.urlsplit(management_url)
        self.base = f"{parts.scheme}://{parts.hostname}:{port or parts.port}"
        """Scheme, host and port, without credentials."""
        self.user = urllib.parse.unquote(parts.username or "")
        self.password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        self.authorization = f"Basic {token}"
        """The Authorization header's value, for clients of its own a caller measures."""
        self.timeout = timeout

    # -- raw calls ------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: object | None
    ) -> urllib.request.Request:
        return urllib.request.Request(
            self.base + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": self.authorization, "content-type": "application/json"},
        )

    def raw(
        self, method: str, path: str, body: object | None = None, *,
        timeout: float | None = None,
    ) -> bytes:
        """The answer's body as received; raises HTTPError unless the status is 2xx."""
        request = self._request(method, path, body)
        with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
            data: bytes = response.read()
            return data

    def answer(self, method: str, path: str, *, timeout: float | None = None) -> tuple[int, bytes]:
        """Status and body of whatever answered, error statuses included (no raise for them)."""
        request = self._request(method, path, None)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def call(
        self, method: str, path: str, body: object | None = None, *,
        timeout: float | None = None,
    ) -> Any:
        """The answer as JSON (None for an empty body); raises HTTPError unless it is 2xx."""
        data = self.raw(method, path, body, timeout=timeout)
        return json.loads(data) if data else None

    def get(self, path: str, *, timeout: float | None = None) -> Any:
        return self.call("GET", path, timeout=timeout)

    def delete(self, path: str, *, missing_ok: bool = False) -> None:
        """DELETE `path`; with `missing_ok`, a 404 (already gone) is not an error."""
        try:
            self.call("DELETE", path)
        except urllib.error.HTTPError as error:
            if not (missing_ok and error.code == 404):
                raise

    # -- vhosts, users, permissions -------------------------------------------------------------

    def add_vhost(self, vhost: str) -> None:
        self.call("PUT", f"/api/vhosts/{quote(vhost)}")

    def delete_vhost(self, vhost: str, *, missing_ok: bool = False) -> None:
        """The vhost and everything in it (its queues go along)."""
        self.delete(f"/api/vhosts/{quote(vhost)}", missing_ok=missing_ok)

    def add_user(self, name: str, password: str, tags: str = "monitoring") -> None:
        self.call("PUT", f"/api/users/{quote(name)}", {"password": password, "tags": tags})

    def delete_user(self, name: str, *, missing_ok: bool = False) -> None:
        self.delete(f"/api/users/{quote(name)}", missing_ok=missing_ok)

    def grant(self, vhost: str, user: str) -> None:
        """Full permissions (configure, write, read) for `user` on `vhost`."""
        self.call("PUT", f"/api/permissions/{quote(vhost)}/{quote(user)}", EVERYTHING)

    # -- what the broker says -------------------------------------------------------------------

    def overview(self, columns: Iterable[str] = ()) -> Any:
        return self.get(f"/api/overview{_columns(columns)}")

    def queues_path(self, vhost: str, queue: str | None = None) -> str:
        """/api/queues/<vhost>[/<queue>], quoted: the listing a source asks for."""
        path = f"/api/queues/{quote(vhost)}"
        return path if queue is None else f"{path}/{quote(queue)}"

    def queue(self, vhost: str, name: str, columns: Iterable[str] = ()) -> Any:
        """One queue's entry (`[]` while the broker has no statistics of it yet)."""
        return self.get(self.queues_path(vhost, name) + _columns(columns))

    def delete_queue(self, vhost: str, name: str, *, missing_ok: bool = False) -> None:
        self.delete(self.queues_path(vhost, name), missing_ok=missing_ok)

    def connections_raw(self, vhost: str | None = None, columns: Iterable[str] = ()) -> bytes:
        """The connections (of `vhost`, else all) as the broker sends them."""
        where = f"/api/vhosts/{quote(vhost)}" if vhost is not None else "/api"
        return self.raw("GET", f"{where}/connections{_columns(columns)}")

    def connections(
        self, vhost: str | None = None, columns: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(self.connections_raw(vhost, columns))
        return found

    def channels_raw(self, vhost: str | None = None, columns: Iterable[str] = ()) -> bytes:
        """The channels (of `vhost`, else all) as the broker sends them."""
        where = f"/api/vhosts/{quote(vhost)}" if vhost is not None else "/api"
        return self.raw("GET", f"{where}/channels{_columns(columns)}")

    def busy_clients(self, vhost: str, names: Collection[str]) -> set[str]:
        """Which of `names` (clients' connection names: pods) hold unacknowledged messages on
        `vhost`, as the broker's channel statistics say now, read as the operator reads them."""
        connections = self.connections_raw(vhost, CONNECTION_COLUMNS)
        channels = self.channels_raw(vhost, CHANNEL_COLUMNS)
        return {
            client.client_name
            for client in parse_client_connections(connections, channels, {vhost})
            if client.client_name is not None and client.client_name in names
            and client.unacked > 0
        }

    def close_connection(self, name: str) -> None:
        self.delete(f"/api/connections/{quote(name)}")
