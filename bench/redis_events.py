"""What a session's SSE events cost Redis (`sessions.store: redis`): write rate, keys and memory.

One real redis-server; each round, one session stores `--events` events in streams of `--per-stream`
(a session whose every request streamed: a priming event, notifications, the answer), through
`RedisEventStore`'s own writer path (`write`, pipelined). Prints the rate, the keys the session holds
afterwards and Redis's `used_memory`, round by round: with the per-session bound they stay flat.

    PYTHONPATH=. .venv/bin/python bench/redis_events.py [--events 20000] [--per-stream 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anyio
import redis.asyncio as aioredis
from mcp_types import JSONRPCNotification

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.redis_server import running_redis
from vmcp_opt.config import SessionsConfig
from vmcp_opt.shared.events import EVENTS, RedisEventStore, ReplicaPresence


async def rounds(url: str, events: int, per_stream: int, count: int) -> None:
    client = aioredis.Redis.from_url(url)
    settings = SessionsConfig()
    presence = ReplicaPresence(client, "b:", "bench")
    store = RedisEventStore(
        client,
        "b:",
        presence,
        settings.max_events_per_stream,
        ttl=600,
        queue_size=events,
        session_events=settings.max_events_per_session,
        session_bytes=settings.max_event_bytes_per_session,
    )
    note = JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"data": "x" * 200})
    print(f"{'round':>5} {'events/s':>10} {'keys of the session':>20} {'Redis used MiB':>15}")
    for number in range(count):
        token = EVENTS.set(f"session{number}")
        try:
            for i in range(events):
                await store.store_event(str(i // per_stream), note)
        finally:
            EVENTS.reset(token)
        started = time.perf_counter()
        await store.write([])  # what the writer task does: everything queued, in pipelines
        while store._queued.statistics().current_buffer_used:
            await store.write([])
        took = time.perf_counter() - started
        keys = len(await client.keys(f"b:events:session{number}:*"))
        used = (await client.info("memory"))["used_memory"] / 2**20
        print(f"{number:>5} {events / took:>10,.0f} {keys:>20,} {used:>15.1f}")
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--per-stream", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with running_redis() as server:
        anyio.run(rounds, server.url, args.events, args.per_stream, args.rounds)


if __name__ == "__main__":
    main()
