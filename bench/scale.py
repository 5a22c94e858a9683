"""Replicas behind a load balancer (issue 18): calls/s and p50/p99 through a real nginx round-robin over one,
two and three `vmcp serve` replicas sharing one Redis (`sessions.store: redis`), against one replica direct
and one memory-mode gateway direct, in one run.

One 2025-11-25 session per target (opened through that target, so through nginx its requests land on every
replica, which restore it from Redis); `--clients` concurrent workers (asyncio, one process: `hey` cannot
vary the request id, and a session's ids must be unique) send tools/call POSTs carrying the session's
headers; the driver's own CPU share is printed, so it can be seen not to be the bottleneck. Targets alternate in halves (A B C … … C B A) so the machine's drift hits each alike.
Each replica has its own stdio demo backend; the optimizer is off (this measures the request path).
On a 2-core machine replicas share the same two cores: more replicas cannot add throughput here, and the
ratio shows what the load balancer and the shared sessions cost. Also prints Redis's own round trip.

    PYTHONPATH=. .venv/bin/python bench/scale.py [--clients 16] [--seconds 20]

Needs `nginx` and `redis-server` (Debian; `scripts/setup.sh dev` installs the last two as root).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.throughput import Target, answered, legacy_call, report, rss_mb  # noqa: E402
from tests.nginx_server import running_nginx  # noqa: E402
from tests.redis_server import running_redis  # noqa: E402
from tests.support import (  # noqa: E402
    Gateway,
    demo_backend,
    raw_session,
    running_gateway,
    running_gateways,
    write_config,
)

TOOL = "web_slow_echo"


def target(label: str, url: str, pid: int) -> Target:
    body, _ = legacy_call(TOOL)
    return Target(label, url, body, raw_session(url), pid=pid)


@contextlib.contextmanager
def balanced(directory: Path, replicas: list[Gateway]) -> Iterator[str]:
    with running_nginx(directory, [gateway.port for gateway in replicas]) as nginx:
        yield nginx.url


def drive(target: Target, clients: int, seconds: float) -> None:
    """`clients` workers calling for `seconds`, each request under a new id; latencies and errors to `target`."""
    ids = itertools.count(1000)
    headers = {"Accept": "application/json, text/event-stream", **target.headers}

    async def worker(client: httpx2.AsyncClient, until: float) -> None:
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                answer = await client.post(target.url, json={**target.body, "id": next(ids)}, headers=headers)
                status = str(answer.status_code) if '"result"' in answer.text else f"{answer.status_code} no result"
            except httpx2.HTTPError as error:
                status = type(error).__name__
            if status == "200":
                target.latencies_ms.append((time.perf_counter() - started) * 1000)
            else:
                target.errors[status] = target.errors.get(status, 0) + 1

    async def run() -> None:
        limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx2.AsyncClient(timeout=60, limits=limits) as client, anyio.create_task_group() as group:
            until = time.monotonic() + seconds
            for _ in range(clients):
                group.start_soon(worker, client, until)

    me = psutil.Process()
    cpu, began = sum(me.cpu_times()[:2]), time.monotonic()
    anyio.run(run)
    wall = time.monotonic() - began
    target.seconds += wall
    target.driver_busy.append((sum(me.cpu_times()[:2]) - cpu) / wall)


def redis_round_trip_ms(url: str, count: int = 300) -> float:
    client = redis.Redis.from_url(url)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        client.ping()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="vmcp-scale-"))
    quiet = {"backends": [demo_backend("web")], "server": {"log_level": "warning"}}
    with running_redis() as server:
        shared = write_config(
            directory, {**quiet, "redis": {"url": server.url}, "sessions": {"store": "redis"}}, "redis.yaml"
        )
        memory = write_config(directory, quiet, "memory.yaml")
        with (
            running_gateway(memory, "--no-optimizer") as alone,
            running_gateways(shared, 3, "--no-optimizer") as replicas,
            balanced(directory / "n1", replicas[:1]) as one,
            balanced(directory / "n2", replicas[:2]) as two,
            balanced(directory / "n3", replicas) as three,
        ):
            first = replicas[0].proc.pid
            targets = [
                target("memory mode, direct", alone.url, alone.proc.pid),
                target("redis mode, one replica direct", replicas[0].url, first),
                target("nginx → 1 replica", one, first),
                target("nginx → 2 replicas", two, first),
                target("nginx → 3 replicas", three, first),
            ]
            for each in targets:
                answered(each)
                each.rss_mb.append(rss_mb(each.pid))
            for each in [*targets, *reversed(targets)]:
                drive(each, args.clients, args.seconds / 2)
                each.rss_mb.append(rss_mb(each.pid))
        ping = redis_round_trip_ms(server.url)
    report(targets, args.clients, driver="the driver")
    print(f"Redis PING round trip p50: {ping:.3f} ms (RSS columns: the first replica's, or the memory gateway's)")


if __name__ == "__main__":
    main()
