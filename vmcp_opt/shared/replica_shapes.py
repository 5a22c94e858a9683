"""Replicas that disagree on their catalogue (`sessions.store: redis`): found, logged, shown in `/readyz`, and
named in the error of a call that reaches a replica lacking the tool.

Replicas behind one load balancer share sessions, so one client's requests land on each of them in turn. A
replica started with other backends (one missing, or another server under the same name), other tool filters,
conflict resolution, workflows or optimizer setting serves another catalogue: the client sees tools appear and
vanish between calls, and a call of a tool this replica lacks fails with a bare "Unknown tool".

So each replica publishes the shape of its catalogue as its config makes it (`catalogue_shape`: a short digest
per setting that shapes it, by path, e.g. `backends.notes.command`; secrets are never part of it: values
expanded from `${VAR}`, `env` and header values and backend auth are left out) under `<key_prefix>shape:<replica>`,
expiring unless refreshed, its id in the set `<key_prefix>shapes`. Every `INTERVAL` it refreshes its own and
reads the others' (one pipeline and one MGET: nothing on a request's path). A replica whose shape differs
from a live replica's logs an error naming what differs (setting paths and backend names, never values) once
per change, answers `degraded` in `/readyz` with the differences (the status code stays the backends': taking
every disagreeing replica out of the load balancer would take them all), and `explain_unknown` (the router's
`why_unknown`, set by vmcp_opt/server/shared_sessions.py) turns a call's "Unknown tool", a direct call's or the
optimizer's call_tool's, into an error naming the backend that is missing or configured differently here. During a
rolling update that changes these settings, the old and new replicas disagree until it is done: that is
what clients see then, and it is reported as such.

Redis unreachable: nothing is compared (the last differences stay shown), one warning per minute.
`vmcp validate --connect` compares a config with the shapes the running replicas publish (`differences_from_running`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio
import redis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from vmcp_opt.config import BackendConfig, VmcpConfig
from vmcp_opt.display import shorten
from vmcp_opt.logs import ThrottledLog

logger = logging.getLogger(__name__)

# Seconds between a replica's refreshes of its shape (and reads of the others'); a shape not refreshed for three
# is gone (its replica stopped).
INTERVAL = 2.0
_ERRORS = (RedisError, OSError, TimeoutError)
_META_TOOLS = ("find_tool", "call_tool")


def catalogue_shape(config: VmcpConfig) -> dict[str, str]:
    """What shapes the catalogue this config serves, as a digest per setting path."""
    shape: dict[str, str] = {}
    for backend in config.backends:
        filters = config.aggregation.tools.get(backend.name)
        for field, value in _backend_fields(backend).items():
            shape[f"backends.{backend.name}.{field}"] = _digest(value)
        shape[f"backends.{backend.name}.tools"] = _digest(filters.model_dump(mode="json") if filters else None)
    aggregation = config.aggregation
    shape["aggregation.conflict_resolution"] = _digest(aggregation.conflict_resolution)
    shape["aggregation.prefix_format"] = _digest(aggregation.prefix_format)
    shape["aggregation.priority"] = _digest(aggregation.priority)
    shape["optimizer.enabled"] = _digest(config.optimizer.enabled)
    shape["optimizer.pinned"] = _digest(sorted(config.optimizer.pinned))
    for workflow in config.workflows:
        shape[f"workflows.{workflow.name}"] = _digest(workflow.model_dump(mode="json"))
    return shape


def _backend_fields(backend: BackendConfig) -> dict[str, Any]:
    # Values from `${VAR}` are secrets by assumption: masked before digesting, as a digest of a short secret could
    # be guessed back. Environment and header values, and auth, may be secrets and are not digested at all.
    hidden = backend.referenced_values()
    return {
        "transport": backend.transport,
        "command": _masked(backend.command, hidden),
        "args": [_masked(arg, hidden) for arg in backend.args],
        "cwd": backend.cwd,
        "url": _url(backend.url, hidden),
        "env": sorted(backend.env),
        "headers": sorted(name.lower() for name in backend.headers),
        "description": backend.description,
    }


def _masked(value: str | None, hidden: Iterable[str]) -> str | None:
    if value is None:
        return None
    for secret in sorted(hidden, key=len, reverse=True):
        if secret:
            value = value.replace(secret, "${…}")
    return value


def _url(url: str | None, hidden: Iterable[str]) -> str | None:
    """The URL without credentials or query (where tokens ride), secrets masked."""
    if url is None:
        return None
    parts = urlsplit(url)
    return _masked(f"{parts.scheme}://{parts.hostname}:{parts.port}{parts.path}", hidden)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def record_of(config: VmcpConfig, replica: str) -> dict[str, Any]:
    """What a replica publishes: its shape, and how it names tools (to tell which backend a tool name is of)."""
    aggregation = config.aggregation
    return {
        "replica": replica,
        "shape": catalogue_shape(config),
        "naming": {"conflict_resolution": aggregation.conflict_resolution, "prefix_format": aggregation.prefix_format},
    }


def differences(
    mine: Mapping[str, str], theirs: Mapping[str, str], there: str = "there", here: str = "here"
) -> list[str]:
    """What differs between two shapes, in words (`here`, `there`: where `mine` and `theirs` are): setting paths and backend and
    workflow names, never values."""
    said = []
    for name in differing_backends(mine, theirs):
        fields = [p.rsplit(".", 1)[1] for p in _paths(mine, theirs) if p.startswith(f"backends.{name}.")]
        where = _where(f"backends.{name}.transport", mine, theirs, here, there)
        said.append(f"backend '{name}' {where or 'differs (' + ', '.join(fields) + ')'}")
    for path in _paths(mine, theirs):
        if path.startswith("workflows."):
            said.append(
                f"workflow '{path[len('workflows.') :]}' {_where(path, mine, theirs, here, there) or 'differs'}"
            )
        elif not path.startswith("backends."):
            said.append(f"{path} differs")
    return said


def differing_backends(mine: Mapping[str, str], theirs: Mapping[str, str]) -> list[str]:
    """Backends missing on one side or configured differently."""
    names = [p[len("backends.") :].rsplit(".", 1)[0] for p in _paths(mine, theirs) if p.startswith("backends.")]
    return list(dict.fromkeys(names))


def _paths(mine: Mapping[str, str], theirs: Mapping[str, str]) -> list[str]:
    return [path for path in sorted(mine.keys() | theirs.keys()) if mine.get(path) != theirs.get(path)]


def _where(path: str, mine: Mapping[str, str], theirs: Mapping[str, str], here: str, there: str) -> str | None:
    if path not in theirs:
        return f"only {here}"
    if path not in mine:
        return f"only {there}"
    return None


class ReplicaShapes:
    """This replica's shape in Redis, and how it compares with the other live replicas'."""

    def __init__(self, client: Redis, prefix: str, replica: str, config: VmcpConfig) -> None:
        self.client = client
        self.prefix = prefix + "shape:"
        self.members = prefix + "shapes"
        self.replica = replica
        self.mine = record_of(config, replica)
        self._published = json.dumps(self.mine, sort_keys=True)
        self.others: dict[str, dict[str, Any]] = {}  # live replicas' records, as last read
        self.disagreeing: dict[str, list[str]] = {}  # replica -> what differs from this one
        self._log = ThrottledLog(logger, 60.0)

    async def run(self) -> None:
        """Refresh and compare every `INTERVAL` until cancelled; the shape is withdrawn on the way out."""
        try:
            while True:
                try:
                    await self.refresh()
                except _ERRORS as exc:
                    self._log.warning(
                        "shape", "replicas: catalogue shapes not compared (Redis): %s", type(exc).__name__
                    )
                await anyio.sleep(INTERVAL)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(INTERVAL), contextlib.suppress(*_ERRORS):
                await self.client.srem(self.members, self.replica)
                await self.client.delete(self.prefix + self.replica)

    async def refresh(self) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self.prefix + self.replica, self._published, px=int(INTERVAL * 3000))
            pipe.sadd(self.members, self.replica)
            pipe.smembers(self.members)
            *_, members = await pipe.execute()
        names = sorted(m.decode() for m in members if m.decode() != self.replica)
        values = await self.client.mget([self.prefix + name for name in names]) if names else []
        gone = [name for name, value in zip(names, values, strict=True) if value is None]
        if gone:
            await self.client.srem(self.members, *gone)
        self.others = {name: _loaded(value) for name, value in zip(names, values, strict=True) if value is not None}
        self._compare()

    def _compare(self) -> None:
        now = {
            name: said
            for name, record in self.others.items()
            if (
                said := differences(
                    self.mine["shape"], record.get("shape", {}), f"on replica {name}", "on this replica"
                )
            )
        }
        if now == self.disagreeing:
            return
        self.disagreeing = now
        if now:
            logger.error(
                "replicas: this replica (%s) serves another catalogue than %s; sessions move between replicas "
                "(sessions.store: redis), so clients see tools appear and vanish and calls fail on the replica "
                "lacking a tool. Give every replica the same backends, aggregation, workflows and optimizer "
                "settings (expected only during a rolling update)",
                self.replica,
                "; ".join(f"replica {name}: {', '.join(said)}" for name, said in now.items()),
            )
        else:
            logger.info("replicas: this replica's catalogue settings agree with every other replica's again")

    def readiness(self, body: dict[str, Any]) -> dict[str, Any]:
        """`/readyz`'s body, `degraded` (from ready) with the differences while replicas disagree."""
        if not self.disagreeing:
            return body
        status = "degraded" if body["status"] == "ready" else body["status"]
        reason = "replicas serve different catalogues (backends, aggregation, workflows or optimizer differ)"
        return {**body, "status": status, "replicas": {"agree": False, "reason": reason, "differ": self.disagreeing}}

    def explain_unknown(self, tool: str) -> str | None:
        """Why a tool this replica does not serve may be served by another (None: no replica disagrees on what
        could serve it): the backend missing or configured differently here, or the optimizer's setting."""
        mine: dict[str, str] = self.mine["shape"]
        for name in self.disagreeing:
            record = self.others.get(name, {})
            theirs: dict[str, str] = record.get("shape", {})
            if tool in _META_TOOLS and mine["optimizer.enabled"] != theirs.get("optimizer.enabled"):
                return self._unknown(
                    tool, f"replica {name} has the optimizer (find_tool, call_tool) on and this one off"
                )
            if f"workflows.{tool}" in theirs and f"workflows.{tool}" not in mine:
                return self._unknown(tool, f"workflow '{tool}' is configured on replica {name} only")
            backend = _backend_of(tool, record.get("naming", {}), differing_backends(mine, theirs))
            if backend is not None:
                here = f"backends.{backend}.transport" in mine
                why = "is configured differently here" if here else "is not configured on this replica"
                return self._unknown(tool, f"its backend '{backend}' {why} (replica {name} has it)")
        return None

    def _unknown(self, tool: str, why: str) -> str:
        return (
            f"Unknown tool: '{shorten(tool)}' on replica {self.replica}: {why}. The replicas behind this endpoint disagree "
            "on their backends, so this session's tools differ between calls; their operator must give every "
            "replica the same config (see /readyz)"
        )


