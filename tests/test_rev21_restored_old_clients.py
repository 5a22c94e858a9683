"""An older client's session restored on another replica (`sessions.store: redis`) still gets only the content
blocks its version has: two real replicas on a real Redis, the conformance backend, the client's requests by
hand. The version was once learnt only from the `initialize` answer going past, which a restore drops."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.redis_server import running_redis
from tests.support import EXAMPLES, Gateway, running_gateways, sse_messages, write_config
from tests.test_interop21_old_clients import HEADERS, initialize

CONFORMANCE_SERVER = EXAMPLES / "backends" / "conformance_server.py"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Gateway]]:
    with running_redis() as redis:
        config = {
            "backends": [{"name": "conformance", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]}],
            "aggregation": {"conflict_resolution": "priority"},
            "redis": {"url": redis.url, "timeout": 1.0},
            "sessions": {"store": "redis"},
        }
        with running_gateways(write_config(tmp_path_factory.mktemp("rev21-restored"), config), 2) as gateways:
            yield gateways


def opened_on(gateway: Gateway, version: str) -> dict[str, str]:
    answer = httpx2.post(gateway.url, json=initialize(version), headers=HEADERS, timeout=60)
    assert answer.status_code == 200, answer.text
    headers = {**HEADERS, "mcp-session-id": answer.headers["mcp-session-id"]}
    if version >= "2025-06-18":
        headers["mcp-protocol-version"] = version
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert httpx2.post(gateway.url, json=initialized, headers=headers, timeout=60).status_code == 202
    return headers


def block_types(gateway: Gateway, headers: dict[str, str], tool: str) -> list[str]:
    call = {"jsonrpc": "2.0", "id": tool, "method": "tools/call", "params": {"name": tool, "arguments": {}}}
    answer = httpx2.post(gateway.url, json=call, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    if answer.headers["content-type"].startswith("text/event-stream"):
        messages = [m for _, m in sse_messages(iter([*answer.text.splitlines(), ""])) if m is not None]
        result: dict[str, Any] = messages[-1]["result"]
    else:
        result = json.loads(answer.content)["result"]
    return [block["type"] for block in result["content"]]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2024-11-05", {"test_audio_content": ["text"], "test_resource_link": ["text"]}),
        ("2025-03-26", {"test_audio_content": ["audio"], "test_resource_link": ["text"]}),
        ("2025-11-25", {"test_audio_content": ["audio"], "test_resource_link": ["resource_link"]}),
    ],
)
def test_a_session_restored_on_another_replica_keeps_its_clients_content_blocks(
    replicas: list[Gateway], version: str, expected: dict[str, list[str]]
) -> None:
    first, second = replicas
    headers = opened_on(first, version)
    try:
        # Only the second replica serves these: it restores the session from Redis.
        assert {tool: block_types(second, headers, tool) for tool in expected} == expected
    finally:
        httpx2.delete(first.url, headers=headers, timeout=60)
