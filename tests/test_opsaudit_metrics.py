"""`/metrics` as an operator reads it: each request a client sent counted once, whatever runs inside it, and
no series a client can multiply."""

from __future__ import annotations

import re
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def samples(text: str, name: str) -> dict[str, float]:
    """`name`'s samples by their label text: {'method="tools/call",outcome="success"': 2.0}."""
    found = re.findall(rf"^{name}(?:\{{(.*)\}})? (\S+)$", text, re.M)
    return {labels: float(value) for labels, value in found}


async def test_a_call_tool_is_one_request_served_and_its_unknown_target_no_failed_request(tmp_path: Path) -> None:
    config = {
        "backends": [demo_backend("notes")],
        "optimizer": {"enabled": True},
        "telemetry": {"metrics": {"enabled": True}},
    }
    with running_gateway(write_config(tmp_path, config)) as gateway:
        async with Client(gateway.url) as client:
            proxied = await client.call_tool(
                "call_tool", {"tool_name": "notes_save_note", "arguments": {"title": "t", "text": "b"}}
            )
            unknown = [
                await client.call_tool("call_tool", {"tool_name": f"made_up_{i}", "arguments": {}}) for i in range(20)
            ]
            direct = await client.call_tool("notes_save_note", {"title": "u", "text": "c"})
            with pytest.raises(MCPError):
                await client.call_tool("made_up_directly", {})
        text = httpx2.get(f"{gateway.base}/metrics", timeout=30).text

    assert not proxied.is_error and not direct.is_error and all(u.is_error for u in unknown)
    served = samples(text, "mcp_server_operation_duration_seconds_count")
    calls = {labels: n for labels, n in served.items() if 'method="tools/call"' in labels}
    # 23 tools/call requests: two succeeded, twenty answered with isError, one refused as unknown
    assert calls == {
        'method="tools/call",outcome="success"': 2.0,
        'method="tools/call",outcome="application_error"': 20.0,
        'method="tools/call",outcome="failure"': 1.0,
    }
    # what ran inside them stays visible where it belongs: the backend calls, the meta-tool, the unknown names
    backend = samples(text, "mcp_client_operation_duration_seconds_count")
    assert backend['backend="notes",method="tools/call",outcome="success"'] == 2.0
    meta = samples(text, "vmcp_meta_tool_duration_seconds_count")
    assert meta['outcome="success",tool="call_tool"'] == 1.0
    assert meta['outcome="application_error",tool="call_tool"'] == 20.0
    assert samples(text, "vmcp_unknown_tool_total") == {"": 21.0}
    assert "made_up" not in text  # no name a client invents becomes a label
    assert "_created" not in text  # a start-time gauge beside every series would double what a scrape stores
