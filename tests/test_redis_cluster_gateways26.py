"""Replicas on a real Redis Cluster (`redis: {cluster: true}`): three masters on loopback, two real `vmcp serve`
processes seeded from one master's address, a real MCP client. What replicas share through Redis works there as
on a single Redis: a session opened on one replica is served by the other, a caller's rate limit is one budget,
and what find_tool learns on one replica ranks on the other. A cluster refuses a script or transaction whose keys
are in different slots (CROSSSLOT): before each part's keys shared a hash tag, none of this worked there."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import redis.cluster
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support import EXAMPLES, Gateway, free_port, running_gateway, running_gateways, write_config
from tests.test_redis_cluster26 import running_cluster
from tests.test_usage_gateway import COMPANION, call_ok, usage_config
from tests.test_usage_replicas import companion_on
from vmcp_opt.auth.api_keys import new_key

pytestmark = [pytest.mark.slow]

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"
BURST = 4
KEYS = {subject: new_key() for subject in ("alice", "bob")}


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`redis.url` of the gateways: one master of the cluster (redis-py finds the others)."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as ports:
        yield f"redis://127.0.0.1:{ports[0]}/0"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, seed: str) -> Iterator[list[Gateway]]:
    directory = tmp_path_factory.mktemp("replicas")
    entries = [{"sha256": digest, "subject": subject} for subject, (_, digest) in KEYS.items()]
    (directory / "keys.json").write_text(json.dumps(entries), encoding="utf-8")
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "aggregation": {"conflict_resolution": "priority"},
        "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
        "redis": {"url": seed, "cluster": True, "timeout": 1.0},
        "sessions": {"store": "redis"},
        "rate_limits": {
            "store": "redis",
            # Refills one token in 1000 s: within a test, the burst is the budget. A call takes both buckets,
            # so one script is given the keys of two buckets.
            "per_caller": {"rate": 0.001, "burst": BURST},
            "shared": {"rate": 0.001, "burst": 1000},
            "log_interval": 600,
        },
        "request_state": {"key_env": "VMCP_TEST_STATE_KEY"},  # one key for both, as replicas are given
    }
    path = write_config(directory, config)
    with running_gateways(path, 2, env={"VMCP_TEST_STATE_KEY": secrets.token_hex(32)}) as gateways:
        yield gateways


@dataclass
class Retarget:
    """Sends the client's requests to `port` once it is set, as a load balancer without affinity may; records
    which replica answered each request (`Vmcp-Replica`), by JSON-RPC method."""

    port: int | None = None
    answered: list[tuple[str, str]] = field(default_factory=list)
    session_id: str | None = None

    async def request(self, request: httpx2.Request) -> None:
        if self.port is not None:
            request.url = request.url.copy_with(port=self.port)

    async def response(self, response: httpx2.Response) -> None:
        request = response.request
        self.session_id = response.headers.get("mcp-session-id", self.session_id)
        if request.method == "POST" and request.content:
            body = json.loads(request.content)
            if isinstance(body, dict) and "method" in body:
                self.answered.append((body["method"], response.headers.get("vmcp-replica", "?")))


def session_client(gateway: Gateway, subject: str, retarget: Retarget) -> Client:
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {KEYS[subject][0]}"},
        timeout=60,
        event_hooks={"request": [retarget.request], "response": [retarget.response]},
    )
    return Client(streamable_http_client(gateway.url, http_client=http), mode="legacy")


def replica_of(gateway: Gateway) -> str:
    answer = httpx2.get(f"{gateway.base}/healthz", timeout=30)
    return answer.headers["vmcp-replica"]


def test_a_session_opened_on_one_replica_is_served_by_the_other(replicas: list[Gateway]) -> None:
    first, second = replicas
    retarget = Retarget()

    async def main() -> tuple[str, list[str]]:
        async with session_client(first, "alice", retarget) as client:
            await client.set_logging_level("debug")  # a change of the session's record, on the first replica
            retarget.port = second.port
            result = await client.call_tool("test_simple_text", {})
            tools = [tool.name for tool in (await client.list_tools()).tools]
        text = "".join(getattr(block, "text", "") for block in result.content)
        return text, tools

    text, tools = anyio.run(main)
    assert text and "test_simple_text" in tools
    by_method = dict(retarget.answered)
    assert by_method["initialize"] == replica_of(first)
    assert by_method["tools/call"] == by_method["tools/list"] == replica_of(second)


def test_a_session_deleted_on_one_replica_is_gone_on_the_other(replicas: list[Gateway]) -> None:
    first, second = replicas
    retarget = Retarget()

    async def main() -> None:
        async with session_client(first, "alice", retarget) as client:
            await client.list_tools()
            retarget.port = second.port  # the client's DELETE on leaving goes to the second replica

    anyio.run(main)
    assert retarget.session_id is not None
    answer = httpx2.post(
        first.url,
        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        headers={
            "Accept": "application/json, text/event-stream",
            "Authorization": f"Bearer {KEYS['alice'][0]}",
            "mcp-session-id": retarget.session_id,
            "mcp-protocol-version": "2025-11-25",
        },
        timeout=60,
    )
    assert answer.status_code == 404, answer.text


def test_a_record_the_cluster_lost_is_written_back_and_served_by_the_other(seed: str, replicas: list[Gateway]) -> None:
    """The replica holding a session writes its record again when the cluster lacks it (a node restarted empty,
    say), in a script that also reads the session's tombstone: then the other replica can serve it."""
    first, second = replicas
    retarget = Retarget()
    seeded = redis.cluster.RedisCluster.from_url(seed)

    async def main() -> str:
        async with session_client(first, "alice", retarget) as client:
            await client.list_tools()
            assert retarget.session_id is not None
            digest = hashlib.sha256(retarget.session_id.encode()).hexdigest()
            assert seeded.delete(f"vmcp:session:{{{digest}}}") == 1  # the record, lost
            await client.list_tools()  # on the replica holding it: written back
            retarget.port = second.port
            await client.list_tools()
        return dict(retarget.answered)["tools/list"]

    try:
        assert anyio.run(main) == replica_of(second)
    finally:
        seeded.close()


