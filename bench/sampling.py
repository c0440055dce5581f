"""What one tick's sampling costs: one batched listing against one GET per queue.

    python bench/sampling.py

Brings the local RabbitMQ up if needed (`hack/testenv.sh up rabbitmq`, idempotent), makes
a vhost of its own with 1,000 empty queues, and prints Markdown tables:
1. for 10, 100 and 1,000 queues asked about: RabbitMQSource.sample() (one request, the
   columns it needs) against one GET per queue, as a per-ScaledObject poller does;
2. at 1,000 queues, the listing's variants: all fields, the columns we ask for, depths
   only (`disable_stats=true&enable_queue_totals=true`), and AMQP passive declares.
Medians of a few repetitions; loopback only. The vhost is deleted at the end.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pika

from queuescaler.core.sample import QueueRef
from queuescaler.sources.rabbitmq.listing import QUEUE_COLUMNS, name_filter_query
from queuescaler.sources.rabbitmq.secret import broker_from_secret
from queuescaler.sources.rabbitmq.source import RabbitMQSource
from queuescaler_testkit.broker import BrokerAdmin
from queuescaler_testkit.env import REPO, TestEnv, read_testenv

QUEUES = 1_000
ASKED = (10, 100, 1_000)
REPEATS = 5
PER_QUEUE_REPEATS = 3
"""One GET per queue at 1,000 queues takes about a second: fewer repetitions there."""
STATS_WAIT = 30.0


@dataclass(frozen=True)
class Cost:
    requests: int
    seconds: float
    body_bytes: int


class Counter:
    """Requests and response body bytes seen by an aiohttp session, through its trace hooks."""

    def __init__(self) -> None:
        self.requests = 0
        self.body_bytes = 0
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_end.append(self._request_end)
        self.trace.on_response_chunk_received.append(self._chunk)

    async def _request_end(self, *_: Any) -> None:
        self.requests += 1

    async def _chunk(
        self, _: Any, __: Any, params: aiohttp.TraceResponseChunkReceivedParams
    ) -> None:
        self.body_bytes += len(params.chunk)

    async def measure(self, action: Callable[[], Awaitable[object]], repeats: int) -> Cost:
        """Median wall time of `repeats` runs; requests and bytes of one run."""
        runs: list[Cost] = []
        for _ in range(repeats):
            self.requests = self.body_bytes = 0
            started = time.perf_counter()
            await action()
            runs.append(Cost(self.requests, time.perf_counter() - started, self.body_bytes))
        return Cost(
            runs[-1].requests, statistics.median(r.seconds for r in runs), runs[-1].body_bytes
        )


def _environment() -> TestEnv:
    started = subprocess.run(
        ["bash", str(REPO / "hack" / "testenv.sh"), "up", "rabbitmq"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if started.returncode != 0:
        sys.exit(
            "the local RabbitMQ did not start (hack/testenv.sh up):\n" + started.stderr[-2000:]
        )
    return read_testenv()


def _declare_queues(amqp_url: str, vhost: str, names: list[str]) -> None:
    parameters = pika.URLParameters(amqp_url)
    parameters.virtual_host = vhost
    with pika.BlockingConnection(parameters) as connection:
        channel = connection.channel()
        for name in names:
            channel.queue_declare(name, durable=False)


async def _measure_all(env: TestEnv, vhost: str, refs: list[QueueRef]) -> list[str]:
    counter = Counter()
    connection = broker_from_secret({"amqpUrl": env.amqp_url, "managementUrl": env.management_url})
    source = RabbitMQSource(connection, timeout=30.0, trace_configs=[counter.trace])
    # The per-queue GETs are what is measured: a client of their own, as a poller has.
    admin = env.admin()
    listing = admin.base + admin.queues_path(vhost)
    columns = "columns=" + ",".join(QUEUE_COLUMNS)
    headers = {"Authorization": admin.authorization}
    async with aiohttp.ClientSession(trace_configs=[counter.trace], headers=headers) as session:

        async def get(url: str) -> None:
            async with session.get(url) as response:
                await response.read()
                response.raise_for_status()

        async def wait_for_statistics() -> None:
            deadline = time.monotonic() + STATS_WAIT
            while time.monotonic() < deadline:
                result = await source.sample(refs)
                if all(not isinstance(outcome, Exception) for outcome in result.values()):
                    return
                await asyncio.sleep(0.5)
            sys.exit(f"statistics of {len(refs)} queues not emitted within {STATS_WAIT:.0f} s")

        await wait_for_statistics()
        rows = [
            "| queues asked | batched: how | requests | wall ms | bytes "
            "| one GET per queue: requests | wall ms | bytes | per-queue ÷ batched time |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for asked in ASKED:
            wanted = refs[:asked]

            async def batched_tick(w: list[QueueRef] = wanted) -> None:
                await source.sample(w)

            async def one_by_one(w: list[QueueRef] = wanted) -> None:
                for ref in w:
                    await get(f"{listing}/{urllib.parse.quote(ref.name, safe='')}?{columns}")

            how = "name filter" if name_filter_query(r.name for r in wanted) else "whole vhost"
            repeats = PER_QUEUE_REPEATS if asked >= 1_000 else REPEATS
            batched = await counter.measure(batched_tick, REPEATS)
            single = await counter.measure(one_by_one, repeats)
            rows.append(
                f"| {asked:,} | {how} | {batched.requests} | {batched.seconds * 1e3:.1f} "
                f"| {batched.body_bytes:,} | {single.requests:,} | {single.seconds * 1e3:.1f} "
                f"| {single.body_bytes:,} | {single.seconds / batched.seconds:.1f}x |"
            )

        variants = {
            "listing, every field": lambda: get(listing),
            "listing, `columns=` (what sample() sends)": lambda: get(f"{listing}?{columns}"),
            "listing, `disable_stats=true&enable_queue_totals=true` (depths only)": lambda: get(
                f"{listing}?disable_stats=true&enable_queue_totals=true"
                "&columns=name,vhost,messages_ready,messages_unacknowledged"
            ),
            "AMQP passive declare per queue (peek())": lambda: source.peek(refs),
        }
        rows += [
            "",
            f"| all {len(refs):,} queues, one vhost | requests | wall ms | bytes |",
            "|---|---:|---:|---:|",
        ]
        for name, action in variants.items():
            cost = await counter.measure(action, REPEATS)
            requests = f"{len(refs):,} declares" if name.startswith("AMQP") else cost.requests
            rows.append(f"| {name} | {requests} | {cost.seconds * 1e3:.1f} | {cost.body_bytes:,} |")
    await source.close()
    return rows


def main() -> None:
    started = time.perf_counter()
    env = _environment()
    admin = BrokerAdmin(env.management_url, timeout=60)
    vhost = f"qs-bench-{uuid.uuid4().hex[:8]}"
    admin.add_vhost(vhost)
    try:
        admin.grant(vhost, admin.user)
        names = [f"bench-{number:04d}" for number in range(QUEUES)]
        _declare_queues(env.amqp_url, vhost, names)
        refs = [QueueRef(vhost, name) for name in names]
        rows = asyncio.run(_measure_all(env, vhost, refs))
    finally:
        admin.delete_vhost(vhost)
    overview = admin.overview(["rabbitmq_version", "management_version"])
    print(f"## Sampling RabbitMQ {overview.get('rabbitmq_version', '?')}: one tick's cost\n")
    print(
        f"{QUEUES:,} queues in a vhost of their own; loopback; median of {REPEATS} runs "
        f"({PER_QUEUE_REPEATS} for 1,000 single GETs). Bytes: response bodies as received.\n"
    )
    print("\n".join(rows))
    print(f"\n(bench ran in {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
