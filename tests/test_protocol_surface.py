"""The MCP surface beyond tools, through a real gateway: resource templates of two backends, what a
2026-07-28 listener is promised, subscriptions and completions a backend does not offer, and how many
subscriptions one client may hold. Real backends (server-everything twice, the demo server), real clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import NODE_BIN, Gateway, demo_backend, running_gateway, unavailable, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),  # 2025-11-25 methods
]

EVERYTHING = NODE_BIN / "mcp-server-everything"
DYNAMIC_TEXT = "demo://resource/dynamic/text/{resourceId}"
MOST_SUBSCRIPTIONS = 40  # limits.max_subscriptions_per_caller here


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Two copies of server-everything (same resource templates) and the demo server (2026-07-28: no
    `resources/subscribe`, no completions)."""
    if not EVERYTHING.exists():
        unavailable("server-everything is not installed (npm ci)")
    directory: Path = tmp_path_factory.mktemp("protocol")
    config = {
        "backends": [
            {"name": "everything", "command": str(EVERYTHING)},
            {"name": "ev2", "command": str(EVERYTHING)},
            demo_backend("notes"),
        ],
        "limits": {"max_subscriptions_per_caller": MOST_SUBSCRIPTIONS},
    }
    with running_gateway(write_config(directory, config)) as running:
        yield running


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_template_two_backends_serve_is_listed_once(gateway: Gateway, mode: str) -> None:
    async with Client(gateway.url, mode=mode) as client:
        templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
        assert templates.count(DYNAMIC_TEXT) == 1, templates
        assert templates.count("notes://note/{title}") == 1
        read = await client.read_resource("demo://resource/dynamic/text/3")
        assert "Resource 3" in json.dumps(read.model_dump(mode="json"))
    assert "resource template demo://resource/dynamic/text/{resourceId}: served by everything" in gateway.output()


async def test_listen_does_not_promise_resource_updates_it_cannot_deliver(gateway: Gateway) -> None:
    async with Client(gateway.url, mode="2026-07-28") as client:
        wanted = ["demo://resource/dynamic/text/1", "nowhere://x"]
        async with client.listen(tools_list_changed=True, resource_subscriptions=wanted) as listening:
            assert listening.honored.tools_list_changed is True
            # Served by a backend that takes subscriptions: promised; a URI no backend serves: not.
            assert listening.honored.resource_subscriptions == ["demo://resource/dynamic/text/1"]


async def test_subscribing_where_the_backend_offers_no_subscriptions_says_so(gateway: Gateway) -> None:
    async with Client(gateway.url, mode="legacy") as client:
        with pytest.raises(MCPError) as refused:
            await client.subscribe_resource("notes://all")
        assert refused.value.error.code == types.INVALID_PARAMS
        assert "backend 'notes' does not offer resource subscriptions" in refused.value.error.message
        await client.subscribe_resource("demo://resource/dynamic/text/1")  # everything offers them


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_completion_where_the_backend_offers_none_is_empty(gateway: Gateway, mode: str) -> None:
    async with Client(gateway.url, mode=mode) as client:
        prompt = types.PromptReference(type="ref/prompt", name="notes_summarize_notes")
        empty = await client.complete(prompt, {"name": "style", "value": "s"})
        assert empty.completion.values == []
        served = types.PromptReference(type="ref/prompt", name="everything_completable-prompt")
        offered = await client.complete(served, {"name": "department", "value": "E"})
        assert offered.completion.values == ["Engineering"]


async def test_one_client_holds_a_bounded_number_of_subscriptions(gateway: Gateway) -> None:
    async with Client(gateway.url, mode="legacy") as client:

        async def subscribe(start: int) -> None:
            for i in range(start, MOST_SUBSCRIPTIONS, 8):
                await client.subscribe_resource(f"demo://resource/dynamic/text/{i}")

        async with anyio.create_task_group() as group:
            for start in range(8):
                group.start_soon(subscribe, start)
        await client.subscribe_resource("demo://resource/dynamic/text/0")  # held already: not one more
        with pytest.raises(MCPError) as refused:
            await client.subscribe_resource(f"demo://resource/dynamic/text/{MOST_SUBSCRIPTIONS}")
        assert refused.value.error.code == types.INVALID_REQUEST
        assert f"already holds {MOST_SUBSCRIPTIONS} resource subscriptions" in refused.value.error.message
        assert "limits.max_subscriptions_per_caller" in refused.value.error.message
        await client.unsubscribe_resource("demo://resource/dynamic/text/0")
        await client.subscribe_resource(f"demo://resource/dynamic/text/{MOST_SUBSCRIPTIONS}")
