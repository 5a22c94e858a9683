"""The usage history in a real Redis (`optimizer.usage_store: redis`) stays within the file store's bounds: every
replica reads the whole of it at each sync, so what Redis holds past them is dropped there, not only in memory."""

from __future__ import annotations

import json

import redis

from tests.redis_server import running_redis
from vmcp_opt.optimizer.usage import MAX_COMPANIONS
from vmcp_opt.shared.usage_history import RedisUsageHistory


def test_companions_past_the_bound_are_dropped_from_redis_and_the_most_frequent_kept() -> None:
    with running_redis() as server:
        client = redis.Redis(port=server.port)
        history = RedisUsageHistory(client, "t:")
        others = [f"tool_{n:03d}" for n in range(MAX_COMPANIONS + 44)]
        with client.pipeline(transaction=False) as pipe:
            for count, other in enumerate(others, start=1):
                pipe.hincrby(history.tasks_key, other, 1)
                pipe.hincrby(history.together_key, json.dumps(["hub", other]), count)
            pipe.hincrby(history.tasks_key, "hub", 10_000)
            pipe.execute()
        graph = history.read()
        assert len(graph) == len(others) + 1
        kept = graph.to_json()["together"]["hub"]
        assert len(kept) == MAX_COMPANIONS
        assert set(kept) == set(others[-MAX_COMPANIONS:])  # the most frequent
        assert client.hlen(history.together_key) == MAX_COMPANIONS  # and Redis holds no more than that