def _loaded(value: bytes | str) -> dict[str, Any]:
    try:
        record = json.loads(value)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _backend_of(tool: str, naming: Mapping[str, Any], candidates: list[str]) -> str | None:
    """The backend among `candidates` whose tool `tool` is, by the other replica's naming: its prefix format
    (the longest match), or the one candidate when names are not prefixed."""
    if naming.get("conflict_resolution") == "prefix" and isinstance(naming.get("prefix_format"), str):
        matches = []
        for backend in candidates:
            before, _, after = naming["prefix_format"].replace("{backend}", backend).partition("{name}")
            if tool.startswith(before) and tool.endswith(after) and len(tool) > len(before) + len(after):
                matches.append((len(before) + len(after), backend))
        if matches:
            return max(matches)[1]
    return candidates[0] if len(candidates) == 1 else None


# The shapes this process watches, by Redis URL and key prefix (`/readyz` finds its replica's here).
_watching: dict[tuple[str, str], ReplicaShapes] = {}
_watching_lock = threading.Lock()


def watch_shapes(config: VmcpConfig, client: Redis, replica: str) -> ReplicaShapes:
    shapes = ReplicaShapes(client, config.redis.key_prefix, replica, config)
    with _watching_lock:
        _watching[(config.redis.url, config.redis.key_prefix)] = shapes
    return shapes


def with_shapes_state(config: VmcpConfig, body: dict[str, Any]) -> dict[str, Any]:
    """`/readyz`'s body with the replicas' disagreement, if this process publishes its shape."""
    shapes = _watching.get((config.redis.url, config.redis.key_prefix))
    return body if shapes is None else shapes.readiness(body)


def differences_from_running(config: VmcpConfig, client: redis.Redis) -> dict[str, list[str]]:
    """For `vmcp validate --connect`: what differs between `config` and each running replica's published shape."""
    mine = catalogue_shape(config)
    prefix = config.redis.key_prefix
    names = sorted(m.decode() for m in client.smembers(prefix + "shapes"))  # type: ignore[union-attr]
    values: list[bytes | None] = client.mget([prefix + "shape:" + name for name in names]) if names else []  # type: ignore[assignment]
    found = {name: _loaded(value) for name, value in zip(names, values, strict=True) if value is not None}
    return {
        name: said
        for name, record in found.items()
        if (said := differences(mine, record.get("shape", {}), f"on replica {name}", "in this config"))
    }
