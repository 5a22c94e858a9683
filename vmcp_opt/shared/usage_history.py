"""The optimizer's co-usage history in Redis (`optimizer.usage_store: redis`): one history for all replicas.

Two hashes under `redis.key_prefix`: `usage:tasks` (tool → tasks it was used in) and `usage:together`
(a JSON `[tool, other]` pair → tasks that used both; both directions, as the graph keeps them). A merge is
one transaction: HINCRBY of this replica's new counts, then HGETALL of both hashes, so the increments of
every replica add up and each reads a consistent whole. The optimizer's saver thread merges
every `optimizer.usage_sync_interval`, so what one replica learns reaches the others' find_tool within it.
Redis unreachable: the merge fails with a warning, the counts stay new for the next one. Built by
`shared.factories.usage_history`, which imports this module (and redis) only when the config selects it.

Every replica ranks with the whole history as of its last merge, so the history outlives a Redis that
restarts empty (no persistence) or is flushed, as long as one replica runs: a replica that read a history at
its last merge and finds `usage:tasks` gone writes back everything it ranks with, in place of its new counts,
and the others add to that. The merge watches the key (WATCH, then MULTI/EXEC, again if it changed), so only
the first replica to notice writes it back. Not undone this way: `vmcp index usage --clear` (`clear`), which
leaves a marker, `usage:cleared` (a new token per clear); a replica that finds a marker it has not seen drops
what it holds, merged or not (`UsageGraph.forget`, as with the file history), and writes nothing back. A
Redis restarted empty has no marker, which is no clear. Not covered: a replica that holds no history (just
started) and whose first counts reach the empty Redis before any other replica merged (within one
`usage_sync_interval` of the restart) makes the key exist again; the others then add to its counts, and the
older history is lost.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import Counter
from collections.abc import Mapping
from typing import Any, cast

import redis
from redis.client import Pipeline

from vmcp_opt.optimizer.usage import UsageGraph

logger = logging.getLogger(__name__)


class RedisUsageHistory:
    shared = True

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.tasks_key = prefix + "usage:tasks"
        self.together_key = prefix + "usage:together"
        self.cleared_key = prefix + "usage:cleared"
        self.where = f"Redis {self.tasks_key}, {self.together_key}"
        # Whether Redis held a history at this replica's last merge; the clear marker as it was then (None:
        # none), `_marker_read` once a merge has read it.
        self._held = False
        self._cleared: bytes | None = None
        self._marker_read = False

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
        self._drop_if_cleared(graph)
        graph.merge(lambda tasks, together: self._merge(tasks, together, graph))

    def clear(self) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.tasks_key, self.together_key)
            pipe.set(self.cleared_key, secrets.token_hex(8))
            pipe.execute()

    def _drop_if_cleared(self, graph: UsageGraph) -> None:
        """A clear since the last merge (a new marker): `graph` drops everything, learned before it or not yet
        merged, as the file history does (optimizer/usage_files.py)."""
        cleared = cast(bytes | None, self.client.get(self.cleared_key))
        if not self._marker_read or cleared is None or cleared == self._cleared:
            return  # a marker gone with the rest (Redis restarted empty) is no clear
        self._cleared, self._held = cleared, False
        dropped = graph.forget()
        logger.info(
            "optimizer: usage history in %s was cleared (vmcp index usage --clear): ranking without what was "
            "learned before it (%d tool uses not yet merged dropped)",
            self.where,
            dropped,
        )

    def _merge(
        self, tasks: Counter[str], together: dict[str, Counter[str]], graph: UsageGraph | None = None
    ) -> UsageGraph:
        """Add the new counts (or, the history lost, all of `graph`'s) and read the whole."""
        rewritten = False

        def transact(pipe: Pipeline) -> None:  # run again by `transaction` when a watched key changed meanwhile
            nonlocal rewritten
            cleared = pipe.get(self.cleared_key)
            lost = self._held and graph is not None and len(graph) > 0 and not pipe.exists(self.tasks_key)
            rewritten = lost and cleared in (None, self._cleared)  # not by a clear since `_drop_if_cleared`
            pipe.multi()
            if rewritten:
                assert graph is not None
                # Calls recorded since `merge` took the new counts are in `graph` and stay new: the next
                # merge adds them again (a few calls, once per write-back).
                self._add(pipe, *_counts(graph))
            else:
                self._add(pipe, tasks, together)
            pipe.get(self.cleared_key)
            pipe.hgetall(self.tasks_key)
            pipe.hgetall(self.together_key)

        results = cast(list[Any], self.client.transaction(transact, self.tasks_key, self.cleared_key))
        *_, cleared, kept_tasks, kept_pairs = results
        kept = _graph(kept_tasks, kept_pairs)
        self._held, self._cleared, self._marker_read = bool(kept_tasks), cleared, True
        if rewritten:
            logger.info(
                "optimizer: the usage history in %s was gone (Redis restarted empty?); wrote back the one this "
                "replica ranks with (%d tools)",
                self.where,
                len(kept),
            )
        return kept

    def _add(self, pipe: Pipeline, tasks: Mapping[str, int], together: Mapping[str, Mapping[str, int]]) -> None:
        for tool, count in tasks.items():
            pipe.hincrby(self.tasks_key, tool, count)
        for tool, counts in together.items():
            for other, count in counts.items():
                pipe.hincrby(self.together_key, json.dumps([tool, other]), count)


def _counts(graph: UsageGraph) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Everything `graph` ranks with: tasks per tool, and per tool its companions."""
    whole = graph.to_json()
    return whole["tasks"], whole["together"]


def _graph(tasks: dict[bytes, bytes], pairs: dict[bytes, bytes]) -> UsageGraph:
    together: dict[str, Counter[str]] = {}
    for field, count in pairs.items():
        pair: Any = json.loads(field)
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(name, str) for name in pair)):
            raise ValueError(f"{field!r} is not a pair of tool names")
        together.setdefault(pair[0], Counter())[pair[1]] = int(count)
    return UsageGraph.of_counts({tool.decode(): int(count) for tool, count in tasks.items()}, together)