async def call(gateway: Gateway, subject: str) -> str:
    """`ok`, or the refusal's `limit`."""
    async with session_client(gateway, subject, Retarget()) as client:
        try:
            result = await client.call_tool("test_simple_text", {})
        except MCPError as exc:
            data = exc.error.data
            assert isinstance(data, dict), exc.error
            return f"refused by {data['limit']}"
        return "error" if result.is_error else "ok"


def test_a_callers_rate_limit_is_one_budget_across_the_replicas(replicas: list[Gateway]) -> None:
    async def main() -> list[str]:
        return [await call(replicas[i % 2], "bob") for i in range(BURST + 2)]

    # Calls pass while Redis cannot be asked (fail open): only a budget kept in the cluster refuses any.
    assert anyio.run(main) == ["ok"] * BURST + ["refused by rate_limits.per_caller"] * 2
    assert all("rate limits not checked" not in gateway.output() for gateway in replicas)


def usage_replica_config(directory: Path, seed: str, prefix: str) -> Path:
    """A replica with its own backends and index directory: nothing shared but the cluster."""
    directory.mkdir()
    config: dict[str, Any] = usage_config(directory / "index")
    config["optimizer"] |= {"usage_store": "redis", "usage_sync_interval": 0.5}
    config["redis"] = {"url": seed, "cluster": True, "key_prefix": prefix}
    return write_config(directory, config)


def test_what_one_replica_learns_ranks_on_the_other(tmp_path: Path, seed: str) -> None:
    prefix = f"usage-{secrets.token_hex(4)}:"
    configs = [usage_replica_config(tmp_path / name, seed, prefix) for name in ("a", "b")]
    with ExitStack() as stack:
        first, second = (stack.enter_context(running_gateway(config, ready_timeout=120)) for config in configs)

        async def main() -> dict[str, Any]:
            async with Client(first.url, mode="legacy") as client:  # one task, on the first replica only
                await call_ok(client, "notes_save_note", {"title": "t", "text": "x"})
                await call_ok(client, COMPANION, {"timezone": "Asia/Tokyo"})
            return await companion_on(second)

        found = anyio.run(main)
        logs = first.output() + second.output()
    assert found["used_with"] == "notes_save_note"
    assert "could not save the usage history" not in logs
    listed = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "index", "usage", "-c", str(configs[1])],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert COMPANION in listed.stdout and "notes_save_note" in listed.stdout, listed.stdout


def ready_body(gateway: Gateway) -> dict[str, Any]:
    """`/readyz` once Redis's part says reachable (its first probe may not have run yet), or as it is at 30 s."""
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, Any] = httpx2.get(f"{gateway.base}/readyz", timeout=30).json()
        if body.get("redis", {}).get("state") == "reachable" or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_the_replicas_find_the_cluster_reachable_and_warn_of_nothing(replicas: list[Gateway]) -> None:
    """`/readyz` probes the cluster with a write, through the connections that report to its state; each
    replica reads the other's catalogue shape (keys in several slots); neither warns of anything but the refusals
    the rate-limit test made."""
    for gateway in replicas:
        body = ready_body(gateway)
        assert body["status"] == "ready", body
        assert body["redis"]["state"] == "reachable" and body["redis"]["error"] is None, body
        lines = gateway.output().splitlines()
        warnings = [
            line for line in lines if (" WARNING " in line or " ERROR " in line) and "rate limited:" not in line
        ]
        assert warnings == [], warnings


def test_a_cluster_no_node_of_which_answers_is_an_unreachable_redis(tmp_path: Path) -> None:
    """Seeded from a port nobody listens on: the gateway starts and serves (rate limits fail open, changes go
    unshared), `/readyz` says Redis is unreachable, and neither it nor the log shows the password. redis-py's own
    error for a cluster it cannot reach is no RedisError: the parts catching those ended their tasks."""
    password = "cluster-password-" + secrets.token_hex(8)
    config = {
        "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
        "redis": {
            "url": f"redis://127.0.0.1:{free_port()}/0",
            "cluster": True,
            "password_env": "VMCP_TEST_REDIS_PASSWORD",
            "share_changes": True,
        },
        "aggregation": {"conflict_resolution": "priority"},
        "rate_limits": {"store": "redis", "shared": {"rate": 0.001, "burst": 1}, "log_interval": 600},
    }
    path = write_config(tmp_path, config)
    with running_gateway(path, env={"VMCP_TEST_REDIS_PASSWORD": password}) as gateway:

        async def main() -> list[str]:
            async with Client(gateway.url) as client:
                return [await call_text(client) for _ in range(3)]  # past the shared burst of 1: unchecked

        assert anyio.run(main) == ["ok"] * 3
        body = httpx2.get(f"{gateway.base}/readyz", timeout=30).json()
        assert gateway.proc.poll() is None
        output = gateway.output()
    assert body["status"] == "degraded" and body["redis"]["state"] == "unreachable", body
    assert "rate limits not checked" in output
    assert password not in output and password not in json.dumps(body)


async def call_text(client: Client) -> str:
    result = await client.call_tool("test_simple_text", {})
    return "error" if result.is_error else "ok"
