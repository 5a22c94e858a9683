"""Replicas sharing sessions (`sessions.store: redis`) but started with different backends: each finds out from
the shapes the others publish in Redis, logs what differs (names only, never a secret), answers `degraded` in
`/readyz`, and a call that reaches the replica lacking a tool names the backend and says the replicas disagree;
`vmcp validate --connect` warns of it.

A real `redis-server`, real `vmcp serve` replicas with real stdio backends, the real SDK client whose requests
are sent to the replica the test names (as a round-robin balancer without affinity would move them). Every wait
polls with a deadline.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import redis
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent

from tests.redis_server import RedisServer, running_redis
from tests.support import (
    EXAMPLES,
    Gateway,
    bearer_client,
    demo_backend,
    policed_config,
    running_gateway,
    write_config,
)
from tests.test_redis_ops import eventually

pytestmark = [pytest.mark.slow]

ALARMS_SERVER = EXAMPLES / "backends" / "alarms_server.py"
PREFIX = "vmcp-drift:"
SECRET = "drift-secret-value-7f3a9c"


@dataclass
class Pair:
    redis: RedisServer
    full: Gateway  # notes and alarms
    lean: Gateway  # notes only, and notes with another environment
    lean_config: Path
    full_config: Path


def replica_of(gateway: Gateway) -> str:
    return f"{socket.gethostname()}:{gateway.proc.pid}"


def config(directory: Path, server: RedisServer, name: str, backends: list[dict[str, Any]], **extra: Any) -> Path:
    common = {"redis": {"url": server.url, "timeout": 1.0, "key_prefix": PREFIX}, "sessions": {"store": "redis"}}
    return write_config(directory, {"backends": backends, **common, **extra}, name)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    directory = tmp_path_factory.mktemp("drift")
    with running_redis() as server:
        alarms = {"name": "alarms", "command": sys.executable, "args": [str(ALARMS_SERVER)], "env": {"TOKEN": SECRET}}
        full = config(directory, server, "full.yaml", [demo_backend("notes"), alarms])
        lean = config(directory, server, "lean.yaml", [demo_backend("notes", env={"NOTES_FLAVOUR": "lean"})])
        with running_gateway(full) as first, running_gateway(lean) as second:
            yield Pair(server, first, second, lean, full)


def readyz(gateway: Gateway) -> httpx2.Response:
    return httpx2.get(f"{gateway.base}/readyz", timeout=10)


def disagreeing(gateway: Gateway, other: Gateway) -> list[str] | None:
    """`/readyz`'s differences with `other`, once it names them."""
    body = readyz(gateway).json()
    differ: dict[str, list[str]] = body.get("replicas", {}).get("differ", {})
    return differ.get(replica_of(other))


def test_replicas_with_different_backends_are_degraded_naming_what_differs(pair: Pair) -> None:
    on_full = eventually(lambda: disagreeing(pair.full, pair.lean), "the full replica seeing the lean one")
    on_lean = eventually(lambda: disagreeing(pair.lean, pair.full), "the lean replica seeing the full one")
    assert on_full == ["backend 'alarms' only on this replica", "backend 'notes' differs (env)"]
    assert on_lean == [f"backend 'alarms' only on replica {replica_of(pair.full)}", "backend 'notes' differs (env)"]
    for gateway in (pair.full, pair.lean):
        answer = readyz(gateway)
        # Degraded, still serving: taking every replica that disagrees out of the balancer would take them all.
        assert answer.status_code == 200 and answer.json()["status"] == "degraded", answer.text
        assert "serves another catalogue than replica" in gateway.output()
        assert "ERROR vmcp_opt.shared.replica_shapes" in gateway.output()
        assert SECRET not in answer.text and SECRET not in gateway.output()
    published = redis.Redis(port=pair.redis.port)
    stored = [published.get(key) or b"" for key in published.keys(PREFIX + "shape:*")]
    assert len(stored) == 2 and all(SECRET.encode() not in value for value in stored)


