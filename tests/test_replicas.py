"""Two `vmcp serve` processes on one real Redis: what replicas behind a load balancer share.

Each replica runs its own conformance backend. Calls alternate between them, as a round-robin balancer
without affinity would send them: a caller's budget is one budget, a tool's refusal does not spend it, a
2026-07-28 round sealed by one replica is opened by the other (both hold the key), and with Redis gone
calls pass (fail open) with one log line.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.redis_server import RedisServer, running_redis
from tests.support import EXAMPLES, Gateway, running_gateway, write_config
from tests.test_redis_outage27 import eventually, redis_state
from vmcp_opt.auth.api_keys import new_key

pytestmark = [pytest.mark.slow]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
BURST = 4
KEYS = {subject: new_key() for subject in ("alice", "bob", "carol")}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[tuple[Gateway, Gateway]]:
    directory = tmp_path_factory.mktemp("replicas")
    entries = [{"sha256": digest, "subject": subject} for subject, (_, digest) in KEYS.items()]
    (directory / "keys.json").write_text(json.dumps(entries), encoding="utf-8")
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        "redis": {"url": redis.url, "timeout": 0.2},
        "rate_limits": {
            "store": "redis",
            # Refills one token in 1000 s: within a test, the burst is the budget.
            "per_caller": {"rate": 0.001, "burst": BURST},
            "per_tool": {"test_image_content": {"rate": 0.001, "burst": 1}},
            "log_interval": 600,
        },
        "request_state": {"key_env": "VMCP_TEST_STATE_KEY"},
    }
    path = write_config(directory, config)
    env = {"VMCP_TEST_STATE_KEY": secrets.token_hex(32)}
    with running_gateway(path, env=env) as first, running_gateway(path, env=env) as second:
        yield first, second


def client(gateway: Gateway, subject: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEYS[subject][0]}"}, timeout=30)
    return Client(streamable_http_client(gateway.url, http_client=http))


async def call(gateway: Gateway, subject: str, tool: str) -> str:
    """`ok`, or the refusal's `limit` and `retry_after`."""
    async with client(gateway, subject) as session:
        try:
            result = await session.call_tool(tool, {})
        except MCPError as exc:
            data = exc.error.data
            assert isinstance(data, dict), exc.error
            assert data["retry_after"] > 0
            return f"refused by {data['limit']}"
        return "error" if result.is_error else "ok"


def alternate(replicas: tuple[Gateway, Gateway], subject: str, tools: list[str]) -> list[str]:
    async def main() -> list[str]:
        return [await call(replicas[i % 2], subject, tool) for i, tool in enumerate(tools)]

    return anyio.run(main)


def test_a_callers_budget_is_shared_by_the_replicas(replicas: tuple[Gateway, Gateway]) -> None:
    outcomes = alternate(replicas, "alice", ["test_simple_text"] * (BURST + 2))
    # BURST calls pass, alternating replicas; the next is refused on either replica.
    assert outcomes == ["ok"] * BURST + ["refused by rate_limits.per_caller"] * 2


def test_a_tools_refusal_does_not_spend_the_callers_budget(replicas: tuple[Gateway, Gateway]) -> None:
    tools = ["test_image_content"] * 4 + ["test_simple_text"] * BURST
    outcomes = alternate(replicas, "bob", tools)
    assert outcomes == (
        ["ok"]
        + ["refused by rate_limits.per_tool.test_image_content"] * 3
        + ["ok"] * (BURST - 1)
        # one image call and BURST - 1 text calls spent the budget; the refusals spent nothing
        + ["refused by rate_limits.per_caller"]
    )


def test_a_round_sealed_by_one_replica_is_opened_by_the_other(replicas: tuple[Gateway, Gateway]) -> None:
    async def main() -> str:
        async with client(replicas[0], "carol") as first:
            assert first.protocol_version == "2026-07-28"
            opened = await first.session.call_tool("test_input_required", {}, allow_input_required=True)
            assert isinstance(opened, types.InputRequiredResult) and opened.request_state is not None
        async with client(replicas[1], "carol") as second:
            done = await second.session.call_tool(
                "test_input_required", {}, request_state=opened.request_state, allow_input_required=True
            )
        assert isinstance(done, types.CallToolResult)
        return "".join(c.text for c in done.content if isinstance(c, types.TextContent))

    # Replica B unsealed A's state and sent the retry to its own backend with the backend's state.
    assert anyio.run(main) == "resumed with request_state=backend-step-1"


def _unchecked_lines(gateway: Gateway) -> int:
    return gateway.output().count("rate limits not checked")


def test_with_redis_gone_calls_pass_and_each_replica_logs_it_once(
    replicas: tuple[Gateway, Gateway], redis: RedisServer
) -> None:
    redis.stop()
    try:
        # alice spent her budget above; with the limits unchecked her calls pass again.
        outcomes = alternate(replicas, "alice", ["test_simple_text"] * 6)
    finally:
        redis.start()
    assert outcomes == ["ok"] * 6
    assert [_unchecked_lines(g) for g in replicas] == [1, 1]
    # Redis is back (empty): once each replica has found it so (a probe at most once a second; until then requests
    # skip it, failing open), the limits apply again, across both replicas.
    for gateway in replicas:
        eventually(lambda g=gateway: redis_state(g) == "reachable", f"Redis reachable again on {gateway.base}")
    again = alternate(replicas, "alice", ["test_simple_text"] * (BURST + 3))
    assert again[-1] == "refused by rate_limits.per_caller"
