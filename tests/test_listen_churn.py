"""What one 2026-07-28 `subscriptions/listen` request can make a 2025-11-25 backend do is bounded: a request
naming more than `limits.max_resources_per_listen` resources is refused with an error naming the limit (and
the backend is asked nothing), and a stream's `resources/subscribe`s go in batches, so another stream wanting
the same backend is served between two batches instead of after the whole request.

The backend, written here with the SDK's low-level server, speaks only the 2025-11-25 handshake (one
`resources/subscribe` per URI), records the subscribes in the order they come, and holds each subscribe of a
`notes://held-…` URI until the test lets one more through: the test moves the first stream one subscribe at a
time and sees where the second stream's subscribe lands, with no timing in it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

CAP = 50  # limits.max_resources_per_listen here
HELD = [f"notes://held-{n:02d}" for n in range(40)]  # three batches of server/listen.py's SUBSCRIBE_BATCH (16)

HOLDING_BACKEND = """
import json

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.runner import serve_loop
from mcp.server.stdio import stdio_server

arrived = []  # the URIs of resources/subscribe, in the order they came
gate = {}


async def subscribe(ctx, params):
    uri = str(params.uri)
    arrived.append(uri)
    if uri.startswith("notes://held-"):
        await gate["permits"].acquire()
    return types.EmptyResult()


async def unsubscribe(ctx, params):
    return types.EmptyResult()


async def list_resources(ctx, params):
    return types.ListResourcesResult(resources=[])


async def list_templates(ctx, params):
    template = types.ResourceTemplate(uri_template="notes://{name}", name="note")
    return types.ListResourceTemplatesResult(resource_templates=[template])


async def read_resource(ctx, params):
    return types.ReadResourceResult(contents=[types.TextResourceContents(uri=params.uri, text="note")])


TOOLS = [
    types.Tool(name="arrived", description="The subscribes so far, in order.", input_schema={"type": "object"}),
    types.Tool(name="step", description="Lets one held subscribe through.", input_schema={"type": "object"}),
]


async def list_tools(ctx, params):
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx, params):
    if params.name == "step":
        gate["permits"].release()
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(arrived))])


server = Server(
    "holding",
    on_subscribe_resource=subscribe,
    on_unsubscribe_resource=unsubscribe,
    on_list_resources=list_resources,
    on_list_resource_templates=list_templates,
    on_read_resource=read_resource,
    on_list_tools=list_tools,
    on_call_tool=call_tool,
)


async def main():
    gate["permits"] = anyio.Semaphore(0)
    async with stdio_server() as (read, write):
        # Handshake era only (`Server.run` would take the 2026-07-28 one too): `server/discover` is refused,
        # so the gateway falls back to the 2025-11-25 `initialize`.
        options = server.create_initialization_options()
        await serve_loop(server, read, write, lifespan_state={}, init_options=options)


anyio.run(main)
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory: Path = tmp_path_factory.mktemp("listen-churn")
    backend = directory / "holding_backend.py"
    backend.write_text(HOLDING_BACKEND, encoding="utf-8")
    config = {
        "backends": [{"name": "holding", "command": sys.executable, "args": [str(backend)]}],
        "limits": {"max_resources_per_listen": CAP},
        "health": {"interval": 600},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


async def _arrived(client: Client, tool: str = "holding_arrived") -> list[str]:
    result = await client.call_tool(tool, {})
    content = result.content[0]
    assert isinstance(content, types.TextContent), result
    return list(json.loads(content.text))


async def _until_arrived(client: Client, more_than: int) -> list[str]:
    with anyio.fail_after(30):
        while len(seen := await _arrived(client)) <= more_than:  # noqa: ASYNC110 - only the backend knows
            await anyio.sleep(0.02)
    return seen


async def test_a_listen_naming_more_than_the_cap_is_refused_naming_it_and_asks_the_backend_nothing(
    gateway: Gateway,
) -> None:
    wanted = [f"notes://many-{n}" for n in range(CAP + 1)]
    async with Client(gateway.url, mode="2026-07-28") as client:
        with pytest.raises(MCPError) as refused:
            async with client.listen(resource_subscriptions=wanted):
                pass
        assert refused.value.error.code == types.INVALID_PARAMS
        assert "limits.max_resources_per_listen" in refused.value.error.message
        assert f"names {CAP + 1} resources; at most {CAP}" in refused.value.error.message
        assert not any(uri.startswith("notes://many-") for uri in await _arrived(client))
        # Within the cap (a URI named twice counts once), the same client's stream is served.
        async with client.listen(resource_subscriptions=[*wanted[:CAP], wanted[0]]) as listening:
            assert listening.honored.resource_subscriptions == wanted[:CAP]


async def test_a_long_listen_does_not_hold_another_stream_until_all_its_subscribes_are_done(gateway: Gateway) -> None:
    async with (
        Client(gateway.url, mode="2026-07-28") as a,
        Client(gateway.url, mode="2026-07-28") as b,
        Client(gateway.url, mode="2026-07-28") as driver,
        anyio.create_task_group() as group,
    ):
        honored: dict[str, list[str] | None] = {}
        done = anyio.Event()

        async def listen(client: Client, name: str, uris: list[str]) -> None:
            async with client.listen(resource_subscriptions=uris) as listening:
                honored[name] = listening.honored.resource_subscriptions
                await done.wait()

        before = len(await _arrived(driver))
        group.start_soon(listen, a, "a", HELD)
        seen = await _until_arrived(driver, before)  # A's first subscribe is at the backend, held there
        assert seen[before:] == [HELD[0]]
        group.start_soon(listen, b, "b", ["notes://free-b"])
        # One of A's subscribes through at a time, until B's comes.
        with anyio.fail_after(20):
            while "notes://free-b" not in seen:
                await driver.call_tool("holding_step", {})
                seen = await _until_arrived(driver, len(seen))
        ours = seen[before:]
        assert HELD[-1] not in ours, ours  # B did not wait behind the whole of A's request
        assert set(ours) - {"notes://free-b"} <= set(HELD[:32]), ours  # at most two batches of A before it
        with anyio.fail_after(30):
            while "b" not in honored:  # noqa: ASYNC110 - the acknowledgement comes on B's own stream
                await anyio.sleep(0.02)
        assert honored["b"] == ["notes://free-b"]
        assert "a" not in honored  # A is still being subscribed

        # Let A's remaining subscribes through: its stream is acknowledged with every URI it named.
        for _ in range(len(HELD)):
            await driver.call_tool("holding_step", {})
        with anyio.fail_after(30):
            while "a" not in honored:  # noqa: ASYNC110
                await anyio.sleep(0.02)
        assert honored["a"] == HELD
        done.set()
