"""The optimizer's co-usage history in Redis (`optimizer.usage_store: redis`): one history for all replicas.

Two hashes under `redis.key_prefix` (on Redis Cluster every key below is `{usage}:…`, one slot, for the merge's
transaction): `usage:tasks` (tool → tasks it was used in) and `usage:together`
(a JSON `[tool, other]` pair → tasks that used both; both directions, as the graph keeps them). A merge is
one transaction: HINCRBY of this replica's new counts, then HGETALL of both hashes, so the increments of
every replica add up and each reads a consistent whole. The optimizer's saver thread merges
every `optimizer.usage_sync_interval`, so what one replica learns reaches the others' find_tool within it.
Redis unreachable: the merge fails with a warning, the counts stay new for the next one. Built by
`shared.factories.usage_history`, which imports this module (and redis) only when the config selects it.

Every replica ranks with the whole history as of its last merge, so the history outlives a Redis that
restarts empty (no persistence) or is flushed, as long as one replica runs. Each history carries its birth,
`usage:since` (Redis's own clock, in microseconds, when its first counts were written), and each replica
remembers the birth of the history it read at its last merge. A replica that finds `usage:tasks` gone, or a
history born after the one it holds (another replica, just started and holding nothing, merged its first counts
into the emptied Redis first), writes back everything it ranks with and the older birth: the longest-lived
history wins, and the younger one's counts are kept, added to it. The merge watches the keys (WATCH, then
MULTI/EXEC, again if they changed), so only the first replica to notice writes it back; the others find the
birth they hold and add only their new counts. Not undone this way: `vmcp index usage --clear` (`clear`), which
leaves a marker, `usage:cleared` (a new token per clear); a replica that finds a marker it has not seen drops
what it holds, merged or not (`UsageGraph.forget`, as with the file history), and writes nothing back. A
Redis restarted empty has no marker, which is no clear.
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
from redis.exceptions import RedisClusterException

from vmcp_opt.optimizer.usage import UsageGraph, bounded
from vmcp_opt.shared.redis_cluster import cluster_tag, on_cluster

logger = logging.getLogger(__name__)


class RedisUsageHistory:
    shared = True

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        # `{usage}` on a cluster: the merge watches and writes these keys in one transaction, so one slot.
        root = prefix + cluster_tag(client, "usage")
        self.tasks_key = root + ":tasks"
        self.together_key = root + ":together"
        self.cleared_key = root + ":cleared"
        self.since_key = root + ":since"
        self.where = f"Redis {self.tasks_key}, {self.together_key}"
        # Whether Redis held a history at this replica's last merge, and that history's birth (None: none, or
        # one written before births were kept); the clear marker as it was then (None: none), `_marker_read`
        # once a merge has read it.
        self._held = False
        self._since: int | None = None
        self._cleared: bytes | None = None
        self._marker_read = False

    def read(self) -> UsageGraph:
        """The kept graph, touching nothing: RedisError, OSError or ValueError when it cannot be read."""
        return self._merge(Counter(), {})

    def load(self) -> UsageGraph:
        try:
            return self.read()
        except (redis.RedisError, RedisClusterException, OSError, ValueError) as exc:
            logger.warning("optimizer: usage history not read from Redis (%s); starting with none", exc)
            return UsageGraph()

    def save(self, graph: UsageGraph) -> None:
        self._drop_if_cleared(graph)
        graph.merge(lambda tasks, together: self._merge(tasks, together, graph))

    def clear(self) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.tasks_key, self.together_key, self.since_key)
            pipe.set(self.cleared_key, secrets.token_hex(8))
            pipe.execute()

    def _drop_if_cleared(self, graph: UsageGraph) -> None:
        """A clear since the last merge (a new marker): `graph` drops everything, learned before it or not yet
        merged, as the file history does (optimizer/usage_files.py)."""
        cleared = cast(bytes | None, self.client.get(self.cleared_key))
        if not self._marker_read or cleared is None or cleared == self._cleared:
            return  # a marker gone with the rest (Redis restarted empty) is no clear
        self._cleared, self._held, self._since = cleared, False, None
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
        """Add the new counts (or, the history lost or replaced by a younger one, all of `graph`'s) and read the
        whole."""
        rewritten = False

        def transact(pipe: Pipeline) -> None:  # run again by `transaction` when a watched key changed meanwhile
            nonlocal rewritten
            cleared = pipe.get(self.cleared_key)
            since = _stamp(pipe.get(self.since_key))
            lost = self._held and graph is not None and len(graph) > 0 and self._lost(pipe, since)
            rewritten = lost and cleared in (None, self._cleared)  # not by a clear since `_drop_if_cleared`
            born = self._birth(pipe, since, rewritten, bool(tasks) or bool(together))
            pipe.multi()
            if rewritten:
                assert graph is not None
                # Calls recorded since `merge` took the new counts are in `graph` and stay new: the next
                # merge adds them again (a few calls, once per write-back).
                self._add(pipe, *_counts(graph))
            else:
                self._add(pipe, tasks, together)
            if born is not None:
                pipe.set(self.since_key, born)
            pipe.get(self.cleared_key)
            pipe.get(self.since_key)
            pipe.hgetall(self.tasks_key)
            pipe.hgetall(self.together_key)

        watched = (self.tasks_key, self.cleared_key, self.since_key)
        results = cast(list[Any], self.client.transaction(transact, *watched))
        *_, cleared, since, kept_tasks, kept_pairs = results
        counts = _bounded_counts(kept_tasks, kept_pairs)
        kept = UsageGraph.of_counts(*counts)
        if len(kept_tasks) > len(counts[0]) or len(kept_pairs) > sum(len(c) for c in counts[1].values()):
            self._trim(counts, kept_tasks, kept_pairs)
        self._held, self._cleared, self._marker_read = bool(kept_tasks), cleared, True
        self._since = _stamp(since) if kept_tasks else None
        if rewritten:
            logger.info(
                "optimizer: the usage history in %s was gone (Redis restarted empty?) or born after this "
                "replica's; wrote back the one this replica ranks with (%d tools), added to what was there",
                self.where,
                len(kept),
            )
        return kept

    def _trim(self, kept: Counts, tasks: dict[bytes, bytes], pairs: dict[bytes, bytes]) -> None:
        """Drops from Redis what `bounded` left out of `kept`, as the file store does at each save: every replica
        reads the whole history at each sync, so it must not grow with every tool ever counted."""
        names, together = kept
        dropped_tasks = [(field, tasks[field]) for field in tasks if field.decode() not in names]
        dropped_pairs = [
            (field, pairs[field]) for field in pairs if _pair(field)[1] not in together.get(_pair(field)[0], {})
        ]
        delete = self.client.register_script(_DELETE_IF_UNCHANGED)
        for key, dropped in ((self.tasks_key, dropped_tasks), (self.together_key, dropped_pairs)):
            for start in range(0, len(dropped), 500):
                delete(keys=[key], args=[part for pair in dropped[start : start + 500] for part in pair])
        logger.info(
            "optimizer: the usage history in %s passed its bounds; kept %d tools (dropped %d tools, %d pairs)",
            self.where,
            len(names),
            len(dropped_tasks),
            len(dropped_pairs),
        )

    def _birth(self, pipe: Pipeline, since: int | None, rewritten: bool, adding: bool) -> int | None:
        """The birth to write, if any: a write-back keeps the birth of the history written back (the older one),
        and a history's first counts (or one kept from before births were) are born now."""
        if rewritten:
            return self._since if self._since is not None else self._now(pipe)
        return self._now(pipe) if since is None and adding else None

    def _now(self, pipe: Pipeline) -> int:
        """Redis's clock in microseconds: one clock for every replica, so births compare across machines. On a
        cluster, the clock of the node holding the history (a cluster's pipeline refuses TIME)."""
        if on_cluster(self.client):
            node = self.client.get_node_from_key(self.tasks_key)  # type: ignore[attr-defined]  # a cluster's
            seconds, micros = self.client.time(target_nodes=node)  # type: ignore[call-arg]  # a cluster's
        else:
            seconds, micros = pipe.time()
        return int(seconds) * 1_000_000 + int(micros)

    def _lost(self, pipe: Pipeline, since: int | None) -> bool:
        """Whether the history this replica held is no longer the one in Redis: gone, or replaced by one born
        after it (a replica that held nothing merged first after Redis restarted empty)."""
        if not pipe.exists(self.tasks_key):
            return True
        return self._since is not None and (since is None or since > self._since)

    def _add(self, pipe: Pipeline, tasks: Mapping[str, int], together: Mapping[str, Mapping[str, int]]) -> None:
        for tool, count in tasks.items():
            pipe.hincrby(self.tasks_key, tool, count)
        for tool, counts in together.items():
            for other, count in counts.items():
                pipe.hincrby(self.together_key, json.dumps([tool, other]), count)


def _stamp(value: Any) -> int | None:
    """A history's birth as stored; None when there is none (or it is not a number: then it is written anew)."""
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _counts(graph: UsageGraph) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Everything `graph` ranks with: tasks per tool, and per tool its companions."""
    whole = graph.to_json()
    return whole["tasks"], whole["together"]


# Deletes each field (ARGV: field, value, ...) that still holds the value read: a count another replica added
# since the read is not lost with it (it is trimmed at a later read, if it is still past the bounds).
_DELETE_IF_UNCHANGED = """
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
"""
# Tasks per tool, and per tool its companions' counts: plain dicts of str to int, which the garbage collector does
# not track (optimizer/usage.py's module note: at a million pairs, Counters were ~40,000 tracked containers).
Counts = tuple[dict[str, int], dict[str, dict[str, int]]]


def _pair(field: bytes) -> tuple[str, str]:
    pair: Any = json.loads(field)
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(name, str) for name in pair)):
        raise ValueError(f"{field!r} is not a pair of tool names")
    return pair[0], pair[1]


def _bounded_counts(tasks: dict[bytes, bytes], pairs: dict[bytes, bytes]) -> Counts:
    """What Redis holds, within the file store's bounds (`usage.bounded`: the tools in most tasks, each one's
    most frequent companions)."""
    together: dict[str, dict[str, int]] = {}
    for field, count in pairs.items():
        tool, other = _pair(field)
        together.setdefault(tool, {})[other] = int(count)
    data = bounded({"tasks": {tool.decode(): int(count) for tool, count in tasks.items()}, "together": together})
    return data["tasks"], data["together"]
