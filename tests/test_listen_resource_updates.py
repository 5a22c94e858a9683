"""`resources/updated` on 2026-07-28 `subscriptions/listen` streams, through a real gateway: the gateway follows
each URI a stream names at the backend that serves it (a 2026-07-28 backend written here with the SDK's
MCPServer: its own listen stream; server-everything: `resources/subscribe`), delivers the backend's updates to
the streams that asked for that URI alone, and lets go of the backend's subscription once no stream wants it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.subscriptions import ResourceUpdated, Subscription

from tests.support import NODE_BIN, Gateway, running_gateway, unavailable, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

EVERYTHING = NODE_BIN / "mcp-server-everything"
# 2026-07-28 without `subscriptions/listen`: it takes no resource subscriptions.
CONFORMANCE_SERVER = Path(__file__).parent.parent / "examples" / "backends" / "conformance_server.py"
EVERYTHING_DOC = "demo://resource/static/document/architecture.md"
MOST_PER_CALLER = 2  # limits.max_subscriptions_per_caller here

# A 2026-07-28 backend: `touch` publishes an update of a URI to its listen streams, `streams` says how many of
# those are open at it (the gateway's own list-change stream included).
WATCHED_BACKEND = """
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus


class CountingBus(InMemorySubscriptionBus):
    def __init__(self):
        super().__init__()
        self.open = 0

    def subscribe(self, listener):
        self.open += 1
        unsubscribe = super().subscribe(listener)
        done = []

        def once():
            if not done:
                done.append(True)
                self.open -= 1
            unsubscribe()

        return once


bus = CountingBus()
server = MCPServer("watched", subscriptions=bus)


@server.resource("notes://{name}")
def note(name: str) -> str:
    return f"note {name}"


@server.tool()
async def touch(uri: str, ctx: Context) -> str:
    await ctx.notify_resource_updated(uri)
    return f"touched {uri}"


@server.tool()
def streams() -> int:
    return bus.open


server.run()
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    if not EVERYTHING.exists():
        unavailable("server-everything is not installed (npm ci)")
    directory: Path = tmp_path_factory.mktemp("listen-updates")
    backend = directory / "watched_backend.py"
    backend.write_text(WATCHED_BACKEND, encoding="utf-8")
    config = {
        "backends": [
            {"name": "watched", "command": sys.executable, "args": [str(backend)]},
            {"name": "everything", "command": str(EVERYTHING)},
            {"name": "plain", "command": sys.executable, "args": [str(CONFORMANCE_SERVER)]},
        ],
        "limits": {"max_subscriptions_per_caller": MOST_PER_CALLER},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


async def _next(subscription: Subscription) -> ResourceUpdated:
    with anyio.fail_after(30):
        event = await anext(subscription)
    assert isinstance(event, ResourceUpdated), event
    return event


async def _open_streams(client: Client) -> int:
    result = await client.call_tool("watched_streams", {})
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return int(content.text)


async def test_a_listener_gets_the_updates_of_its_resource_and_no_one_elses(gateway: Gateway) -> None:
    async with (
        Client(gateway.url, mode="2026-07-28") as a,
        Client(gateway.url, mode="2026-07-28") as b,
        a.listen(resource_subscriptions=["notes://a"]) as listening_a,
        b.listen(resource_subscriptions=["notes://b"]) as listening_b,
    ):
        assert listening_a.honored.resource_subscriptions == ["notes://a"]
        assert listening_b.honored.resource_subscriptions == ["notes://b"]
        await a.call_tool("watched_touch", {"uri": "notes://a"})
        assert await _next(listening_a) == ResourceUpdated("notes://a")
        # The gateway published notes://a to its streams before A had it: had B's stream taken it, it
        # would come before notes://b there.
        await a.call_tool("watched_touch", {"uri": "notes://b"})
        assert await _next(listening_b) == ResourceUpdated("notes://b")


async def test_a_2025_backends_updates_reach_the_listener(gateway: Gateway) -> None:
    async with Client(gateway.url, mode="2026-07-28") as client:
        wanted = [EVERYTHING_DOC, "nowhere://x", "test://watched-resource"]
        async with client.listen(resource_subscriptions=wanted) as listening:
            # Not promised: a URI no backend serves, one whose backend takes no subscriptions.
            assert listening.honored.resource_subscriptions == [EVERYTHING_DOC]
            # server-everything sends an update of every resource its session subscribed to, once at once.
            await client.call_tool("everything_toggle-subscriber-updates", {})
            try:
                assert await _next(listening) == ResourceUpdated(EVERYTHING_DOC)
            finally:
                await client.call_tool("everything_toggle-subscriber-updates", {})


async def test_the_backend_subscription_lasts_while_some_stream_wants_it(gateway: Gateway) -> None:
    async with Client(gateway.url, mode="2026-07-28") as a, Client(gateway.url, mode="2026-07-28") as b:
        before = await _open_streams(a)
        async with b.listen(resource_subscriptions=["notes://shared"]) as listening_b:
            async with a.listen(resource_subscriptions=["notes://shared"]):
                assert await _open_streams(a) == before + 1  # one subscription at the backend for both
            await a.call_tool("watched_touch", {"uri": "notes://shared"})
            assert await _next(listening_b) == ResourceUpdated("notes://shared")
            assert await _open_streams(a) == before + 1
        # No stream wants it any more: the gateway closes its stream at the backend.
        with anyio.fail_after(30):
            while await _open_streams(a) != before:  # noqa: ASYNC110 - only the backend knows: ask it again
                await anyio.sleep(0.05)


async def test_a_stream_is_promised_at_most_the_callers_bound(gateway: Gateway) -> None:
    async with Client(gateway.url, mode="2026-07-28") as client:
        wanted = ["notes://1", "notes://2", "notes://3"]
        async with client.listen(resource_subscriptions=wanted) as listening:
            assert listening.honored.resource_subscriptions == wanted[:MOST_PER_CALLER]
