"""A 2026-07-28 backend that ends the gateway's own listen stream for resource updates while its session stays
up: the gateway opens it again (same URIs, after a short wait), so a client listening through the gateway
still gets the backend's next update, and the gateway's log tells of the drop and of the recovery once each."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.subscriptions import ResourceUpdated

from tests.support import Gateway, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

# A 2026-07-28 backend whose `drop_listens` ends (gracefully, as the SDK's `ListenHandler.close` does) every
# listen stream that follows resources, and only those: its session, and the gateway's list-change stream,
# stay up. `listens` counts the resource listen streams ever opened at it.
DROPPING_BACKEND = """
import contextvars

import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler

_for_resources = contextvars.ContextVar("for_resources", default=False)


class _Streams(set):
    def __init__(self):
        super().__init__()
        self.resource_streams = set()
        self.opened = 0

    def add(self, stream):
        super().add(stream)
        if _for_resources.get():
            self.resource_streams.add(stream)
            self.opened += 1


class DroppingListen(ListenHandler):
    def __init__(self, bus):
        super().__init__(bus)
        self._streams = _Streams()

    async def __call__(self, ctx, params):
        _for_resources.set(bool(params.notifications.resource_subscriptions))
        return await super().__call__(ctx, params)

    def drop_resource_streams(self):
        for stream in list(self._streams.resource_streams):
            stream.close()
        self._streams.resource_streams.clear()


bus = InMemorySubscriptionBus()
server = MCPServer("dropping", subscriptions=bus)
handler = DroppingListen(bus)
server._lowlevel_server.add_request_handler(
    "subscriptions/listen", types.SubscriptionsListenRequestParams, handler
)


@server.resource("notes://{name}")
def note(name: str) -> str:
    return f"note {name}"


@server.tool()
async def touch(uri: str, ctx: Context) -> str:
    await ctx.notify_resource_updated(uri)
    return f"touched {uri}"


@server.tool()
def drop_listens() -> int:
    dropped = len(handler._streams.resource_streams)
    handler.drop_resource_streams()
    return dropped


@server.tool()
def listens() -> int:
    return handler._streams.opened


server.run()
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    backend = tmp_path / "dropping_backend.py"
    backend.write_text(DROPPING_BACKEND, encoding="utf-8")
    config = {"backends": [{"name": "dropping", "command": sys.executable, "args": [str(backend)]}]}
    with running_gateway(write_config(tmp_path, config)) as running:
        yield running


async def _number(client: Client, tool: str) -> int:
    result = await client.call_tool(tool, {})
    content = result.content[0]
    assert isinstance(content, types.TextContent), content
    return int(content.text)


async def test_a_dropped_backend_listen_stream_is_reopened_and_updates_arrive(gateway: Gateway) -> None:
    async with (
        Client(gateway.url, mode="2026-07-28") as client,
        client.listen(resource_subscriptions=["notes://a"]) as listening,
    ):
        assert listening.honored.resource_subscriptions == ["notes://a"]
        assert await _number(client, "dropping_listens") == 1
        assert await _number(client, "dropping_drop_listens") == 1
        # Only the backend knows when the gateway listens again: ask it until it has (bounded).
        with anyio.fail_after(15):
            while await _number(client, "dropping_listens") < 2:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        await client.call_tool("dropping_touch", {"uri": "notes://a"})
        with anyio.fail_after(30):
            event = await anext(listening)
        assert event == ResourceUpdated("notes://a")
    log = gateway.output()
    assert log.count("listen stream for 1 resource(s) dropped") == 1, log
    assert log.count("listen stream for 1 resource(s) open again") == 1, log
