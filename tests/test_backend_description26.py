"""A backend's self-reported description (its `serverInfo`) is its own text: it goes into every one of its tools'
find_tool documents, so it is cut to `MAX_SERVER_DESCRIPTION` characters and made printable. Whole, a backend
with a 1 MB description and 200 tools put 200 MB into the keyword index and the saved catalogue.
A real gateway over a real stdio backend, a real client."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.support import running_gateway, write_config
from vmcp_opt.aggregation.live import MAX_SERVER_DESCRIPTION

pytestmark = pytest.mark.anyio

BACKEND = """
import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

DESCRIPTION = "Keeps the lighthouse logbook\\x1b[31m. " + "padding " * 125_000

async def list_tools(ctx, params):
    schema = {"type": "object"}
    return types.ListToolsResult(
        tools=[types.Tool(name=f"log_{i}", description=f"Logbook entry {i}", input_schema=schema) for i in range(200)]
    )

async def main():
    server = Server("keeper", description=DESCRIPTION, on_list_tools=list_tools)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())

anyio.run(main)
"""


async def test_a_backends_own_description_is_cut_before_it_reaches_every_tool_document(tmp_path: Path) -> None:
    script = tmp_path / "keeper.py"
    script.write_text(BACKEND)
    index = tmp_path / "index"
    backends = [{"name": "keeper", "command": sys.executable, "args": [str(script)]}]
    config = write_config(tmp_path, {"backends": backends, "optimizer": {"enabled": True, "index_dir": str(index)}})
    with running_gateway(config) as gateway:
        async with Client(gateway.url) as client:
            found = await client.call_tool("find_tool", {"query": "lighthouse logbook entry"})
            assert not found.is_error
            assert found.structured_content is not None and found.structured_content["tools"]
        saved = index / "catalogue.json"
        with anyio.fail_after(30):
            while not saved.exists():  # noqa: ASYNC110 - written by the gateway process
                await anyio.sleep(0.1)
        records = json.loads(saved.read_text())["tools"]
    assert len(records) == 200
    description = records[0]["backend_description"]
    assert description.startswith("Keeps the lighthouse logbook")
    assert len(description) <= MAX_SERVER_DESCRIPTION + 8 and "\x1b" not in description