class Directed(httpx2.AsyncBaseTransport):
    """Sends each request to the replica `to` names (one session, moved between replicas by the test)."""

    def __init__(self, to: Gateway) -> None:
        self.to = to
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.url = request.url.copy_with(port=self.to.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_call_reaching_the_replica_lacking_the_backend_names_the_backend(pair: Pair) -> None:
    eventually(lambda: disagreeing(pair.lean, pair.full), "the lean replica seeing the full one")
    route = Directed(pair.full)

    async def main() -> tuple[set[str], set[str], str, bool]:
        http = httpx2.AsyncClient(transport=route, timeout=30)
        async with Client(streamable_http_client(pair.full.url, http_client=http), mode="legacy") as client:
            on_full = {tool.name for tool in (await client.list_tools()).tools}
            route.to = pair.lean  # the same session, now on the other replica
            on_lean = {tool.name for tool in (await client.list_tools()).tools}
            with pytest.raises(MCPError) as refused:
                await client.call_tool("alarms_get_user_token", {"username": "alice", "password": "wonderland"})
            route.to = pair.full
            served = await client.call_tool("alarms_get_user_token", {"username": "alice", "password": "wonderland"})
            return on_full, on_lean, refused.value.error.message, served.is_error

    on_full, on_lean, message, failed = anyio.run(main)
    assert "alarms_get_user_token" in on_full - on_lean  # what the client sees: a tool that comes and goes
    assert f"on replica {replica_of(pair.lean)}: its backend 'alarms' is not configured on this replica" in message
    assert f"(replica {replica_of(pair.full)} has it)" in message and "disagree" in message
    assert not failed


def test_the_optimizers_call_tool_on_the_replica_lacking_the_backend_names_the_backend(
    pair: Pair, tmp_path: Path
) -> None:
    """A third replica with the lean replica's backends and the optimizer on: the client reaches `alarms` only
    through its call_tool there, whose error result names the backend, not a bare "unknown tool"."""
    lean_backends = [demo_backend("notes", env={"NOTES_FLAVOUR": "lean"})]
    optimized = config(
        tmp_path, pair.redis, "optimized.yaml", lean_backends, optimizer={"enabled": True, "usage": False}
    )
    with running_gateway(optimized) as third:
        eventually(lambda: disagreeing(third, pair.full), "the optimized replica seeing the full one")
        route = Directed(pair.full)

        async def main() -> tuple[str, str]:
            http = httpx2.AsyncClient(transport=route, timeout=30)
            async with Client(streamable_http_client(pair.full.url, http_client=http), mode="legacy") as client:
                await client.list_tools()
                route.to = third  # the same session, now on the replica with the optimizer and without alarms
                arguments = {"username": "alice", "password": "wonderland"}
                lacking = await client.call_tool(
                    "call_tool", {"tool_name": "alarms_get_user_token", "arguments": arguments}
                )
                unknown = await client.call_tool("call_tool", {"tool_name": "weather_forecast"})
                assert lacking.is_error and unknown.is_error
                return text(lacking), text(unknown)

        lacking, unknown = anyio.run(main)
    assert lacking.startswith(
        f"field 'tool_name': Unknown tool: 'alarms_get_user_token' on replica {replica_of(third)}"
    )
    assert "its backend 'alarms' is not configured on this replica" in lacking
    assert f"(replica {replica_of(pair.full)} has it)" in lacking and "disagree" in lacking
    # A name that no backend another replica has would be named: the optimizer's own answer.
    assert unknown == "field 'tool_name': unknown tool 'weather_forecast'; use find_tool to look tools up"
    eventually(lambda: disagreeing(pair.full, third) is None, "the stopped replica's shape gone")


def test_with_a_policy_a_tool_only_another_replica_serves_is_answered_as_a_hidden_one(
    pair: Pair, tmp_path: Path
) -> None:
    """Under a policy, "replica B has it" for a tool this replica lacks would tell a probing caller which names
    are real (a hidden tool gets a bare "Unknown tool"): a third, policed replica answers all three alike."""
    hides_whoami = (
        'permit(principal, action, resource);\nforbid(principal, action, resource == Tool::"notes_whoami");\n'
    )
    common = {"redis": {"url": pair.redis.url, "timeout": 1.0, "key_prefix": PREFIX}, "sessions": {"store": "redis"}}
    backends = [demo_backend("notes", env={"NOTES_FLAVOUR": "lean"})]
    path, keys = policed_config(tmp_path, {"guest": ["guest"]}, hides_whoami, {"backends": backends, **common})
    with running_gateway(path) as policed:
        eventually(lambda: disagreeing(policed, pair.full), "the policed replica seeing the full one")

        async def main() -> dict[str, tuple[int, str, object]]:
            answers = {}
            async with bearer_client(policed.url, keys["guest"]) as client:
                for name in ("alarms_get_user_token", "notes_whoami", "weather_forecast"):
                    with pytest.raises(MCPError) as refused:
                        await client.call_tool(name, {})
                    error = refused.value.error
                    answers[name] = (error.code, error.message.replace(name, "NAME"), error.data)
            return answers

        answers = anyio.run(main)
    assert answers["alarms_get_user_token"] == answers["notes_whoami"] == answers["weather_forecast"], answers
    assert "replica" not in answers["alarms_get_user_token"][1]


def text(result: CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


def test_a_replica_agreeing_with_another_is_not_reported(pair: Pair, tmp_path: Path) -> None:
    """A third replica with the lean replica's config: it differs from the full one, never from the lean one."""
    with running_gateway(pair.lean_config) as third:
        differ = eventually(
            lambda: readyz(third).json().get("replicas", {}).get("differ"), "the new replica comparing shapes"
        )
        assert set(differ) == {replica_of(pair.full)}, differ  # the lean replica's shape was read with it
        eventually(lambda: disagreeing(pair.full, third), "the full replica seeing the new one")
    # Stopped: its shape is withdrawn, so the full replica no longer names it.
    eventually(lambda: disagreeing(pair.full, third) is None, "the stopped replica's shape gone")


def test_validate_connect_warns_of_running_replicas_that_differ(pair: Pair) -> None:
    eventually(lambda: disagreeing(pair.full, pair.lean), "both replicas' shapes published")
    vmcp = str(Path(sys.executable).parent / "vmcp")
    done = subprocess.run(
        [vmcp, "validate", "--connect", "-c", str(pair.lean_config)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "running replicas" in done.stderr and "serve another catalogue than this config" in done.stderr
    assert f"replica {replica_of(pair.full)}: backend 'alarms' only on replica {replica_of(pair.full)}" in done.stderr
    assert f"replica {replica_of(pair.lean)}:" not in done.stderr  # the same config: nothing to say
    assert SECRET not in done.stderr + done.stdout
