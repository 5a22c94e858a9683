"""A backend's tool with a huge input schema, and one whose definition is megabytes long (real gateway process, a
raw JSON-RPC stdio backend, the SDK's client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client

from tests.support import Gateway, running_gateway, tools_backend, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# One tool, `wide`: 6,000 required string parameters, a plain schema (no pattern, no $ref) but a large one
# (~200 KB: under the size past which a tool is dropped, backends/listing.py `MAX_TOOL_CHARS`); and `huge`, whose
# description is 5 MB.
WIDE_SERVER = r"""
PROPERTIES = {f"p{i}": {"type": "string"} for i in range(6_000)}
TOOLS = [
    {"name": "wide", "inputSchema": {"type": "object", "properties": PROPERTIES, "required": list(PROPERTIES)}},
    {"name": "huge", "description": "D" * 5_000_000, "inputSchema": {"type": "object"}},
]
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    # A deadline long enough for the whole check to run: its cost is what the event loop must not pay.
    config = write_config(
        tmp_path,
        {
            "backends": [tools_backend("w", tmp_path / "wide.py", WIDE_SERVER)],
            "limits": {"argument_check_timeout": 60},
        },
    )
    with running_gateway(config) as gateway:
        yield gateway


async def test_a_call_to_a_tool_with_a_large_plain_schema_is_refused_naming_what_is_wrong(gateway: Gateway) -> None:
    """Checked off the event loop (`arguments._INLINE_SCHEMA_NODES`): its time is no longer something a test can
    tell apart from noise (~50 ms since plain schemas skip the meta-schema check), so what is asserted is the answer."""
    async with Client(gateway.url) as client:
        result = await client.call_tool("w_wide", {"p0": "x"})
        assert result.is_error
        assert "invalid arguments for tool 'w_wide'" in result.content[0].text  # type: ignore[union-attr]
    assert httpx2.get(f"{gateway.base}/healthz", timeout=30.0).status_code == 200


async def test_a_tool_whose_definition_is_megabytes_long_is_dropped_and_the_rest_served(gateway: Gateway) -> None:
    async with Client(gateway.url) as client:
        assert [tool.name for tool in (await client.list_tools()).tools] == ["w_wide"]
    assert "backend w: tool 'huge' dropped: its definition is longer than 262,144 characters" in gateway.output()
