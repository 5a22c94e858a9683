"""The optimizer's co-usage history in Redis (`optimizer.usage_store: redis`): one history for all replicas.

Two hashes under `redis.key_prefix`: `usage:tasks` (tool → tasks it was used in) and `usage:together`
(a JSON `[tool, other]` pair → tasks that used both; both directions, as the graph keeps them). A merge is
one MULTI/EXEC transaction: HINCRBY of this replica's new counts, then HGETALL of both hashes, so the
increments of every replica add up and each reads a consistent whole. The optimizer's saver thread merges
every `optimizer.usage_sync_interval`, so what one replica learns reaches the others' find_tool within it.
Redis unreachable: the merge fails with a warning, the counts stay new for the next one. Built by
`shared.factories.usage_history`, which imports this module (and redis) only when the config selects it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import redis

from vmcp_opt.optimizer.usage import UsageGraph

logger = logging.getLogger(__name__)


class RedisUsageHistory:
    shared = True

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.tasks_key = prefix + "usage:tasks"
        self.together_key = prefix + "usage:together"
        self.where = f"Redis {self.tasks_key}, {self.together_key}"

    def read(self) -> UsageGraph:
        """The kept graph, touching nothing: RedisError, OSError or ValueError when it cannot be read."""
        return self._merge(Counter(), {})

    def load(self) -> UsageGraph:
        try:
            return self.read()
        except (redis.RedisError, OSError, ValueError) as exc:
            logger.warning("optimizer: usage history not read from Redis (%s); starting with none", exc)
            return UsageGraph()

    def save(self, graph: UsageGraph) -> None:
        graph.merge(self._merge)

    def clear(self) -> None:
        self.client.delete(self.tasks_key, self.together_key)

    def _merge(self, tasks: Counter[str], together: dict[str, Counter[str]]) -> UsageGraph:
        with self.client.pipeline(transaction=True) as pipe:
            for tool, count in tasks.items():
                pipe.hincrby(self.tasks_key, tool, count)
            for tool, counts in together.items():
                for other, count in counts.items():
                    pipe.hincrby(self.together_key, json.dumps([tool, other]), count)
            pipe.hgetall(self.tasks_key)
            pipe.hgetall(self.together_key)
            *_, kept_tasks, kept_pairs = pipe.execute()
        return _graph(kept_tasks, kept_pairs)


def _graph(tasks: dict[bytes, bytes], pairs: dict[bytes, bytes]) -> UsageGraph:
    together: dict[str, Counter[str]] = {}
    for field, count in pairs.items():
        pair: Any = json.loads(field)
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(name, str) for name in pair)):
            raise ValueError(f"{field!r} is not a pair of tool names")
        together.setdefault(pair[0], Counter())[pair[1]] = int(count)
    return UsageGraph.of_counts({tool.decode(): int(count) for tool, count in tasks.items()}, together)
