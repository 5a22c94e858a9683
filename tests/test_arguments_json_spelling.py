"""A refused call's message quotes values as the client sent them, in JSON (null, true, "text", {"a": null}),
never Python's spelling (None, True, 'text'), through a real gateway to a real backend, with a real client;
each quoted value is cut on its own, so a long argument cannot hide what the schema expects."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client

from tests.support import Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "mode": {"enum": ["fast", "safe", None]},
        "flag": {"type": "boolean"},
        "tag": {"type": "string", "pattern": "^[a-z]+$"},
        "version": {"const": 2},
        "options": {"type": "object", "properties": {"depth": {"type": "integer"}}},
        "target": {"type": "string"},
        "names": {"type": "array", "items": {"type": "string"}, "maxItems": 1},
    },
}

# A backend with one tool of SCHEMA that echoes what reaches it (nothing should).
BACKEND = f"""
import json
import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

TOOL = types.Tool(name="configure", description="Configure a thing", input_schema=json.loads({json.dumps(json.dumps(SCHEMA))}))

async def list_tools(ctx, params):
    return types.ListToolsResult(tools=[TOOL])

async def call_tool(ctx, params):
    return types.CallToolResult(content=[types.TextContent(type="text", text="reached the backend")])

async def serve():
    async with stdio_server() as (read, write):
        server = Server("spelling", on_list_tools=list_tools, on_call_tool=call_tool)
        await server.run(read, write, server.create_initialization_options())

anyio.run(serve)
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("argument-spelling")
    script = directory / "spelling_server.py"
    script.write_text(BACKEND, encoding="utf-8")
    config = write_config(
        directory, {"backends": [{"name": "things", "command": sys.executable, "args": [str(script)]}]}
    )
    with running_gateway(config) as running:
        yield running


async def refusal(gateway: Gateway, arguments: dict[str, Any]) -> str:
    """The gateway's refusal of `arguments` for the backend's tool (the call must not reach the backend)."""
    async with Client(gateway.url) as client:
        (tool,) = (await client.list_tools()).tools
        result = await client.call_tool(tool.name, arguments)
    text: str = result.content[0].text  # type: ignore[union-attr]
    assert result.is_error and "reached the backend" not in text, text
    return text


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"mode": "slow"}, """field 'mode': "slow" is not one of ["fast", "safe", null]"""),
        ({"flag": None}, "field 'flag': null is not of type \"boolean\""),
        ({"target": True}, "field 'target': true is not of type \"string\""),
        (
            {"target": {"a": None, "b": [False, 1.5]}},
            """field 'target': {"a": null, "b": [false, 1.5]} is not of type""",
        ),
        ({"version": "2"}, """field 'version': 2 was expected, not "2\""""),
        ({"options": {"depth": "deep"}}, """field 'options.depth': "deep" is not of type "integer\""""),
        ({"tag": "it's"}, """field 'tag': "it's" does not match "^[a-z]+$\""""),
        ({"names": [None]}, "field 'names[0]': null is not of type \"string\""),
        ({"names": ["a", True]}, """field 'names': ["a", true] has too many items (at most 1)"""),
    ],
)
async def test_a_refusal_quotes_the_sent_values_in_json(
    gateway: Gateway, arguments: dict[str, Any], reason: str
) -> None:
    text = await refusal(gateway, arguments)
    assert text.startswith("invalid arguments for tool '") and reason in text
    for python in ("None", "True", "False", "'slow'", "'deep'", "'boolean'", "'string'"):
        assert python not in text


async def test_a_long_value_is_cut_but_the_expectation_stays_whole(gateway: Gateway) -> None:
    text = await refusal(gateway, {"mode": "x" * 100_000})
    assert len(text) < 400
    assert '"xxxxxxxxxx' in text and '… (100,000 characters) is not one of ["fast", "safe", null]' in text
